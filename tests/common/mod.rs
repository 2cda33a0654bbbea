//! Helpers of the server tests: a real server on port 0 with fresh certificates, an HTTPS
//! client that verifies them, AdmissionReviews built from the corpus, a metrics parser.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use gracegate::admission::FailureMode;
use gracegate::certs::{self, Bundle};
use gracegate::server::{Server, Settings};
use gracegate::view::ClusterView;
use gracegate::yaml;
use serde_json::{Value, json};

/// rustls needs one process-wide crypto provider for reqwest's client.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A server started in this process, and what a client needs to reach it.
pub struct TestServer {
    pub server: Server,
    pub bundle: Bundle,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start(cluster: ClusterView) -> Self {
        install_crypto();
        let dir = tempfile::tempdir().unwrap();
        let bundle = certs::generate(&["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        bundle.write(dir.path()).unwrap();
        let server = Server::start(
            settings(
                dir.path().join(certs::CERT_FILE),
                dir.path().join(certs::KEY_FILE),
            ),
            cluster,
        )
        .await
        .unwrap();
        Self {
            server,
            bundle,
            dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.server.address.port())
    }

    pub fn metrics_url(&self) -> String {
        format!("http://{}/metrics", self.server.metrics_address)
    }
}

pub fn settings(cert: PathBuf, key: PathBuf) -> Settings {
    Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        metrics_listen: "127.0.0.1:0".parse().unwrap(),
        cert,
        key,
        failure: FailureMode::Open,
        cluster_watched: false,
    }
}

/// Which HTTP version a client speaks.
#[derive(Clone, Copy, Debug)]
pub enum Http {
    /// HTTP/1.1 with keep-alive, as the API server's webhook client.
    One,
    /// HTTP/2, negotiated by ALPN.
    Two,
}

/// A client that trusts only `ca_pems` and verifies the server's name.
pub fn client(ca_pems: &[&str], http: Http) -> reqwest::Client {
    install_crypto();
    let mut builder = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .tls_info(true)
        .timeout(std::time::Duration::from_secs(10));
    for pem in ca_pems {
        builder =
            builder.add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap());
    }
    builder = match http {
        Http::One => builder.http1_only(),
        Http::Two => builder.http2_prior_knowledge(),
    };
    builder.build().unwrap()
}

pub fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

/// A pod as the API server sends it for a workload's template: `generateName`, no name,
/// an owner reference to the controller that creates it.
pub struct CorpusPod {
    pub title: String,
    pub kind: String,
    pub namespace: String,
    pub pod: Value,
}

/// The corpus files with workloads (not the `*-services.yaml` beside them), sorted.
pub fn workload_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .filter(|path| !path.to_string_lossy().ends_with("-services.yaml"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 38, "the corpus has 38 workload files");
    files
}

/// Every pod template of the corpus, as the pod its controller would create.
pub fn corpus_pods() -> Vec<CorpusPod> {
    let mut pods = Vec::new();
    for file in workload_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        for document in yaml::parse_documents(&text).unwrap() {
            let object = document.value;
            let kind = object["kind"].as_str().unwrap_or_default().to_owned();
            let (template, owner) = match kind.as_str() {
                "Pod" => (object.clone(), None),
                "Deployment" => (object["spec"]["template"].clone(), Some("ReplicaSet")),
                "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
                    (object["spec"]["template"].clone(), Some(kind.as_str()))
                }
                "CronJob" => (
                    object["spec"]["jobTemplate"]["spec"]["template"].clone(),
                    Some("Job"),
                ),
                _ => continue,
            };
            let name = object["metadata"]["name"]
                .as_str()
                .unwrap_or("pod")
                .to_owned();
            let namespace = object["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_owned();
            let mut pod = json!({"apiVersion": "v1", "kind": "Pod"});
            pod["metadata"] = template.get("metadata").cloned().unwrap_or(json!({}));
            pod["spec"] = template["spec"].clone();
            if let Some(owner) = owner {
                pod["metadata"]["generateName"] = json!(format!("{name}-"));
                pod["metadata"]["ownerReferences"] = json!([{
                    "apiVersion": "apps/v1", "kind": owner, "name": name,
                    "uid": "3c5f9f0e-8e2a-4c1b-9d7e-2f1a6b5c4d3e", "controller": true
                }]);
            }
            // As from generateName through the webhook: namespace unset in metadata.
            if let Some(metadata) = pod["metadata"].as_object_mut() {
                metadata.remove("namespace");
            }
            pods.push(CorpusPod {
                title: format!(
                    "{}: {kind} {namespace}/{name}",
                    file.file_name().unwrap().to_string_lossy()
                ),
                kind,
                namespace,
                pod,
            });
        }
    }
    assert_eq!(pods.len(), 70, "the corpus has 70 workloads");
    pods
}

/// An `admission.k8s.io/v1` AdmissionReview as the API server sends it.
pub fn review(
    uid: &str,
    operation: &str,
    resource: &str,
    namespace: &str,
    object: &Value,
) -> Value {
    let kind = match resource {
        "pods" => "Pod",
        "deployments" => "Deployment",
        _ => "ConfigMap",
    };
    let group = if resource == "deployments" {
        "apps"
    } else {
        ""
    };
    let old_object = if operation == "CREATE" {
        Value::Null
    } else {
        object.clone()
    };
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": group, "version": "v1", "kind": kind},
            "resource": {"group": group, "version": "v1", "resource": resource},
            "requestKind": {"group": group, "version": "v1", "kind": kind},
            "requestResource": {"group": group, "version": "v1", "resource": resource},
            "name": "",
            "namespace": namespace,
            "operation": operation,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller", "groups": ["system:serviceaccounts"]},
            "object": if operation == "DELETE" { Value::Null } else { object.clone() },
            "oldObject": old_object,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    })
}

/// One sample of a metrics text: name, labels, value.
#[derive(Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the OpenMetrics text format strictly enough to fail on anything malformed:
/// every sample belongs to a family announced by `# TYPE`, and the text ends in `# EOF`.
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut families: Vec<(String, String)> = Vec::new();
    let mut samples = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line == "# EOF" {
            assert!(lines.peek().is_none(), "text after # EOF");
            return samples;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            families.push((name.to_owned(), kind.to_owned()));
            continue;
        }
        if line.starts_with("# HELP ") || line.starts_with("# UNIT ") {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("bad labels in {line:?}"));
                let labels = body
                    .split("\",")
                    .filter(|pair| !pair.is_empty())
                    .map(|pair| {
                        let (key, value) = pair
                            .split_once("=\"")
                            .unwrap_or_else(|| panic!("bad label in {line:?}"));
                        (key.to_owned(), value.trim_end_matches('"').to_owned())
                    })
                    .collect();
                (name.to_owned(), labels)
            }
            None => (series.to_owned(), BTreeMap::new()),
        };
        assert!(
            families
                .iter()
                .any(|(family, _)| name.starts_with(family.as_str())),
            "{name} has no # TYPE"
        );
        samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    panic!("the metrics text does not end in # EOF");
}

/// The value of the sample with this name and these labels.
pub fn sample(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|sample| {
            sample.name == name
                && labels
                    .iter()
                    .all(|(key, value)| sample.labels.get(*key).map(String::as_str) == Some(*value))
        })
        .map(|sample| sample.value)
}
