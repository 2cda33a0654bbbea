#!/usr/bin/env bash
# Load test of `gracegate serve`: the release binary on loopback (standalone, development
# certificates, info logs to a file as in production) and oha sending the microservices-demo
# `frontend` review (examples/review.json) over HTTP/1.1 keep-alive, the way the API server's
# webhook client talks. Prints oha's report: requests/s and the latency percentiles.
#
# Usage: scripts/loadtest.sh [REQUESTS] [CONNECTIONS] [HTTP_VERSION]
#   REQUESTS     how many reviews to send (default 200000; bounded, the run stops by itself)
#   CONNECTIONS  concurrent keep-alive connections (default 16)
#   HTTP_VERSION 1.1 (default) or 2
#
# oha comes from crates.io on first use (`cargo install`, into target/tools). Only loopback
# addresses are used.
set -euo pipefail
cd "$(dirname "$0")/.."

requests=${1:-200000}
connections=${2:-16}
http_version=${3:-1.1}
oha_version=1.16.0
port=18443
metrics_port=19090
tools=target/tools

if ! "$tools/bin/oha" --version 2>/dev/null | grep -q "$oha_version"; then
  cargo install --locked --quiet oha --version "$oha_version" --root "$tools"
fi
cargo build --release --locked --quiet

work=$(mktemp -d)
server=""
cleanup() {
  if [ -n "$server" ] && kill -0 "$server" 2>/dev/null; then
    kill -TERM "$server"
    wait "$server" || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

target/release/gracegate --log-format json serve --standalone \
  --dev-certs "$work/certs" \
  --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$metrics_port" \
  --shutdown-delay 0s 2>"$work/gracegate.log" &
server=$!

for _ in $(seq 100); do
  if grep -q '"message":"listening"' "$work/gracegate.log" 2>/dev/null; then break; fi
  sleep 0.1
done
grep -q '"message":"listening"' "$work/gracegate.log" || { cat "$work/gracegate.log"; exit 1; }

echo "gracegate $(target/release/gracegate --version | cut -d' ' -f2), $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p')"
echo "oha -n $requests -c $connections --http-version $http_version, body examples/review.json"
# -t: a request that takes longer than the API server would wait counts as an error.
timeout 600 "$tools/bin/oha" --no-tui -n "$requests" -c "$connections" \
  --http-version "$http_version" -t 5s \
  -m POST -T application/json -D examples/review.json \
  --cacert "$work/certs/ca.crt" \
  "https://localhost:$port/mutate"

echo
echo "server-side, from /metrics:"
curl -s "http://127.0.0.1:$metrics_port/metrics" | grep -E '^gracegate_admission_requests_total'
