//! `gracegate serve` over real HTTPS: a server on port 0 with fresh certificates, clients
//! that verify them over HTTP/1.1 and h2, reviews built from every pod of the corpus, bad
//! bodies, certificate rotation by symlink swap, SIGTERM and ctrl-c, metrics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::BufRead as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{Http, TestServer, client, corpus_pods, parse_metrics, review, sample};
use gracegate::certs;
use gracegate::engine::PreStopStyle;
use gracegate::manifests;
use gracegate::server::MAX_BODY_BYTES;
use gracegate::view::ClusterView;
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn post(
    client: &reqwest::Client,
    url: &str,
    body: impl Into<reqwest::Body>,
) -> (StatusCode, Vec<u8>) {
    let response = client.post(url).body(body).send().await.unwrap();
    (response.status(), response.bytes().await.unwrap().to_vec())
}

/// The review of the corpus's first pod (argo-cd's redis-ha haproxy), created in `shop`.
fn first_pod_review(uid: &str) -> Vec<u8> {
    serde_json::to_vec(&review(
        uid,
        "CREATE",
        "pods",
        "shop",
        &corpus_pods()[0].pod,
    ))
    .unwrap()
}

/// The JSON Patch of a review response, decoded from base64.
fn patch_of(response: &Value) -> Option<json_patch::Patch> {
    let text = response
        .get("patch")?
        .as_str()
        .expect("patch is base64 text");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap();
    Some(serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_corpus_pod_is_answered_over_http1_and_h2() {
    let test = TestServer::start(ClusterView::default()).await;
    // The offline engine on the same corpus: the webhook must patch each template alike.
    let offline: Vec<(String, json_patch::Patch)> = corpus_offline_patches();
    for http in [Http::One, Http::Two] {
        let client = client(&[&test.bundle.ca_pem], http);
        let mut mutated = 0;
        for (index, corpus) in corpus_pods().iter().enumerate() {
            let uid = format!("00000000-0000-4000-8000-{index:012}");
            let body = review(&uid, "CREATE", "pods", &corpus.namespace, &corpus.pod);
            let response = client
                .post(test.url("/mutate"))
                .json(&body)
                .send()
                .await
                .unwrap();
            let expected_version = match http {
                Http::One => reqwest::Version::HTTP_11,
                Http::Two => reqwest::Version::HTTP_2,
            };
            assert_eq!(response.version(), expected_version);
            assert_eq!(response.status(), StatusCode::OK, "{}", corpus.title);
            let review: Value = response.json().await.unwrap();
            assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
            assert_eq!(review["kind"], "AdmissionReview");
            let answer = &review["response"];
            assert_eq!(answer["uid"], uid.as_str(), "{}", corpus.title);
            assert_eq!(answer["allowed"], true, "{}", corpus.title);
            for warning in answer["warnings"].as_array().into_iter().flatten() {
                assert!(warning.as_str().unwrap().chars().count() <= 120);
            }
            let Some(patch) = patch_of(answer) else {
                assert!(answer.get("patchType").is_none());
                let batch = matches!(corpus.kind.as_str(), "Job" | "CronJob");
                let (_, expected) = &offline[index];
                assert!(expected.is_empty() || batch, "{}: no patch", corpus.title);
                continue;
            };
            assert_eq!(answer["patchType"], "JSONPatch");
            assert!(
                !matches!(corpus.kind.as_str(), "Job" | "CronJob"),
                "{}: batch pod patched",
                corpus.title
            );
            let mut pod = corpus.pod.clone();
            json_patch::patch(&mut pod, &patch).unwrap();
            serde_json::from_value::<k8s_openapi::api::core::v1::Pod>(pod.clone())
                .unwrap_or_else(|error| panic!("{}: not a Pod: {error}", corpus.title));
            let (title, expected) = &offline[index];
            assert_eq!(
                &patch, expected,
                "{}: differs from `gracegate mutate` of {title}",
                corpus.title
            );
            mutated += 1;
        }
        assert!(mutated >= 50, "only {mutated} pods mutated");
    }
}

/// The patch `gracegate mutate` gives each corpus template, relative to the template.
fn corpus_offline_patches() -> Vec<(String, json_patch::Patch)> {
    let mut patches = Vec::new();
    for file in common::workload_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        let outcomes =
            manifests::process(&text, &file, Vec::new(), PreStopStyle::NativeSleep).unwrap();
        for outcome in outcomes {
            let Some(workload) = outcome.workload else {
                continue;
            };
            let prefix = match workload.kind.as_str() {
                "Pod" => "",
                "CronJob" => "/spec/jobTemplate/spec/template",
                _ => "/spec/template",
            };
            let relative: Value = serde_json::to_value(&workload.patch)
                .unwrap()
                .as_array()
                .unwrap()
                .iter()
                .map(|operation| {
                    let mut operation = operation.clone();
                    let path = operation["path"]
                        .as_str()
                        .unwrap()
                        .strip_prefix(prefix)
                        .unwrap()
                        .to_owned();
                    operation["path"] = json!(path);
                    operation
                })
                .collect();
            patches.push((workload.title(), serde_json::from_value(relative).unwrap()));
        }
    }
    patches
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_but_pod_create_passes_through_unchanged() {
    let test = TestServer::start(ClusterView::default()).await;
    let client = client(&[&test.bundle.ca_pem], Http::One);
    let pod = &corpus_pods()[0].pod;
    let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {}});
    let cases = [
        ("UPDATE", "pods", pod.clone()),
        ("DELETE", "pods", pod.clone()),
        ("CONNECT", "pods", pod.clone()),
        ("CREATE", "deployments", deployment),
        (
            "CREATE",
            "configmaps",
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}),
        ),
    ];
    for (index, (operation, resource, object)) in cases.into_iter().enumerate() {
        let uid = format!("pass-through-{index}");
        let (status, body) = post(
            &client,
            &test.url("/mutate"),
            serde_json::to_vec(&review(&uid, operation, resource, "shop", &object)).unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{operation} {resource}");
        let answer: Value = serde_json::from_slice(&body).unwrap();
        let response = &answer["response"];
        assert_eq!(response["uid"], uid.as_str());
        assert_eq!(response["allowed"], true);
        assert!(
            response.get("patch").is_none(),
            "{operation} {resource} patched"
        );
        assert!(response.get("warnings").is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_get_4xx_and_the_server_keeps_serving() {
    let test = TestServer::start(ClusterView::default()).await;
    let client = client(&[&test.bundle.ca_pem], Http::One);
    let nested = format!("{}{}", "[".repeat(200_000), "]".repeat(200_000));
    let mut random = vec![0u8; 4096];
    // A fixed xorshift sequence: the same "random" bytes every run.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    for byte in &mut random {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *byte = state as u8;
    }
    let without_request = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"});
    let too_big = vec![b' '; MAX_BODY_BYTES + 1];
    let cases: Vec<(&str, Vec<u8>, StatusCode)> = vec![
        ("empty", Vec::new(), StatusCode::BAD_REQUEST),
        (
            "not JSON",
            b"apiVersion: admission.k8s.io/v1".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        ("{}", b"{}".to_vec(), StatusCode::BAD_REQUEST),
        (
            "no request",
            serde_json::to_vec(&without_request).unwrap(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "deeply nested",
            nested.into_bytes(),
            StatusCode::BAD_REQUEST,
        ),
        ("random bytes", random, StatusCode::BAD_REQUEST),
        ("over 3 MiB", too_big, StatusCode::PAYLOAD_TOO_LARGE),
    ];
    let good = first_pod_review("good");
    for (name, body, expected) in cases {
        let (status, reason) = post(&client, &test.url("/mutate"), body).await;
        assert_eq!(status, expected, "{name}");
        assert!(!reason.is_empty(), "{name}: no reason given");
        // Still serving, on the same keep-alive client.
        let (status, _) = post(&client, &test.url("/mutate"), good.clone()).await;
        assert_eq!(status, StatusCode::OK, "after {name}");
    }
    let text = reqwest::get(test.metrics_url())
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let samples = parse_metrics(&text);
    let invalid = sample(
        &samples,
        "gracegate_admission_requests_total",
        &[("operation", "unknown"), ("result", "invalid")],
    );
    assert_eq!(invalid, Some(7.0), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_scraped_and_parsed() {
    let test = TestServer::start(ClusterView::default()).await;
    let client = client(&[&test.bundle.ca_pem], Http::One);
    let pods = corpus_pods();
    let frontend = pods
        .iter()
        .find(|pod| pod.title.contains("microservices-demo") && pod.title.ends_with("/frontend"))
        .unwrap();
    for uid in ["a", "b", "c"] {
        let body =
            serde_json::to_vec(&review(uid, "CREATE", "pods", "shop", &frontend.pod)).unwrap();
        assert_eq!(
            post(&client, &test.url("/mutate"), body).await.0,
            StatusCode::OK
        );
    }
    let body = serde_json::to_vec(&review("d", "UPDATE", "pods", "shop", &frontend.pod)).unwrap();
    assert_eq!(
        post(&client, &test.url("/mutate"), body).await.0,
        StatusCode::OK
    );

    let response = reqwest::get(test.metrics_url()).await.unwrap();
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let samples = parse_metrics(&response.text().await.unwrap());
    let requests = |operation, result| {
        sample(
            &samples,
            "gracegate_admission_requests_total",
            &[("operation", operation), ("result", result)],
        )
    };
    assert_eq!(requests("CREATE", "mutated"), Some(3.0));
    assert_eq!(requests("UPDATE", "ignored"), Some(1.0));
    assert_eq!(
        sample(&samples, "gracegate_admission_duration_seconds_count", &[]),
        Some(4.0)
    );
    // The frontend has a readiness probe of its own but no startup probe and no preStop.
    assert_eq!(
        sample(
            &samples,
            "gracegate_mutations_total",
            &[("change", "startup")]
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &samples,
            "gracegate_mutations_total",
            &[("change", "prestop")]
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &samples,
            "gracegate_mutations_total",
            &[("change", "readiness")]
        ),
        None
    );
    let expiry = sample(
        &samples,
        "gracegate_certificate_expiry_timestamp_seconds",
        &[],
    )
    .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(expiry > now + 300.0 * 86_400.0, "expiry {expiry}");
}

/// Lays out a certificate pair the way the kubelet mounts a Secret: files in a timestamped
/// folder, a `..data` symlink to it, and `tls.crt` / `tls.key` symlinks through `..data`.
fn mount_secret(dir: &Path, version: &str, bundle: &certs::Bundle) {
    let folder = dir.join(format!("..{version}"));
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join(certs::CERT_FILE), &bundle.cert_pem).unwrap();
    std::fs::write(folder.join(certs::KEY_FILE), &bundle.key_pem).unwrap();
    let staged = dir.join("..data_tmp");
    std::os::unix::fs::symlink(format!("..{version}"), &staged).unwrap();
    // The atomic swap the kubelet makes.
    std::fs::rename(&staged, dir.join("..data")).unwrap();
    for file in [certs::CERT_FILE, certs::KEY_FILE] {
        let link = dir.join(file);
        if link.symlink_metadata().is_err() {
            std::os::unix::fs::symlink(format!("..data/{file}"), link).unwrap();
        }
    }
}

fn der_of(pem: &str) -> Vec<u8> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotation_by_symlink_swap_fails_no_request() {
    common::install_crypto();
    let names = ["localhost".to_owned()];
    let first = certs::generate(&names).unwrap();
    let second = certs::generate(&names).unwrap();
    let dir = tempfile::tempdir().unwrap();
    mount_secret(dir.path(), "2026_11_23_01_00_00.1", &first);
    let server = gracegate::server::Server::start(
        common::settings(
            dir.path().join(certs::CERT_FILE),
            dir.path().join(certs::KEY_FILE),
        ),
        ClusterView::default(),
    )
    .await
    .unwrap();
    let url = format!("https://localhost:{}/mutate", server.address.port());
    let body = first_pod_review("rotate");

    // A new connection and a full handshake per request (no pooling, no TLS session
    // resumption, which would skip the certificate), so every request sees the certificate
    // of the moment.
    let mut roots = rustls::RootCertStore::empty();
    for bundle in [&first, &second] {
        roots.add(der_of(&bundle.ca_pem).into()).unwrap();
    }
    let mut tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.resumption = rustls::client::Resumption::disabled();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .pool_max_idle_per_host(0)
        .tls_info(true)
        .build()
        .unwrap();
    let (first_der, second_der) = (der_of(&first.cert_pem), der_of(&second.cert_pem));
    let mut served = Vec::new();
    let mut failures = Vec::new();
    let mut rotated_at = None;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        match client.post(&url).body(body.clone()).send().await {
            Ok(response) if response.status() == StatusCode::OK => {
                let info = response
                    .extensions()
                    .get::<reqwest::tls::TlsInfo>()
                    .cloned();
                served.push(info.and_then(|info| info.peer_certificate().map(<[u8]>::to_vec)));
            }
            Ok(response) => failures.push(format!("status {}", response.status())),
            Err(error) => failures.push(format!("{error:?}")),
        }
        if served.len() == 50 && rotated_at.is_none() {
            mount_secret(dir.path(), "2026_11_23_02_00_00.2", &second);
            rotated_at = Some(served.len());
        }
        if rotated_at.is_some()
            && served.last() == Some(&Some(second_der.clone()))
            && served.len() > 100
        {
            break;
        }
    }
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert_eq!(served[0].as_deref(), Some(first_der.as_slice()));
    assert_eq!(
        served.last().unwrap().as_deref(),
        Some(second_der.as_slice()),
        "the new certificate was never served"
    );
    server.stop().await.unwrap();
}

#[test]
fn sigterm_keeps_serving_for_the_delay_then_exits_0() {
    stops_gracefully_on(nix::sys::signal::Signal::SIGTERM);
}

#[test]
fn ctrl_c_keeps_serving_for_the_delay_then_exits_0() {
    stops_gracefully_on(nix::sys::signal::Signal::SIGINT);
}

/// Starts the binary, loops requests, sends `signal`: `/readyz` turns 503, every request
/// before the delay is over succeeds, the process exits 0.
fn stops_gracefully_on(signal: nix::sys::signal::Signal) {
    common::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let delay = Duration::from_millis(1500);
    let mut child = Command::new(env!("CARGO_BIN_EXE_gracegate"))
        .args([
            "--log-format",
            "json",
            "serve",
            "--standalone",
            "--dev-certs",
            dir.path().to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--shutdown-delay",
            "1500ms",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read the log to the end (a full pipe would block the server), sending on the address.
    let stderr = child.stderr.take().unwrap();
    let (address_tx, address_rx) = std::sync::mpsc::channel();
    let log = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in std::io::BufReader::new(stderr).lines() {
            let line = line.unwrap();
            if let Ok(event) = serde_json::from_str::<Value>(&line)
                && event["message"] == "listening"
            {
                let _ = address_tx.send(event["address"].as_str().unwrap().to_owned());
            }
            lines.push(line);
        }
        lines
    });
    let address = address_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the server never listened");
    let port = address.rsplit(':').next().unwrap().to_owned();
    let ca = std::fs::read_to_string(dir.path().join(certs::CA_FILE)).unwrap();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = client(&[&ca], Http::One);
        let url = format!("https://localhost:{port}/mutate");
        let readyz = format!("https://localhost:{port}/readyz");
        let body = first_pod_review("term");
        assert_eq!(
            client.get(&readyz).send().await.unwrap().status(),
            StatusCode::OK
        );

        let stop = Arc::new(AtomicBool::new(false));
        let mut outcomes: Vec<(Duration, Result<StatusCode, String>)> = Vec::new();
        let mut signalled_at = None;
        let started = Instant::now();
        let mut saw_not_ready = false;
        while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(30) {
            let result = client.post(&url).body(body.clone()).send().await;
            let at = started.elapsed();
            let failed = result.is_err();
            outcomes.push((
                at,
                result
                    .map(|r| r.status())
                    .map_err(|error| format!("{error:?}")),
            ));
            if outcomes.len() == 20 {
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal)
                    .unwrap();
                signalled_at = Some(started.elapsed());
            }
            if signalled_at.is_some()
                && !saw_not_ready
                && let Ok(response) = client.get(&readyz).send().await
            {
                saw_not_ready = response.status() == StatusCode::SERVICE_UNAVAILABLE;
            }
            if failed {
                stop.store(true, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let signalled_at = signalled_at.unwrap();
        assert!(saw_not_ready, "/readyz never turned 503 after {signal}");
        // Until the delay is over, the listener is open: every request before then succeeds.
        let window = signalled_at + delay - Duration::from_millis(200);
        let before: Vec<_> = outcomes.iter().filter(|(at, _)| *at < window).collect();
        let served_after_signal = before.iter().filter(|(at, _)| *at > signalled_at).count();
        assert!(
            served_after_signal >= 10,
            "only {served_after_signal} requests during the delay"
        );
        for (at, outcome) in before {
            assert_eq!(
                outcome.as_ref().ok(),
                Some(&StatusCode::OK),
                "request at {at:?}: {outcome:?}"
            );
        }
    });
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "exit status");
    let lines = log.join().unwrap();
    // Each review is one structured line.
    let review = lines
        .iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|event| event["message"] == "review")
        .expect("no review in the log");
    assert_eq!(review["uid"], "term");
    assert_eq!(review["namespace"], "shop");
    assert_eq!(review["operation"], "CREATE");
    let metadata = &corpus_pods()[0].pod["metadata"];
    let name = metadata.get("name").unwrap_or(&metadata["generateName"]);
    assert_eq!(&review["pod"], name, "{review}");
    assert!(
        review["outcome"].is_string() && review["latency_us"].is_u64(),
        "{review}"
    );
    for message in ["shutting down: not ready, still serving", "stopped"] {
        assert!(
            lines.iter().any(|line| line.contains(message)),
            "no {message:?} in the log:\n{}",
            lines.join("\n")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_review_round_trip() {
    let test = TestServer::start(ClusterView::default()).await;
    let client = client(&[&test.bundle.ca_pem], Http::One);
    let body =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/review.json")).unwrap();
    let (status, answer) = post(&client, &test.url("/mutate"), body.clone()).await;
    assert_eq!(status, StatusCode::OK);
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(
        answer["response"]["uid"],
        "1b9d6bcd-bbfd-4b2d-9b5d-ab8dfbbd4bed"
    );
    let patch = patch_of(&answer["response"]).unwrap();
    let review: Value = serde_json::from_slice(&body).unwrap();
    let mut pod = review["request"]["object"].clone();
    json_patch::patch(&mut pod, &patch).unwrap();
    // No ALB in standalone mode: the policy's 10 s preStop, grace 30 (already enough).
    assert_eq!(
        pod["metadata"]["annotations"]["gracegate.io/mutated"],
        "server:startup,prestop"
    );
    assert_eq!(
        pod["spec"]["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"],
        10
    );
    assert_eq!(
        pod["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"],
        "/_healthz"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_2_and_1_3_are_served_with_alpn() {
    let test = TestServer::start(ClusterView::default()).await;
    let ca = der_of(&test.bundle.ca_pem);
    for (version, alpn, expected) in [
        (
            &rustls::version::TLS12,
            b"http/1.1".as_slice(),
            reqwest::Version::HTTP_11,
        ),
        (
            &rustls::version::TLS13,
            b"h2".as_slice(),
            reqwest::Version::HTTP_2,
        ),
    ] {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone().into()).unwrap();
        let mut tls = rustls::ClientConfig::builder_with_protocol_versions(&[version])
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![alpn.to_vec()];
        let mut builder = reqwest::Client::builder().use_preconfigured_tls(tls);
        if expected == reqwest::Version::HTTP_2 {
            builder = builder.http2_prior_knowledge();
        }
        let response = builder
            .build()
            .unwrap()
            .get(test.url("/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{version:?}");
        assert_eq!(response.version(), expected, "{version:?}");
    }
}
