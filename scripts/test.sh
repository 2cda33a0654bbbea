#!/usr/bin/env bash
# The whole test suite: formatting, lints, then every test (unit, corpus, CLI, server,
# property) and a compile-and-run of the benchmarks in test mode.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --all-targets --locked
