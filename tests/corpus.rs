//! Every manifest of the corpus through `gracegate mutate`: the output parses, the same
//! objects come back in order, nothing a user set changes, every result pod is valid, batch
//! pods are untouched, and a second pass changes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use gracegate::cli::OutputFormat;
use gracegate::engine::{PreStopStyle, own_sleep_seconds};
use gracegate::manifests::{self, Outcome};
use gracegate::yaml;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use serde_json::Value;

/// Each workload file with its Services appended, as one input.
fn corpus_inputs() -> Vec<(String, String)> {
    let mut inputs = Vec::new();
    for path in common::workload_files() {
        let mut text = std::fs::read_to_string(&path).unwrap();
        let services = path.with_file_name(
            path.file_name()
                .unwrap()
                .to_string_lossy()
                .replace(".yaml", "-services.yaml"),
        );
        if let Ok(more) = std::fs::read_to_string(services) {
            text.push_str("\n---\n");
            text.push_str(&more);
        }
        inputs.push((
            path.file_name().unwrap().to_string_lossy().into_owned(),
            text,
        ));
    }
    inputs
}

fn run(text: &str, style: PreStopStyle) -> Vec<Outcome> {
    manifests::process(text, Path::new("corpus"), Vec::new(), style).unwrap()
}

fn template(object: &Value) -> &Value {
    match object["kind"].as_str().unwrap() {
        "Pod" => object,
        "CronJob" => &object["spec"]["jobTemplate"]["spec"]["template"],
        _ => &object["spec"]["template"],
    }
}

/// Every leaf of `before` (by JSON Pointer) has the same value in `after`, except the grace
/// period, which may only rise.
fn assert_nothing_overwritten(name: &str, before: &Value, after: &Value, pointer: &str) {
    match before {
        Value::Object(map) => {
            for (key, value) in map {
                let child = format!("{pointer}/{}", key.replace('~', "~0").replace('/', "~1"));
                assert_nothing_overwritten(name, value, &after[key.as_str()], &child);
            }
        }
        Value::Array(items) => {
            let after_items = after
                .as_array()
                .unwrap_or_else(|| panic!("{name}: {pointer} is no longer a list"));
            assert!(
                after_items.len() >= items.len(),
                "{name}: {pointer} lost items"
            );
            for (index, item) in items.iter().enumerate() {
                assert_nothing_overwritten(
                    name,
                    item,
                    &after_items[index],
                    &format!("{pointer}/{index}"),
                );
            }
        }
        leaf if pointer.ends_with("/terminationGracePeriodSeconds") => {
            assert!(
                after.as_i64() >= leaf.as_i64(),
                "{name}: grace lowered at {pointer}"
            );
        }
        leaf => assert_eq!(leaf, after, "{name}: {pointer} changed"),
    }
}

const PROBE_HANDLERS: &[&str] = &["exec", "httpGet", "tcpSocket", "grpc"];
const HOOK_HANDLERS: &[&str] = &["exec", "httpGet", "tcpSocket", "sleep"];

fn handler_count(object: &Value, handlers: &[&str]) -> usize {
    handlers
        .iter()
        .filter(|handler| object.get(**handler).is_some())
        .count()
}

/// The checks the API server and kubelet make that gracegate could break.
fn assert_valid_pod(name: &str, pod: &Value) {
    serde_json::from_value::<PodTemplateSpec>(pod.clone())
        .unwrap_or_else(|error| panic!("{name}: not a pod template: {error}"));
    let grace = pod["spec"]["terminationGracePeriodSeconds"]
        .as_i64()
        .unwrap_or(30);
    let containers = pod["spec"]["containers"].as_array().unwrap();
    let init = pod["spec"]["initContainers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for container in containers.iter().chain(&init) {
        let cname = format!("{name}/{}", container["name"]);
        let port_names: Vec<&str> = container["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["name"].as_str())
            .collect();
        for kind in ["readinessProbe", "startupProbe", "livenessProbe"] {
            let Some(probe) = container.get(kind) else {
                continue;
            };
            assert_eq!(
                handler_count(probe, PROBE_HANDLERS),
                1,
                "{cname}: {kind} needs one handler"
            );
            if kind != "readinessProbe" {
                assert!(
                    probe.get("successThreshold").is_none_or(|v| v == 1),
                    "{cname}: {kind} successThreshold"
                );
            }
            for handler in ["httpGet", "tcpSocket"] {
                if let Some(port) = probe.get(handler).and_then(|h| h["port"].as_str()) {
                    assert!(
                        port_names.contains(&port),
                        "{cname}: {kind} names port {port}, which does not exist"
                    );
                }
            }
        }
        for hook in ["preStop", "postStart"] {
            let Some(hook_value) = container.pointer(&format!("/lifecycle/{hook}")) else {
                continue;
            };
            assert_eq!(
                handler_count(hook_value, HOOK_HANDLERS),
                1,
                "{cname}: {hook} needs one handler"
            );
            if let Some(seconds) = hook_value.pointer("/sleep/seconds") {
                assert!(
                    seconds.as_i64().unwrap() <= grace,
                    "{cname}: native sleep longer than grace {grace}"
                );
            }
        }
    }
}

#[test]
fn every_corpus_manifest_mutates_correctly() {
    let mut mutated_workloads = 0;
    for style in [PreStopStyle::NativeSleep, PreStopStyle::Exec] {
        for (name, text) in corpus_inputs() {
            let outcomes = run(&text, style);
            let output = manifests::render(&text, &outcomes, OutputFormat::Yaml);

            // The output parses and gives back the same objects, in order.
            let reparsed = yaml::parse_documents(&output)
                .unwrap_or_else(|error| panic!("{name}: {error}\n{output}"));
            assert_eq!(reparsed.len(), outcomes.len(), "{name}: document count");
            for (outcome, document) in outcomes.iter().zip(&reparsed) {
                let before = &outcome.document.value;
                assert_eq!(before["kind"], document.value["kind"], "{name}: order");
                assert_eq!(
                    before.pointer("/metadata/name"),
                    document.value.pointer("/metadata/name"),
                    "{name}: order"
                );
                let Some(workload) = &outcome.workload else {
                    assert_eq!(before, &document.value, "{name}: a non-workload changed");
                    continue;
                };
                let title = format!("{name}: {}", workload.title());
                assert_eq!(
                    workload.mutated, document.value,
                    "{title}: output differs from the patched object"
                );

                // The patch, applied by json-patch to the original, gives the output.
                let mut patched = before.clone();
                json_patch::patch(&mut patched, &workload.patch).unwrap();
                assert_eq!(patched, document.value, "{title}");

                assert_nothing_overwritten(&title, before, &document.value, "");
                assert_valid_pod(&title, template(&document.value));

                let kind = before["kind"].as_str().unwrap();
                if kind == "Job" || kind == "CronJob" {
                    assert!(workload.patch.is_empty(), "{title}: batch pod mutated");
                    assert_eq!(
                        &text[outcome.document.source.clone()],
                        &output[document.source.clone()],
                        "{title}"
                    );
                }
                // A user's own sleep is counted, so the grace period covers the sleep.
                let spec = &template(&document.value)["spec"];
                for container in spec["containers"].as_array().unwrap() {
                    if let Some(sleep) = container
                        .pointer("/lifecycle/preStop")
                        .and_then(own_sleep_seconds)
                    {
                        assert!(
                            spec["terminationGracePeriodSeconds"].as_i64().unwrap_or(30) >= sleep,
                            "{title}"
                        );
                    }
                }
                if !workload.patch.is_empty() {
                    mutated_workloads += 1;
                }
            }

            // A second pass changes nothing.
            for outcome in run(&output, style) {
                if let Some(workload) = outcome.workload {
                    assert!(
                        workload.patch.is_empty(),
                        "{name}: second pass patched {}: {:?}",
                        workload.title(),
                        workload.patch
                    );
                }
            }
        }
    }
    // Most real workloads lack something; a run that mutates nothing checks nothing.
    assert!(
        mutated_workloads >= 2 * 50,
        "only {mutated_workloads} workloads mutated"
    );
}

#[test]
fn unchanged_documents_come_back_byte_for_byte() {
    for (name, text) in corpus_inputs() {
        let outcomes = run(&text, PreStopStyle::NativeSleep);
        let output = manifests::render(&text, &outcomes, OutputFormat::Yaml);
        if outcomes
            .iter()
            .all(|outcome| outcome.workload.as_ref().is_none_or(|w| w.patch.is_empty()))
        {
            assert_eq!(output, text, "{name}");
        }
        // The comments above the first document survive even when it changes.
        assert!(output.starts_with("# source:"), "{name}");
    }
}

#[test]
fn vendored_corpus_matches_shared() {
    // CI runs beside ../shared; a plain clone has only the vendored copy.
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus");
    let Ok(entries) = std::fs::read_dir(&shared) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        let vendored = common::corpus_dir().join(path.file_name().unwrap());
        assert_eq!(
            std::fs::read(&path).unwrap(),
            std::fs::read(&vendored).unwrap_or_default(),
            "tests/corpus/{} differs from ../shared/corpus; copy it again",
            path.file_name().unwrap().to_string_lossy()
        );
    }
}
