//! `gracegate mutate` as a user runs it: the real binary, files and standard input, exit codes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use gracegate::yaml;
use serde_json::Value;

fn gracegate(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gracegate"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input
        .write_all(stdin.unwrap_or_default().as_bytes())
        .unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn example() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/deployment.yaml"))
        .unwrap()
}

#[test]
fn the_readme_example_mutates() {
    let out = gracegate(&["mutate", "-f", "examples/deployment.yaml"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let documents = yaml::parse_documents(&text(&out.stdout)).unwrap();
    assert_eq!(documents.len(), 4);
    let pod = &documents[1].value["spec"]["template"];
    assert_eq!(
        pod["spec"]["readinessGates"][0]["conditionType"],
        "target-health.elbv2.k8s.aws/frontend-tgb"
    );
    assert_eq!(
        pod["spec"]["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"],
        30
    );
    assert_eq!(pod["spec"]["terminationGracePeriodSeconds"], 50);
    assert_eq!(
        pod["metadata"]["annotations"]["gracegate.io/mutated"],
        "server:startup,prestop;grace:50;gates:1"
    );
    // The user's readiness probe is theirs.
    assert_eq!(
        pod["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"],
        "/_healthz"
    );
}

#[test]
fn standard_input_and_every_output_format() {
    let input = example();
    let yaml_out = gracegate(&["mutate", "-f", "-"], Some(&input));
    assert!(yaml_out.status.success());
    let mutated = yaml::parse_documents(&text(&yaml_out.stdout)).unwrap();

    let patch_out = gracegate(&["mutate", "-f", "-", "-o", "patch"], Some(&input));
    assert!(patch_out.status.success());
    let patches: Value = serde_json::from_slice(&patch_out.stdout).unwrap();
    assert_eq!(patches.as_array().unwrap().len(), 1, "one workload");
    let original = yaml::parse_documents(&input).unwrap();
    let mut patched = original[1].value.clone();
    let patch: json_patch::Patch = serde_json::from_value(patches[0]["patch"].clone()).unwrap();
    json_patch::patch(&mut patched, &patch).unwrap();
    assert_eq!(patched, mutated[1].value);

    let diff = text(&gracegate(&["mutate", "-f", "-", "-o", "diff"], Some(&input)).stdout);
    assert!(
        diff.starts_with("--- a/Deployment/shop/frontend\n+++ b/Deployment/shop/frontend\n"),
        "{diff}"
    );
    assert!(
        diff.contains("+      - conditionType: target-health.elbv2.k8s.aws/frontend-tgb"),
        "{diff}"
    );

    let report = text(&gracegate(&["mutate", "-f", "-", "-o", "report"], Some(&input)).stdout);
    assert!(
        report.contains("Deployment shop/frontend  server     startup, prestop 30s"),
        "{report}"
    );
    assert!(report.contains("grace unset (30s) -> 50s"), "{report}");
}

#[test]
fn bad_input_exits_2_and_writes_nothing() {
    let cases: [(&[&str], Option<&str>, &str); 5] = [
        (&["mutate", "-f", "-"], Some("a: [1, 2\nb: c\n"), "line"),
        (
            &["mutate", "-f", "-"],
            Some("a: 1\na: 2\n"),
            "appears twice",
        ),
        (
            &["mutate", "-f", "does-not-exist.yaml"],
            None,
            "cannot read does-not-exist.yaml",
        ),
        (
            &["mutate", "-f", "-", "--colour"],
            Some(""),
            "unexpected argument '--colour'",
        ),
        (
            &["mutate", "-f", "-", "-o", "json"],
            Some(""),
            "invalid value 'json'",
        ),
    ];
    for (args, stdin, message) in cases {
        let out = gracegate(args, stdin);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            out.stdout.is_empty(),
            "{args:?} wrote {}",
            text(&out.stdout)
        );
        assert!(
            text(&out.stderr).contains(message),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn policy_file_is_validated_and_applied() {
    let dir = tempfile::tempdir().unwrap();
    let invalid = dir.path().join("invalid.yaml");
    std::fs::write(&invalid, "apiVersion: gracegate.io/v1alpha1\nkind: GracePolicy\nmetadata: {name: bad}\nspec:\n  preStop: {seconds: -3}\n").unwrap();
    let out = gracegate(
        &[
            "mutate",
            "-f",
            "examples/deployment.yaml",
            "--policy-file",
            invalid.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr)
            .contains("policy bad: spec.preStop.seconds must be between 0 and 600, got -3"),
        "{}",
        text(&out.stderr)
    );

    let audit = dir.path().join("audit.yaml");
    std::fs::write(&audit, "apiVersion: gracegate.io/v1alpha1\nkind: GracePolicy\nmetadata: {name: watch-only}\nspec:\n  mode: Audit\n").unwrap();
    let args = [
        "mutate",
        "-f",
        "examples/deployment.yaml",
        "--policy-file",
        audit.to_str().unwrap(),
    ];
    let out = gracegate(&args, None);
    assert!(out.status.success());
    assert_eq!(text(&out.stdout), example(), "Audit mode changes nothing");
    let mut report_args = args.to_vec();
    report_args.extend(["-o", "report"]);
    let report = text(&gracegate(&report_args, None).stdout);
    assert!(report.contains("(audit) startup, prestop 30s"), "{report}");
    assert!(
        report.contains("audit: would set server:startup,prestop;grace:50;gates:1"),
        "{report}"
    );
}

#[test]
fn namespaces_that_did_not_opt_in_are_left_alone() {
    let input = example().replace(
        "gracegate.io/inject: enabled",
        "gracegate.io/inject: disabled",
    );
    let out = gracegate(&["mutate", "-f", "-"], Some(&input));
    assert!(out.status.success());
    assert_eq!(text(&out.stdout), input);
    let report = text(&gracegate(&["mutate", "-f", "-", "-o", "report"], Some(&input)).stdout);
    assert!(
        report.contains("skipped: namespace shop has not opted in"),
        "{report}"
    );
}

#[test]
fn older_clusters_get_an_exec_sleep() {
    let out = gracegate(
        &[
            "mutate",
            "-f",
            "examples/deployment.yaml",
            "--kubernetes-version",
            "1.29",
        ],
        None,
    );
    let documents = yaml::parse_documents(&text(&out.stdout)).unwrap();
    let hook =
        &documents[1].value["spec"]["template"]["spec"]["containers"][0]["lifecycle"]["preStop"];
    assert_eq!(hook["exec"]["command"], serde_json::json!(["sleep", "30"]));
}

#[test]
fn certs_writes_a_ca_and_a_serving_pair_and_prints_the_ca_bundle() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let out = gracegate(
        &[
            "certs",
            "--service",
            "gracegate",
            "--namespace",
            "platform",
            "--out",
            dir.path().to_str().unwrap(),
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ca = std::fs::read_to_string(dir.path().join("ca.crt")).unwrap();
    let printed = base64::engine::general_purpose::STANDARD
        .decode(text(&out.stdout).trim())
        .unwrap();
    assert_eq!(String::from_utf8(printed).unwrap(), ca);
    let cert = std::fs::read_to_string(dir.path().join("tls.crt")).unwrap();
    assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
    let key = std::fs::read_to_string(dir.path().join("tls.key")).unwrap();
    assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"));
}

#[test]
fn serve_without_a_cluster_says_how_to_run_standalone() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gracegate"))
        .args([
            "serve",
            "--dev-certs",
            dir.path().join("certs").to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .env("KUBECONFIG", dir.path().join("no-kubeconfig"))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("cannot reach the cluster") && stderr.contains("--standalone"),
        "{stderr}"
    );
}
