//! Properties of the engine over generated pods, policies and contexts: the patch applies,
//! the result is a valid `Pod`, a second pass changes nothing, nothing a user set is
//! overwritten (the grace period only rises), and no native preStop sleep outlasts the grace
//! period.
//!
//! Pods have 1–4 containers with random subsets of their own probes, TCP/UDP ports with and
//! without names, preStop hooks of several kinds, native sidecars and plain init containers,
//! any grace period, readiness gates, owner references, and gracegate annotations with valid
//! and invalid values, on the pod and on its namespace.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use gracegate::engine::{self, AlbLookup, Context, MAX_WARNING_CHARS, PreStopStyle};
use gracegate::policy::GracePolicy;
use gracegate::view::{AlbObjects, BindingView, NamespaceView, ServiceView};
use json_patch::PatchOperation;
use k8s_openapi::api::core::v1::Pod;
use proptest::prelude::*;
use proptest::sample::{select, subsequence};
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use serde_json::{Map, Value, json};

/// Enough to reach every rule many times over, while the whole suite stays fast.
const CASES: u32 = 256;

/// Container names by position: `istio-proxy` is in the default `skip.containers`.
const NAMES: [&str; 4] = ["app", "web", "istio-proxy", "worker"];
const GRACE: &str = "/spec/terminationGracePeriodSeconds";

// ---------------------------------------------------------------------------------------------
// Pods

fn port() -> impl Strategy<Value = Value> {
    (
        select(vec![53, 80, 443, 8080, 9090]),
        select(vec![None, Some("TCP"), Some("UDP")]),
        select(vec![None, Some("http"), Some("metrics"), Some("dns")]),
    )
        .prop_map(|(number, protocol, name)| {
            let mut port = Map::new();
            port.insert("containerPort".into(), json!(number));
            if let Some(protocol) = protocol {
                port.insert("protocol".into(), json!(protocol));
            }
            if let Some(name) = name {
                port.insert("name".into(), json!(name));
            }
            Value::Object(port)
        })
}

/// A probe as users write them; none with a `successThreshold`, which the API pins to 1 for
/// liveness and startup.
fn own_probe() -> impl Strategy<Value = Value> {
    select(vec![
        json!({"tcpSocket": {"port": 8080}}),
        json!({"tcpSocket": {"port": "http"}, "periodSeconds": 3}),
        json!({"httpGet": {"path": "/healthz", "port": 8080}, "initialDelaySeconds": 5}),
        json!({"exec": {"command": ["/bin/check"]}, "failureThreshold": 10}),
        json!({"grpc": {"port": 9090}}),
    ])
}

fn own_prestop() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        2 => Just(None),
        1 => (0..=60i64).prop_map(|s| Some(json!({"preStop": {"sleep": {"seconds": s}}}))),
        1 => (0..=60i64).prop_map(|s| Some(json!({"preStop": {"exec": {"command": ["sleep", s.to_string()]}}}))),
        1 => (0..=60i64).prop_map(|s| Some(json!({"preStop": {"exec": {"command": ["/bin/sh", "-c", format!("sleep {s}")]}}}))),
        1 => Just(Some(json!({"preStop": {"exec": {"command": ["nodetool", "drain"]}}}))),
        1 => Just(Some(json!({"preStop": {"httpGet": {"path": "/shutdown", "port": 8090}}}))),
        1 => Just(Some(json!({"postStart": {"exec": {"command": ["touch", "/tmp/up"]}}}))),
        1 => Just(Some(json!({}))),
    ]
}

/// A container's fields other than its name.
fn container_body() -> impl Strategy<Value = Value> {
    (
        proptest::collection::vec(port(), 0..=3),
        proptest::option::of(own_probe()),
        proptest::option::of(own_probe()),
        proptest::option::of(own_probe()),
        own_prestop(),
    )
        .prop_map(|(ports, readiness, startup, liveness, lifecycle)| {
            let mut container = Map::new();
            container.insert("image".into(), json!("registry.example/app:1"));
            if !ports.is_empty() {
                container.insert("ports".into(), Value::Array(unique_port_names(ports)));
            }
            for (field, probe) in [
                ("readinessProbe", readiness),
                ("startupProbe", startup),
                ("livenessProbe", liveness),
            ] {
                if let Some(probe) = probe {
                    container.insert(field.into(), probe);
                }
            }
            if let Some(lifecycle) = lifecycle {
                container.insert("lifecycle".into(), lifecycle);
            }
            Value::Object(container)
        })
}

/// The API requires port names to be unique within a container.
fn unique_port_names(mut ports: Vec<Value>) -> Vec<Value> {
    let mut seen = Vec::new();
    for port in &mut ports {
        let fields = port.as_object_mut().unwrap();
        if let Some(name) = fields
            .get("name")
            .and_then(Value::as_str)
            .map(str::to_owned)
        {
            if seen.contains(&name) {
                fields.remove("name");
            } else {
                seen.push(name);
            }
        }
    }
    ports
}

/// Each gracegate annotation, absent or with a value that is valid or not.
fn annotations() -> impl Strategy<Value = BTreeMap<String, String>> {
    let choices: [(&str, &[&str]); 7] = [
        (
            "gracegate.io/prestop-seconds",
            &["0", "5", "45", "ten", "-1", "601"],
        ),
        (
            "gracegate.io/shutdown-seconds",
            &["0", "15", "90", "x", "3601"],
        ),
        ("gracegate.io/probe-path", &["/healthz", "healthz", "/a b"]),
        (
            "gracegate.io/probe-port",
            &["Auto", "8080", "http", "metrics", "dns", "0", "Bad_Name"],
        ),
        (
            "gracegate.io/probes",
            &[
                "none",
                "readiness",
                "readiness,startup",
                "liveness",
                "startup,bogus",
            ],
        ),
        (
            "gracegate.io/containers",
            &[
                "app",
                "web,istio-proxy",
                "app,missing",
                "sidecar",
                "app,sidecar",
                "web,sidecar",
                "init",
                ",",
            ],
        ),
        (
            "gracegate.io/inject",
            &["disabled", "enabled", "enabled", "enabled"],
        ),
    ];
    let per_key: Vec<_> = choices
        .into_iter()
        .map(|(key, values)| {
            proptest::option::weighted(0.25, select(values.to_vec()))
                .prop_map(move |value| value.map(|value| (key.to_owned(), value.to_owned())))
        })
        .collect();
    per_key.prop_map(|pairs| pairs.into_iter().flatten().collect())
}

fn grace() -> impl Strategy<Value = Option<i64>> {
    prop_oneof![
        Just(None),
        Just(Some(0)),
        (1..=10i64).prop_map(Some),
        (30..=3600i64).prop_map(Some),
    ]
}

fn pod() -> impl Strategy<Value = Value> {
    (
        proptest::collection::vec(container_body(), 1..=4),
        proptest::option::weighted(0.5, container_body()),
        any::<bool>(),
        grace(),
        annotations(),
        select(vec!["web", "api"]),
        subsequence(
            vec!["target-health.elbv2.k8s.aws/tgb-web", "example.com/ready"],
            0..=2,
        ),
        prop_oneof![16 => Just(None), 2 => Just(Some("ReplicaSet")), 1 => Just(Some("Job"))],
        prop_oneof![19 => Just(false), 1 => Just(true)],
    )
        .prop_map(
            |(bodies, sidecar, plain_init, grace, annotations, app, gates, owner, opt_out)| {
                let containers: Vec<Value> = bodies
                    .into_iter()
                    .zip(NAMES)
                    .map(|(body, name)| named(body, name))
                    .collect();
                let mut init = Vec::new();
                if plain_init {
                    init.push(json!({"name": "init", "image": "busybox", "command": ["true"]}));
                }
                if let Some(body) = sidecar {
                    let mut sidecar = named(body, "sidecar");
                    sidecar["restartPolicy"] = json!("Always");
                    init.push(sidecar);
                }
                let mut labels = json!({"app": app});
                if opt_out {
                    labels["gracegate.io/inject"] = json!("disabled");
                }
                let mut pod = json!({
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": "generated", "labels": labels},
                    "spec": {"containers": containers},
                });
                if !annotations.is_empty() {
                    pod["metadata"]["annotations"] = json!(annotations);
                }
                if let Some(kind) = owner {
                    pod["metadata"]["ownerReferences"] =
                        json!([{"apiVersion": "v1", "kind": kind, "name": "owner", "uid": "1"}]);
                }
                if !init.is_empty() {
                    pod["spec"]["initContainers"] = Value::Array(init);
                }
                if let Some(grace) = grace {
                    pod["spec"]["terminationGracePeriodSeconds"] = json!(grace);
                }
                if !gates.is_empty() {
                    pod["spec"]["readinessGates"] = gates
                        .into_iter()
                        .map(|gate| json!({"conditionType": gate}))
                        .collect();
                }
                pod
            },
        )
}

fn named(mut body: Value, name: &str) -> Value {
    body["name"] = json!(name);
    body
}

// ---------------------------------------------------------------------------------------------
// Policies and contexts

fn policy() -> impl Strategy<Value = GracePolicy> {
    (
        (
            prop_oneof![6 => Just("Enforce"), 1 => Just("Audit")],
            any::<bool>(),
            0..=120i64,
            select(vec!["Auto", "Sleep", "Exec"]),
            0..=120i64,
        ),
        (
            select(vec![json!("Auto"), json!(8080), json!("http")]),
            select(vec!["", "/ready"]),
            select(vec!["Auto", "TCPSocket"]),
            any::<bool>(),
        ),
        (
            select(vec![json!("Auto"), json!(true), json!(false)]),
            0..=120i64,
            select(vec![vec![], vec!["example.com/ready"], vec!["example.com/warm"]]),
            select(vec![
                json!(["istio-proxy", "linkerd-proxy"]),
                json!([]),
                json!(["web"]),
            ]),
        ),
    )
        .prop_map(
            |(
                (mode, prestop_enabled, prestop, action, shutdown),
                (port, path, handler, liveness),
                (alb, alb_prestop, extra, skip),
            )| {
                GracePolicy::from_value(json!({
                    "apiVersion": "gracegate.io/v1alpha1",
                    "kind": "GracePolicy",
                    "metadata": {"name": "generated"},
                    "spec": {
                        "mode": mode,
                        "preStop": {"enabled": prestop_enabled, "seconds": prestop, "action": action},
                        "shutdown": {"seconds": shutdown},
                        "probes": {
                            "port": port,
                            "readiness": {"path": path},
                            "startup": {"handler": handler},
                            "liveness": {"enabled": liveness},
                        },
                        "readinessGates": {
                            "alb": {"enabled": alb, "preStopSeconds": alb_prestop},
                            "extra": extra,
                        },
                        "skip": {"containers": skip},
                    },
                }))
                .unwrap()
            },
        )
}

/// Everything a [`Context`] borrows.
#[derive(Clone, Debug)]
struct World {
    namespace: NamespaceView,
    policy: GracePolicy,
    alb: AlbObjects,
    alb_unavailable: bool,
    style: PreStopStyle,
    workload_kind: Option<&'static str>,
}

impl World {
    fn context(&self) -> Context<'_> {
        Context {
            namespace: &self.namespace,
            policy: &self.policy,
            policy_warning: None,
            alb: if self.alb_unavailable {
                AlbLookup::Unavailable("the TargetGroupBinding watch is not synced")
            } else {
                AlbLookup::Known(&self.alb)
            },
            prestop_style: self.style,
            workload_kind: self.workload_kind,
        }
    }
}

fn world() -> impl Strategy<Value = World> {
    (
        policy(),
        select(vec![
            None,
            Some("gracegate.io/alb-readiness-gates"),
            Some("elbv2.k8s.aws/pod-readiness-gate-inject"),
        ]),
        proptest::option::weighted(0.3, annotations()),
        select(vec!["ip", "ip", "instance"]),
        any::<bool>(),
        prop_oneof![5 => Just(false), 1 => Just(true)],
        select(vec![PreStopStyle::NativeSleep, PreStopStyle::Exec]),
        prop_oneof![
            4 => Just(None),
            4 => Just(Some("Deployment")),
            2 => Just(Some("StatefulSet")),
            1 => Just(Some("CronJob")),
        ],
    )
        .prop_map(
            |(
                policy,
                alb_label,
                annotations,
                target_type,
                api_binding,
                unavailable,
                style,
                kind,
            )| {
                let mut namespace = NamespaceView::assumed_opted_in("shop");
                if let Some(label) = alb_label {
                    namespace
                        .labels
                        .insert(label.to_owned(), "enabled".to_owned());
                }
                namespace.annotations = annotations.unwrap_or_default();
                let service = |name: &str| ServiceView {
                    name: name.to_owned(),
                    selector: BTreeMap::from([("app".to_owned(), name.to_owned())]),
                };
                let binding = |name: &str, target_type: &str| BindingView {
                    name: format!("tgb-{name}"),
                    service_name: name.to_owned(),
                    target_type: Some(target_type.to_owned()),
                };
                let mut bindings = vec![binding("web", target_type)];
                if api_binding {
                    bindings.push(binding("api", "ip"));
                }
                World {
                    namespace,
                    policy,
                    alb: AlbObjects {
                        services: vec![service("web"), service("api")],
                        bindings,
                    },
                    alb_unavailable: unavailable,
                    style,
                    workload_kind: kind,
                }
            },
        )
}

// ---------------------------------------------------------------------------------------------
// Checks

/// Every leaf of `before` is in `after` unchanged; the grace period may only rise.
fn assert_nothing_overwritten(before: &Value, after: &Value, pointer: &str) {
    match before {
        Value::Object(map) => {
            for (key, value) in map {
                let child = format!("{pointer}/{}", key.replace('~', "~0").replace('/', "~1"));
                let after = after.get(key);
                assert!(after.is_some(), "{child} removed");
                assert_nothing_overwritten(value, after.unwrap(), &child);
            }
        }
        Value::Array(items) => {
            let after = after.as_array().unwrap();
            assert!(after.len() >= items.len(), "{pointer} shrank");
            for (index, item) in items.iter().enumerate() {
                assert_nothing_overwritten(item, &after[index], &format!("{pointer}/{index}"));
            }
        }
        leaf if pointer == GRACE => {
            assert!(
                after.as_i64() >= leaf.as_i64(),
                "grace lowered: {leaf} -> {after}"
            );
        }
        leaf => assert_eq!(leaf, after, "{pointer} changed"),
    }
}

/// `(container path, seconds)` of every native preStop sleep.
fn native_sleeps(pod: &Value) -> Vec<(String, i64)> {
    let mut sleeps = Vec::new();
    for list in ["containers", "initContainers"] {
        for (index, container) in pod["spec"][list]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            if let Some(seconds) = container.pointer("/lifecycle/preStop/sleep/seconds") {
                sleeps.push((format!("{list}/{index}"), seconds.as_i64().unwrap()));
            }
        }
    }
    sleeps
}

fn grace_of(pod: &Value) -> i64 {
    pod.pointer(GRACE).and_then(Value::as_i64).unwrap_or(30)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn mutation_is_safe_and_idempotent(pod in pod(), world in world()) {
        let context = world.context();
        let mutation = engine::mutate(&pod, &context).unwrap();
        for warning in &mutation.warnings {
            prop_assert!(warning.chars().count() <= MAX_WARNING_CHARS, "{warning}");
        }
        for operation in mutation.patch.iter() {
            prop_assert!(
                matches!(operation, PatchOperation::Add(_) | PatchOperation::Replace(_)),
                "{operation}"
            );
        }
        if mutation.summary.audit || mutation.summary.skipped.is_some() {
            prop_assert!(mutation.patch.is_empty());
        }

        // (a) The patch applies.
        let mut after = pod.clone();
        json_patch::patch(&mut after, &mutation.patch).unwrap();

        // (b) The result is a Pod.
        let typed = serde_json::from_value::<Pod>(after.clone());
        prop_assert!(typed.is_ok(), "{:?}", typed.err());

        // (c) A second pass changes nothing.
        let again = engine::mutate(&after, &context).unwrap();
        prop_assert!(again.patch.is_empty(), "second pass: {:?}", again.patch);

        // (d) Nothing a user set is overwritten; the grace period never falls.
        assert_nothing_overwritten(&pod, &after, "");

        // (e) No native sleep outlasts the grace period: every injected one fits, and a pod
        // that was valid stays valid.
        let before_sleeps = native_sleeps(&pod);
        let grace = grace_of(&after);
        for (path, seconds) in native_sleeps(&after) {
            let injected = !before_sleeps.iter().any(|(before, _)| *before == path);
            if injected || before_sleeps.iter().all(|(_, s)| *s <= grace_of(&pod)) {
                prop_assert!(seconds <= grace, "{path} sleeps {seconds} s, grace {grace}");
            }
        }

        // The record annotation says what the summary says.
        if !mutation.patch.is_empty() {
            prop_assert_eq!(
                after.pointer("/metadata/annotations/gracegate.io~1mutated"),
                Some(&json!(mutation.summary.record()))
            );
        }
    }
}

/// The generators reach every rule, so the property above is not true merely because its
/// inputs never meet one.
#[test]
fn generators_reach_every_rule() {
    let mut runner = TestRunner::deterministic();
    let strategy = (pod(), world());
    let mut seen: BTreeMap<&str, u32> = BTreeMap::new();
    for _ in 0..CASES {
        let (pod, world) = strategy.new_tree(&mut runner).unwrap().current();
        let mutation = engine::mutate(&pod, &world.context()).unwrap();
        let summary = &mutation.summary;
        let patch = serde_json::to_string(&mutation.patch).unwrap();
        let mut facts: Vec<&str> = summary
            .change_counts()
            .into_iter()
            .map(|(label, _)| label)
            .collect();
        for (fact, holds) in [
            ("skipped", summary.skipped.is_some()),
            ("audit", summary.audit && summary.changed()),
            ("alb lookup failed", summary.alb_lookup_failed),
            ("warning", !mutation.warnings.is_empty()),
            ("native sleep", patch.contains(r#""sleep":{"seconds":"#)),
            (
                "exec sleep",
                patch.contains(r#""exec":{"command":["sleep""#),
            ),
            ("httpGet probe", patch.contains(r#""httpGet":"#)),
            ("named probe port", patch.contains(r#""port":"http""#)),
            (
                "ALB gate",
                patch.contains("target-health.elbv2.k8s.aws/tgb-"),
            ),
            (
                "sidecar",
                summary.containers.iter().any(|c| c.name == "sidecar"),
            ),
            (
                "grace replaced",
                patch.contains(r#""op":"replace","path":"/spec/terminationGracePeriodSeconds""#),
            ),
        ] {
            if holds {
                facts.push(fact);
            }
        }
        for fact in facts {
            *seen.entry(fact).or_default() += 1;
        }
    }
    for fact in [
        "readiness",
        "startup",
        "liveness",
        "prestop",
        "grace",
        "gates",
        "skipped",
        "audit",
        "alb lookup failed",
        "warning",
        "native sleep",
        "exec sleep",
        "httpGet probe",
        "named probe port",
        "ALB gate",
        "sidecar",
        "grace replaced",
    ] {
        let count = seen.get(fact).copied().unwrap_or(0);
        assert!(
            count >= 3,
            "only {count} of {CASES} generated pods show {fact}: {seen:?}"
        );
    }
}
