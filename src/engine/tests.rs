//! Table-driven tests of the engine rules (SPEC §3), on real pods from `tests/corpus` where
//! one shows the rule, and on small hand-written pods where a rule needs a precise shape.
//!
//! Every case goes through [`check`], which besides the case's own expectations asserts what
//! must hold for any pod: only `add`/`replace` operations, a patch that applies and gives a
//! valid pod template, the `gracegate.io/mutated` record, warnings of at most 120 characters,
//! nothing a user set overwritten, no native sleep longer than the grace period, and an empty
//! patch on a second pass.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use json_patch::PatchOperation;
use serde_json::{Value, json};

use super::gates::{ALB_GATE_PREFIX, ALB_LABEL, AWS_ALB_LABEL};
use super::*;
use crate::policy::{API_VERSION, KIND, POLICY_LABEL, PolicySet};
use crate::view::{BindingView, ClusterView, NamespaceView, ServiceView};

// ---------------------------------------------------------------------------------------------
// Pods

/// The object of that kind and name in a corpus file.
fn corpus(file: &str, kind: &str, name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    crate::yaml::parse_documents(&text)
        .unwrap()
        .into_iter()
        .map(|document| document.value)
        .find(|object| object["kind"] == kind && object["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{file} has no {kind} {name}"))
}

/// The pod (template) of a corpus workload.
fn template(file: &str, kind: &str, name: &str) -> Value {
    let object = corpus(file, kind, name);
    match kind {
        "Pod" => object,
        "CronJob" => object["spec"]["jobTemplate"]["spec"]["template"].clone(),
        _ => object["spec"]["template"].clone(),
    }
}

const DEMO: &str = "microservices-demo--kubernetes-manifests.yaml";

/// One container `server` on port 8080 with its own readiness and liveness httpGet probes.
fn frontend() -> Value {
    template(DEMO, "Deployment", "frontend")
}

/// One container `server` on port 9555 with gRPC probes and a 5 s grace period.
fn adservice() -> Value {
    template(DEMO, "Deployment", "adservice")
}

/// A plain init container and one container `main` without ports.
fn loadgenerator() -> Value {
    template(DEMO, "Deployment", "loadgenerator")
}

/// One container `app-2048` on port 80 and nothing else; behind an ALB in the AWS example.
fn game2048() -> Value {
    template(
        "aws-load-balancer-controller--2048_full.yaml",
        "Deployment",
        "deployment-2048",
    )
}

/// `shutdown-manager` (exec preStop, no ports) and `envoy` (ports http/https/metrics, own
/// readiness probe, httpGet preStop), a plain init container, grace 300.
fn envoy() -> Value {
    template("contour--03-envoy.yaml", "DaemonSet", "envoy")
}

/// Exec probes, an unreadable `sh -c "nodetool drain"` preStop, unnamed-protocol ports,
/// grace 1800.
fn cassandra() -> Value {
    template(
        "examples--cassandra-statefulset.yaml",
        "StatefulSet",
        "cassandra",
    )
}

/// Container `app` with all three probes of its own (startup and liveness on the named port
/// `tcp-health-port`).
fn grpc_echo() -> Value {
    template("istio--grpc-echo.yaml", "Deployment", "echo-v1")
}

/// Container `node-cache` with ports `dns` (UDP 53), `dns-tcp` (TCP 53) and `metrics`.
fn nodelocaldns() -> Value {
    template(
        "kubernetes--nodelocaldns.yaml",
        "DaemonSet",
        "node-local-dns",
    )
}

/// Container `curl` without ports, grace 0.
fn curl() -> Value {
    template("istio--curl.yaml", "Deployment", "curl")
}

/// Container `myapp` without ports and the native sidecar `logshipper`.
fn sidecar_app() -> Value {
    template("website--deployment-sidecar.yaml", "Deployment", "myapp")
}

/// A bare Pod whose container has its own postStart and an unreadable exec preStop.
fn lifecycle_demo() -> Value {
    template("website--lifecycle-events.yaml", "Pod", "lifecycle-demo")
}

/// Three containers: `blackbox-exporter` (port `http` 19115), `module-configmap-reloader`
/// (no ports), `kube-rbac-proxy` (port `https` 9115).
fn blackbox() -> Value {
    template(
        "kube-prometheus--blackboxExporter-deployment.yaml",
        "Deployment",
        "blackbox-exporter",
    )
}

/// A small pod `web` (label `app: web`) with these containers.
fn web(containers: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {"containers": containers},
    })
}

/// `pod` with `value` at the JSON Pointer `pointer`, creating objects on the way; an index
/// one past the end of a list appends.
fn with(mut pod: Value, pointer: &str, value: Value) -> Value {
    let tokens: Vec<String> = pointer
        .split('/')
        .skip(1)
        .map(|token| token.replace("~1", "/").replace("~0", "~"))
        .collect();
    let (last, parents) = tokens.split_last().unwrap();
    let mut node = &mut pod;
    for token in parents {
        node = if node.is_array() {
            &mut node[token.parse::<usize>().unwrap()]
        } else {
            node.as_object_mut()
                .unwrap()
                .entry(token.clone())
                .or_insert_with(|| json!({}))
        };
    }
    if let Some(items) = node.as_array_mut() {
        let index = last.parse::<usize>().unwrap();
        if index == items.len() {
            items.push(value);
        } else {
            items[index] = value;
        }
    } else {
        node.as_object_mut().unwrap().insert(last.clone(), value);
    }
    pod
}

/// `pod` with these annotations added.
fn annotate(pod: Value, pairs: &[(&str, &str)]) -> Value {
    pairs.iter().fold(pod, |pod, (key, value)| {
        with(
            pod,
            &format!("/metadata/annotations/{}", key.replace('/', "~1")),
            json!(value),
        )
    })
}

/// `pod` with these labels added.
fn label(pod: Value, pairs: &[(&str, &str)]) -> Value {
    pairs.iter().fold(pod, |pod, (key, value)| {
        with(
            pod,
            &format!("/metadata/labels/{}", key.replace('/', "~1")),
            json!(value),
        )
    })
}

// ---------------------------------------------------------------------------------------------
// Expected values

/// An injected probe of `kind` with the built-in timings and this handler.
fn probe(kind: &str, handler: Value) -> Value {
    let mut probe = handler;
    let fields = probe.as_object_mut().unwrap();
    let (period, failure, single_success) = match kind {
        "readiness" => (5, 3, false),
        "startup" => (2, 60, true),
        "liveness" => (10, 3, true),
        _ => unreachable!("no probe kind {kind}"),
    };
    fields.insert("periodSeconds".into(), json!(period));
    fields.insert("timeoutSeconds".into(), json!(1));
    fields.insert("failureThreshold".into(), json!(failure));
    if single_success {
        fields.insert("successThreshold".into(), json!(1));
    }
    probe
}

fn tcp(port: Value) -> Value {
    json!({"tcpSocket": {"port": port}})
}

fn http(path: &str, port: Value) -> Value {
    json!({"httpGet": {"path": path, "port": port}})
}

fn sleep(seconds: i64) -> Value {
    json!({"sleep": {"seconds": seconds}})
}

fn exec_sleep(seconds: i64) -> Value {
    json!({"exec": {"command": ["sleep", seconds.to_string()]}})
}

fn gate(condition_type: &str) -> Value {
    json!({"conditionType": condition_type})
}

const GRACE: &str = "/spec/terminationGracePeriodSeconds";
const TGB: &str = "k8s-game2048-service2-6f1c5a7e2b";
const TGB_GATE: &str = "target-health.elbv2.k8s.aws/k8s-game2048-service2-6f1c5a7e2b";

// ---------------------------------------------------------------------------------------------
// Context

/// What a case may change about the context; the default is the built-in policy in an
/// opted-in namespace without ALB objects, on a cluster with the native sleep.
struct Fixture {
    namespace: NamespaceView,
    policy: GracePolicy,
    policy_warning: Option<&'static str>,
    alb: AlbObjects,
    alb_unavailable: Option<&'static str>,
    style: PreStopStyle,
    workload_kind: Option<&'static str>,
}

impl Default for Fixture {
    fn default() -> Self {
        Self {
            namespace: NamespaceView::assumed_opted_in("game-2048"),
            policy: GracePolicy::builtin(),
            policy_warning: None,
            alb: AlbObjects::default(),
            alb_unavailable: None,
            style: PreStopStyle::NativeSleep,
            workload_kind: None,
        }
    }
}

impl Fixture {
    fn context(&self) -> Context<'_> {
        Context {
            namespace: &self.namespace,
            policy: &self.policy,
            policy_warning: self.policy_warning,
            alb: match self.alb_unavailable {
                Some(reason) => AlbLookup::Unavailable(reason),
                None => AlbLookup::Known(&self.alb),
            },
            prestop_style: self.style,
            workload_kind: self.workload_kind,
        }
    }

    fn namespace_annotation(&mut self, key: &str, value: &str) {
        self.namespace
            .annotations
            .insert(key.to_owned(), value.to_owned());
    }
}

/// A policy named `test`: the built-in defaults under `spec`.
fn policy(spec: Value) -> GracePolicy {
    GracePolicy::from_value(json!({
        "apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": "test"}, "spec": spec
    }))
    .unwrap()
}

/// The 2048 example's Service, as the corpus has it.
fn service_2048() -> ServiceView {
    ServiceView::from_object(&corpus(
        "aws-load-balancer-controller--2048_full-services.yaml",
        "Service",
        "service-2048",
    ))
    .unwrap()
}

/// The namespace opted in to ALB gates, with the 2048 Service behind an `ip`
/// TargetGroupBinding, as the AWS Load Balancer Controller creates for an Ingress.
fn alb(fixture: &mut Fixture) {
    fixture
        .namespace
        .labels
        .insert(ALB_LABEL.to_owned(), "enabled".to_owned());
    fixture.alb = AlbObjects {
        services: vec![service_2048()],
        bindings: vec![BindingView {
            name: TGB.to_owned(),
            service_name: "service-2048".to_owned(),
            target_type: Some("ip".to_owned()),
        }],
    };
}

// ---------------------------------------------------------------------------------------------
// Cases

/// One row of a table.
struct Case {
    name: &'static str,
    pod: Value,
    setup: fn(&mut Fixture),
    /// The expected `gracegate.io/mutated` record; empty when nothing changes.
    record: &'static str,
    /// Values in the resulting pod by JSON Pointer; `null` for a path that must be absent.
    at: Vec<(&'static str, Value)>,
    /// One substring per expected warning, in order.
    warnings: Vec<&'static str>,
    skipped: Option<SkipReason>,
    lookup_failed: bool,
}

fn case(name: &'static str, pod: Value) -> Case {
    Case {
        name,
        pod,
        setup: |_| {},
        record: "",
        at: Vec::new(),
        warnings: Vec::new(),
        skipped: None,
        lookup_failed: false,
    }
}

impl Case {
    fn setup(mut self, setup: fn(&mut Fixture)) -> Self {
        self.setup = setup;
        self
    }

    fn record(mut self, record: &'static str) -> Self {
        self.record = record;
        self
    }

    fn at(mut self, pointer: &'static str, value: Value) -> Self {
        self.at.push((pointer, value));
        self
    }

    fn absent(self, pointer: &'static str) -> Self {
        self.at(pointer, Value::Null)
    }

    fn warns(mut self, warning: &'static str) -> Self {
        self.warnings.push(warning);
        self
    }

    fn skipped(mut self, reason: SkipReason) -> Self {
        self.skipped = Some(reason);
        self
    }

    fn lookup_failed(mut self) -> Self {
        self.lookup_failed = true;
        self
    }
}

fn run_table(cases: Vec<Case>) {
    assert!(!cases.is_empty());
    for case in &cases {
        check(case);
    }
}

/// Runs one case: its own expectations, then the invariants of every mutation.
fn check(case: &Case) -> (Mutation, Value) {
    let name = case.name;
    let mut fixture = Fixture::default();
    (case.setup)(&mut fixture);
    let context = fixture.context();
    let mutation = mutate(&case.pod, &context).unwrap_or_else(|error| panic!("{name}: {error}"));
    let summary = &mutation.summary;

    assert_eq!(summary.record(), case.record, "{name}: record");
    assert_eq!(summary.skipped, case.skipped, "{name}: skip reason");
    assert_eq!(
        summary.alb_lookup_failed, case.lookup_failed,
        "{name}: ALB lookup"
    );
    assert_eq!(
        mutation.warnings.len(),
        case.warnings.len(),
        "{name}: warnings {:#?}",
        mutation.warnings
    );
    for (warning, expected) in mutation.warnings.iter().zip(&case.warnings) {
        assert!(
            warning.contains(expected),
            "{name}: warning {warning:?} lacks {expected:?}"
        );
    }
    for warning in &mutation.warnings {
        assert!(
            warning.chars().count() <= MAX_WARNING_CHARS,
            "{name}: long warning {warning:?}"
        );
    }

    for operation in mutation.patch.iter() {
        assert!(
            matches!(
                operation,
                PatchOperation::Add(_) | PatchOperation::Replace(_)
            ),
            "{name}: {operation}"
        );
    }
    let mut after = case.pod.clone();
    json_patch::patch(&mut after, &mutation.patch)
        .unwrap_or_else(|error| panic!("{name}: the patch does not apply: {error}"));
    serde_json::from_value::<k8s_openapi::api::core::v1::PodTemplateSpec>(after.clone())
        .unwrap_or_else(|error| panic!("{name}: not a valid pod: {error}"));

    let recorded = after.pointer("/metadata/annotations/gracegate.io~1mutated");
    if summary.audit {
        assert!(mutation.patch.is_empty(), "{name}: Audit patched");
        if summary.changed() {
            let expected = format!("audit: would set {}", summary.record());
            assert!(
                mutation.warnings.contains(&expected),
                "{name}: no {expected:?}"
            );
        }
    } else if summary.changed() {
        assert_eq!(recorded, Some(&json!(case.record)), "{name}: annotation");
    } else {
        assert!(
            mutation.patch.is_empty(),
            "{name}: patch without a change: {:?}",
            mutation.patch
        );
    }

    for (pointer, expected) in &case.at {
        let actual = after.pointer(pointer).unwrap_or(&Value::Null);
        assert_eq!(actual, expected, "{name}: {pointer}");
    }
    assert_nothing_overwritten(name, &case.pod, &after, "");
    assert_sleeps_within_grace(name, &after);

    let again = mutate(&after, &context).unwrap();
    assert!(
        again.patch.is_empty(),
        "{name}: second pass patched {:?}",
        again.patch
    );
    if !summary.audit {
        assert!(!again.summary.changed(), "{name}: second pass changed");
    }
    (mutation, after)
}

/// Every leaf of `before` has the same value in `after`, except the grace period, which may
/// only rise, and gracegate's own record.
fn assert_nothing_overwritten(name: &str, before: &Value, after: &Value, pointer: &str) {
    match before {
        Value::Object(map) => {
            for (key, value) in map {
                let child = format!("{pointer}/{}", key.replace('~', "~0").replace('/', "~1"));
                if child == "/metadata/annotations/gracegate.io~1mutated" {
                    continue;
                }
                let after = after
                    .get(key)
                    .unwrap_or_else(|| panic!("{name}: {child} removed"));
                assert_nothing_overwritten(name, value, after, &child);
            }
        }
        Value::Array(items) => {
            let after_items = after.as_array().unwrap();
            assert!(after_items.len() >= items.len(), "{name}: {pointer} shrank");
            for (index, item) in items.iter().enumerate() {
                let child = format!("{pointer}/{index}");
                assert_nothing_overwritten(name, item, &after_items[index], &child);
            }
        }
        // `null` is how JSON spells an unset field; setting it is not an overwrite.
        Value::Null => {}
        leaf if pointer == GRACE => {
            assert!(after.as_i64() >= leaf.as_i64(), "{name}: grace lowered");
        }
        leaf => assert_eq!(leaf, after, "{name}: {pointer} changed"),
    }
}

/// The API server refuses a native preStop sleep longer than the grace period.
fn assert_sleeps_within_grace(name: &str, pod: &Value) {
    let grace = pod.pointer(GRACE).and_then(Value::as_i64).unwrap_or(30);
    for list in ["containers", "initContainers"] {
        for container in pod["spec"][list].as_array().into_iter().flatten() {
            if let Some(seconds) = container.pointer("/lifecycle/preStop/sleep/seconds") {
                assert!(
                    seconds.as_i64().unwrap() <= grace,
                    "{name}: {} sleeps {seconds} s, grace {grace}",
                    container["name"]
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tables

#[test]
fn probes() {
    run_table(vec![
        case("frontend: a startup probe beside its own readiness and liveness", frontend())
            .record("server:startup,prestop")
            .at("/spec/containers/0/startupProbe", probe("startup", tcp(json!(8080))))
            .at("/spec/containers/0/readinessProbe/httpGet/path", json!("/_healthz"))
            .at("/spec/containers/0/livenessProbe/initialDelaySeconds", json!(10)),
        case("2048: readiness and startup, tcpSocket on the only port; liveness off", game2048())
            .record("app-2048:readiness,startup,prestop")
            .at("/spec/containers/0/readinessProbe", probe("readiness", tcp(json!(80))))
            .at("/spec/containers/0/startupProbe", probe("startup", tcp(json!(80))))
            .absent("/spec/containers/0/livenessProbe")
            .absent("/spec/containers/0/readinessProbe/successThreshold"),
        case("liveness enabled by the policy, with successThreshold 1", game2048())
            .setup(|f| f.policy = policy(json!({"probes": {"liveness": {"enabled": true}}})))
            .record("app-2048:readiness,startup,liveness,prestop")
            .at("/spec/containers/0/livenessProbe", probe("liveness", tcp(json!(80)))),
        case(
            "probe-path annotation: httpGet on every injected probe",
            annotate(game2048(), &[("gracegate.io/probe-path", "/healthz")]),
        )
        .record("app-2048:readiness,startup,prestop")
        .at("/spec/containers/0/readinessProbe", probe("readiness", http("/healthz", json!(80))))
        .at("/spec/containers/0/startupProbe", probe("startup", http("/healthz", json!(80)))),
        case("a policy path per probe: httpGet where set, tcpSocket elsewhere", game2048())
            .setup(|f| f.policy = policy(json!({"probes": {"readiness": {"path": "/ready"}}})))
            .record("app-2048:readiness,startup,prestop")
            .at("/spec/containers/0/readinessProbe", probe("readiness", http("/ready", json!(80))))
            .at("/spec/containers/0/startupProbe", probe("startup", tcp(json!(80)))),
        case("handler TCPSocket ignores a configured path", game2048())
            .setup(|f| {
                f.policy = policy(json!({
                    "probes": {"readiness": {"handler": "TCPSocket", "path": "/ready"}}
                }))
            })
            .record("app-2048:readiness,startup,prestop")
            .at("/spec/containers/0/readinessProbe", probe("readiness", tcp(json!(80)))),
        case(
            "handler HTTPGet, the annotation's path over the policy's",
            annotate(game2048(), &[("gracegate.io/probe-path", "/healthz")]),
        )
        .setup(|f| {
            f.policy = policy(json!({
                "probes": {"startup": {"handler": "HTTPGet", "path": "/started"}}
            }))
        })
        .record("app-2048:readiness,startup,prestop")
        .at("/spec/containers/0/startupProbe", probe("startup", http("/healthz", json!(80)))),
        case("handler HTTPGet with the policy's path", game2048())
            .setup(|f| {
                f.policy = policy(json!({
                    "probes": {"startup": {"handler": "HTTPGet", "path": "/started"}}
                }))
            })
            .record("app-2048:readiness,startup,prestop")
            .at("/spec/containers/0/startupProbe", probe("startup", http("/started", json!(80))))
            .at("/spec/containers/0/readinessProbe", probe("readiness", tcp(json!(80)))),
        case("a configured port number is used as it is", game2048())
            .setup(|f| f.policy = policy(json!({"probes": {"port": 9090}})))
            .record("app-2048:readiness,startup,prestop")
            .at("/spec/containers/0/readinessProbe/tcpSocket/port", json!(9090)),
        case(
            "a port name that is a TCP containerPort name",
            annotate(nodelocaldns(), &[("gracegate.io/probe-port", "dns-tcp")]),
        )
        .record("node-cache:readiness,startup,prestop")
        .at("/spec/containers/0/readinessProbe", probe("readiness", tcp(json!("dns-tcp"))))
        .at("/spec/containers/0/startupProbe", probe("startup", tcp(json!("dns-tcp"))))
        .at("/spec/containers/0/livenessProbe/httpGet/path", json!("/health")),
        case(
            "a port name of a UDP port: warning and no probe",
            annotate(nodelocaldns(), &[("gracegate.io/probe-port", "dns")]),
        )
        .record("node-cache:prestop")
        .warns(r#"container "node-cache": port "dns" is not a TCP containerPort name; no probe injected"#)
        .absent("/spec/containers/0/readinessProbe")
        .absent("/spec/containers/0/startupProbe"),
        case("a policy port name the container lacks: warning and no probe", game2048())
            .setup(|f| f.policy = policy(json!({"probes": {"port": "admin"}})))
            .record("app-2048:prestop")
            .warns(r#"container "app-2048": port "admin" is not a TCP containerPort name"#)
            .absent("/spec/containers/0/readinessProbe"),
        case("nodelocaldns: Auto passes over the UDP port", nodelocaldns())
            .record("node-cache:readiness,startup,prestop")
            .at("/spec/containers/0/readinessProbe", probe("readiness", tcp(json!(53)))),
        case(
            "Auto prefers the TCP port named http, not the first",
            web(json!([{"name": "app", "ports": [
                {"containerPort": 9090, "name": "metrics"},
                {"containerPort": 5353, "name": "http", "protocol": "UDP"},
                {"containerPort": 8080, "name": "http", "protocol": "TCP"},
            ]}])),
        )
        .record("app:readiness,startup,prestop")
        .at("/spec/containers/0/readinessProbe", probe("readiness", tcp(json!(8080)))),
        case(
            "Auto takes the first TCP port after UDP ones",
            web(json!([{"name": "dns", "ports": [
                {"containerPort": 53, "protocol": "UDP"},
                {"containerPort": 9153, "protocol": "TCP"},
                {"containerPort": 8181},
            ]}])),
        )
        .record("dns:readiness,startup,prestop")
        .at("/spec/containers/0/startupProbe", probe("startup", tcp(json!(9153)))),
        case(
            "a UDP-only container: warning and no probe",
            web(json!([{"name": "syslog", "ports": [{"containerPort": 514, "protocol": "UDP"}]}])),
        )
        .record("syslog:prestop")
        .warns(r#"container "syslog": no TCP containerPort to probe; no probe injected"#)
        .absent("/spec/containers/0/readinessProbe"),
        case("a container without ports: warning and no probe", curl())
            .record("curl:prestop;grace:30")
            .warns(r#"container "curl": no containerPort to probe; no probe injected"#)
            .absent("/spec/containers/0/readinessProbe"),
        case(
            "probes none: no probe and no port warning",
            annotate(curl(), &[("gracegate.io/probes", "none")]),
        )
        .record("curl:prestop;grace:30"),
        case(
            "probes: a subset",
            annotate(game2048(), &[("gracegate.io/probes", "readiness")]),
        )
        .record("app-2048:readiness,prestop")
        .absent("/spec/containers/0/startupProbe"),
        case(
            "probes: liveness alone turns liveness on and the others off",
            annotate(game2048(), &[("gracegate.io/probes", "liveness")]),
        )
        .record("app-2048:liveness,prestop")
        .at("/spec/containers/0/livenessProbe", probe("liveness", tcp(json!(80))))
        .absent("/spec/containers/0/readinessProbe"),
        case("cassandra: its exec probes kept, only a startup probe added", cassandra())
            .record("cassandra:startup")
            .at("/spec/containers/0/startupProbe", probe("startup", tcp(json!(7000))))
            .at("/spec/containers/0/readinessProbe/exec/command/2", json!("/ready-probe.sh")),
        case("grpc-echo: all three of its own probes kept, none added", grpc_echo())
            .setup(|f| f.policy = policy(json!({"probes": {"liveness": {"enabled": true}}})))
            .record("app:prestop")
            .at("/spec/containers/0/startupProbe/tcpSocket/port", json!("tcp-health-port"))
            .at("/spec/containers/0/livenessProbe/failureThreshold", json!(10)),
        case(
            "a probe already there as null counts as missing",
            with(game2048(), "/spec/containers/0/readinessProbe", Value::Null),
        )
        .record("app-2048:readiness,startup,prestop")
        .at("/spec/containers/0/readinessProbe", probe("readiness", tcp(json!(80)))),
    ]);
}

#[test]
fn prestop() {
    run_table(vec![
        case("native sleep on a cluster that has it", game2048())
            .record("app-2048:readiness,startup,prestop")
            .at(
                "/spec/containers/0/lifecycle",
                json!({"preStop": sleep(10)}),
            ),
        case("exec sleep on an older cluster", game2048())
            .setup(|f| f.style = PreStopStyle::Exec)
            .record("app-2048:readiness,startup,prestop")
            .at("/spec/containers/0/lifecycle/preStop", exec_sleep(10)),
        case("policy action Sleep whatever the cluster", game2048())
            .setup(|f| {
                f.style = PreStopStyle::Exec;
                f.policy = policy(json!({"preStop": {"action": "Sleep"}}));
            })
            .record("app-2048:readiness,startup,prestop")
            .at("/spec/containers/0/lifecycle/preStop", sleep(10)),
        case("policy action Exec whatever the cluster", game2048())
            .setup(|f| f.policy = policy(json!({"preStop": {"action": "Exec"}})))
            .record("app-2048:readiness,startup,prestop")
            .at("/spec/containers/0/lifecycle/preStop", exec_sleep(10)),
        case("preStop disabled by the policy", game2048())
            .setup(|f| f.policy = policy(json!({"preStop": {"enabled": false}})))
            .record("app-2048:readiness,startup")
            .absent("/spec/containers/0/lifecycle"),
        case(
            "the prestop-seconds annotation, and the grace period that covers it",
            annotate(game2048(), &[("gracegate.io/prestop-seconds", "25")]),
        )
        .record("app-2048:readiness,startup,prestop;grace:45")
        .at("/spec/containers/0/lifecycle/preStop", sleep(25))
        .at(GRACE, json!(45)),
        case(
            "the prestop-seconds annotation overrides a disabled preStop",
            annotate(game2048(), &[("gracegate.io/prestop-seconds", "5")]),
        )
        .setup(|f| f.policy = policy(json!({"preStop": {"enabled": false}})))
        .record("app-2048:readiness,startup,prestop")
        .at("/spec/containers/0/lifecycle/preStop", sleep(5)),
        case(
            "prestop-seconds 0 means no preStop",
            annotate(game2048(), &[("gracegate.io/prestop-seconds", "0")]),
        )
        .record("app-2048:readiness,startup")
        .absent("/spec/containers/0/lifecycle"),
        case("envoy: its own httpGet and exec preStops kept", envoy())
            .record("envoy:startup")
            .warns(r#"container "shutdown-manager": no containerPort to probe"#)
            .at(
                "/spec/containers/1/startupProbe",
                probe("startup", tcp(json!(8080))),
            )
            .at(
                "/spec/containers/1/lifecycle/preStop/httpGet/path",
                json!("/shutdown"),
            )
            .at(
                "/spec/containers/0/lifecycle/preStop/exec/command/2",
                json!("shutdown"),
            )
            .absent("/spec/initContainers/0/lifecycle")
            .at(GRACE, json!(300)),
        case(
            "a bare Pod with its own postStart and preStop: nothing to add",
            lifecycle_demo(),
        )
        .warns(r#"container "lifecycle-demo-container": no containerPort to probe"#)
        .at(
            "/spec/containers/0/lifecycle/preStop/exec/command/2",
            json!("nginx -s quit; while killall -0 nginx; do sleep 1; done"),
        ),
        case(
            "an empty lifecycle gets a preStop inside it",
            with(game2048(), "/spec/containers/0/lifecycle", json!({})),
        )
        .record("app-2048:readiness,startup,prestop")
        .at(
            "/spec/containers/0/lifecycle",
            json!({"preStop": sleep(10)}),
        ),
        case(
            "a postStart is kept beside the injected preStop",
            with(
                game2048(),
                "/spec/containers/0/lifecycle",
                json!({"postStart": {"exec": {"command": ["touch", "/tmp/started"]}}}),
            ),
        )
        .record("app-2048:readiness,startup,prestop")
        .at("/spec/containers/0/lifecycle/preStop", sleep(10))
        .at(
            "/spec/containers/0/lifecycle/postStart/exec/command/0",
            json!("touch"),
        ),
    ]);
}

#[test]
fn grace_period() {
    let native_40 = with(
        with(
            game2048(),
            "/spec/containers/0/lifecycle",
            json!({"preStop": sleep(40)}),
        ),
        GRACE,
        json!(45),
    );
    run_table(vec![
        case(
            "unset stays unset when 30 s covers preStop + shutdown",
            frontend(),
        )
        .record("server:startup,prestop")
        .absent(GRACE),
        case(
            "adservice: a low grace period raised with replace",
            adservice(),
        )
        .record("server:startup,prestop;grace:30")
        .at(GRACE, json!(30)),
        case("cassandra: a high grace period never lowered", cassandra())
            .record("cassandra:startup")
            .at(GRACE, json!(1800)),
        case("grace 0 raised to preStop + shutdown", curl())
            .record("curl:prestop;grace:30")
            .warns("no containerPort")
            .at(GRACE, json!(30)),
        case(
            "shutdown-seconds annotation",
            annotate(game2048(), &[("gracegate.io/shutdown-seconds", "45")]),
        )
        .record("app-2048:readiness,startup,prestop;grace:55")
        .at(GRACE, json!(55)),
        case("shutdown-seconds as a namespace annotation", game2048())
            .setup(|f| f.namespace_annotation("gracegate.io/shutdown-seconds", "60"))
            .record("app-2048:readiness,startup,prestop;grace:70")
            .at(GRACE, json!(70)),
        case("shutdown seconds from the policy", game2048())
            .setup(|f| f.policy = policy(json!({"shutdown": {"seconds": 120}})))
            .record("app-2048:readiness,startup,prestop;grace:130")
            .at(GRACE, json!(130)),
        case("a user's own native sleep counts", native_40.clone())
            .record("app-2048:readiness,startup;grace:60")
            .at("/spec/containers/0/lifecycle/preStop", sleep(40))
            .at(GRACE, json!(60)),
        case(
            "not lowered to the preStop when there is no shutdown time",
            annotate(native_40, &[("gracegate.io/shutdown-seconds", "0")]),
        )
        .record("app-2048:readiness,startup")
        .at(GRACE, json!(45)),
        case(
            "an injected sleep longer than 30 s raises an unset grace period to it",
            annotate(
                game2048(),
                &[
                    ("gracegate.io/prestop-seconds", "45"),
                    ("gracegate.io/shutdown-seconds", "0"),
                ],
            ),
        )
        .record("app-2048:readiness,startup,prestop;grace:45")
        .at(GRACE, json!(45)),
        case(
            "a user's exec sleep N counts",
            with(
                game2048(),
                "/spec/containers/0/lifecycle",
                json!({"preStop": exec_sleep(40)}),
            ),
        )
        .record("app-2048:readiness,startup;grace:60")
        .at(GRACE, json!(60)),
        case(
            "a user's sh -c \"sleep N\" counts",
            with(
                game2048(),
                "/spec/containers/0/lifecycle",
                json!({"preStop": {"exec": {"command": ["/bin/sh", "-c", "sleep 45"]}}}),
            ),
        )
        .record("app-2048:readiness,startup;grace:65")
        .at(GRACE, json!(65)),
        case(
            "the longest preStop among the containers",
            with(
                game2048(),
                "/spec/containers/1",
                json!({"name": "log-forwarder", "image": "fluent/fluent-bit:3.0",
                       "lifecycle": {"preStop": {"exec": {"command": ["sh", "-c", "sleep 25"]}}}}),
            ),
        )
        .record("app-2048:readiness,startup,prestop;grace:45")
        .warns(r#"container "log-forwarder": no containerPort to probe"#)
        .at("/spec/containers/0/lifecycle/preStop", sleep(10))
        .at(GRACE, json!(45)),
        case(
            "a skipped container's sleep does not count",
            with(
                game2048(),
                "/spec/containers/1",
                json!({"name": "istio-proxy", "image": "istio/proxyv2",
                       "lifecycle": {"preStop": {"exec": {"command": ["sleep", "25"]}}}}),
            ),
        )
        .record("app-2048:readiness,startup,prestop"),
        case("an unreadable own hook counts 0", lifecycle_demo())
            .setup(|f| f.policy = policy(json!({"shutdown": {"seconds": 40}})))
            .record("grace:40")
            .warns("no containerPort")
            .at(GRACE, json!(40)),
    ]);
}

#[test]
fn readiness_gates() {
    let behind = with(game2048(), "/spec/readinessGates", json!([gate(TGB_GATE)]));
    run_table(vec![
        case(
            "ALB label and an ip TargetGroupBinding: gate, longer preStop",
            game2048(),
        )
        .setup(alb)
        .record("app-2048:readiness,startup,prestop;grace:50;gates:1")
        .at("/spec/readinessGates", json!([gate(TGB_GATE)]))
        .at("/spec/containers/0/lifecycle/preStop", sleep(30))
        .at(GRACE, json!(50)),
        case("the AWS controller's label as an alias", game2048())
            .setup(|f| {
                alb(f);
                f.namespace.labels.remove(ALB_LABEL);
                f.namespace
                    .labels
                    .insert(AWS_ALB_LABEL.to_owned(), "enabled".to_owned());
            })
            .record("app-2048:readiness,startup,prestop;grace:50;gates:1")
            .at("/spec/readinessGates/0", gate(TGB_GATE)),
        case("no ALB label: no gate", game2048())
            .setup(|f| {
                alb(f);
                f.namespace.labels.remove(ALB_LABEL);
            })
            .record("app-2048:readiness,startup,prestop")
            .absent("/spec/readinessGates"),
        case("an ALB label not set to enabled: no gate", game2048())
            .setup(|f| {
                alb(f);
                f.namespace
                    .labels
                    .insert(ALB_LABEL.to_owned(), "disabled".to_owned());
            })
            .record("app-2048:readiness,startup,prestop")
            .absent("/spec/readinessGates"),
        case("alb.enabled true without the label", game2048())
            .setup(|f| {
                alb(f);
                f.namespace.labels.remove(ALB_LABEL);
                f.policy = policy(json!({"readinessGates": {"alb": {"enabled": true}}}));
            })
            .record("app-2048:readiness,startup,prestop;grace:50;gates:1"),
        case("alb.enabled false despite the label", game2048())
            .setup(|f| {
                alb(f);
                f.policy = policy(json!({"readinessGates": {"alb": {"enabled": false}}}));
            })
            .record("app-2048:readiness,startup,prestop"),
        case(
            "an instance TargetGroupBinding targets nodes, not pods",
            game2048(),
        )
        .setup(|f| {
            alb(f);
            f.alb.bindings[0].target_type = Some("instance".to_owned());
        })
        .record("app-2048:readiness,startup,prestop")
        .absent("/spec/readinessGates"),
        case("a TargetGroupBinding without targetType", game2048())
            .setup(|f| {
                alb(f);
                f.alb.bindings[0].target_type = None;
            })
            .record("app-2048:readiness,startup,prestop"),
        case("the binding's Service is missing", game2048())
            .setup(|f| {
                alb(f);
                f.alb.services.clear();
            })
            .record("app-2048:readiness,startup,prestop")
            .absent("/spec/readinessGates"),
        case("a Service without a selector selects nothing", game2048())
            .setup(|f| {
                alb(f);
                f.alb.services[0].selector.clear();
            })
            .record("app-2048:readiness,startup,prestop"),
        case(
            "the Service selects other labels",
            label(game2048(), &[("app.kubernetes.io/name", "app-4096")]),
        )
        .setup(alb)
        .record("app-2048:readiness,startup,prestop")
        .absent("/spec/readinessGates"),
        case(
            "an existing gate kept and not doubled; still behind the ALB",
            behind.clone(),
        )
        .setup(alb)
        .record("app-2048:readiness,startup,prestop;grace:50")
        .at("/spec/readinessGates", json!([gate(TGB_GATE)]))
        .at("/spec/containers/0/lifecycle/preStop", sleep(30)),
        case(
            "a pod that carries an ALB gate gets the ALB preStop anywhere",
            behind.clone(),
        )
        .record("app-2048:readiness,startup,prestop;grace:50")
        .at("/spec/containers/0/lifecycle/preStop", sleep(30)),
        case(
            "the prestop-seconds annotation beats the ALB preStop",
            annotate(game2048(), &[("gracegate.io/prestop-seconds", "15")]),
        )
        .setup(alb)
        .record("app-2048:readiness,startup,prestop;grace:35;gates:1")
        .at("/spec/containers/0/lifecycle/preStop", sleep(15)),
        case("a policy preStop longer than the ALB's wins", game2048())
            .setup(|f| {
                alb(f);
                f.policy = policy(json!({"preStop": {"seconds": 40}}));
            })
            .record("app-2048:readiness,startup,prestop;grace:60;gates:1")
            .at("/spec/containers/0/lifecycle/preStop", sleep(40)),
        case("two bindings, in name order", game2048())
            .setup(|f| {
                alb(f);
                f.alb.bindings.insert(
                    0,
                    BindingView {
                        name: "z-internal".to_owned(),
                        service_name: "service-2048".to_owned(),
                        target_type: Some("ip".to_owned()),
                    },
                );
            })
            .record("app-2048:readiness,startup,prestop;grace:50;gates:2")
            .at(
                "/spec/readinessGates",
                json!([
                    gate(TGB_GATE),
                    gate("target-health.elbv2.k8s.aws/z-internal")
                ]),
            ),
        case("extra gates, added after the existing ones", behind.clone())
            .setup(|f| {
                f.policy = policy(json!({"readinessGates": {"extra": ["example.com/warmed-up"]}}))
            })
            .record("app-2048:readiness,startup,prestop;grace:50;gates:1")
            .at(
                "/spec/readinessGates",
                json!([gate(TGB_GATE), gate("example.com/warmed-up")]),
            ),
        case(
            "an extra gate already there is not doubled",
            with(
                game2048(),
                "/spec/readinessGates",
                json!([gate("example.com/warmed-up")]),
            ),
        )
        .setup(|f| {
            f.policy = policy(json!({"readinessGates": {"extra": ["example.com/warmed-up"]}}))
        })
        .record("app-2048:readiness,startup,prestop")
        .at(
            "/spec/readinessGates",
            json!([gate("example.com/warmed-up")]),
        ),
        case(
            "a binding name too long for a condition type: warning",
            game2048(),
        )
        .setup(|f| {
            alb(f);
            f.alb.bindings[0].name = "k".repeat(64);
        })
        .record("app-2048:readiness,startup,prestop")
        .warns("no ALB gate: the name part must be 1 to 63 characters, in TargetGroupBinding"),
        case(
            "a failed ALB lookup: warning, the rest still done",
            game2048(),
        )
        .setup(|f| {
            alb(f);
            f.alb_unavailable = Some("targetgroupbindings watch is not synced");
            f.policy = policy(json!({"readinessGates": {"extra": ["example.com/warmed-up"]}}));
        })
        .record("app-2048:readiness,startup,prestop;gates:1")
        .warns("ALB gates not injected: lookup failed: targetgroupbindings watch is not synced")
        .lookup_failed()
        .at(
            "/spec/readinessGates",
            json!([gate("example.com/warmed-up")]),
        )
        .at("/spec/containers/0/lifecycle/preStop", sleep(10)),
        case(
            "a failed lookup where ALB gates are off is no news",
            game2048(),
        )
        .setup(|f| f.alb_unavailable = Some("not synced"))
        .record("app-2048:readiness,startup,prestop"),
        case(
            "a failed lookup keeps the ALB preStop of a pod with a gate",
            behind,
        )
        .setup(|f| {
            alb(f);
            f.alb_unavailable = Some("not synced");
        })
        .record("app-2048:readiness,startup,prestop;grace:50")
        .warns("lookup failed: not synced")
        .lookup_failed()
        .at("/spec/containers/0/lifecycle/preStop", sleep(30)),
    ]);
}

#[test]
fn skips() {
    let owned_by_job = with(
        template("website--job-sidecar.yaml", "Job", "myjob"),
        "/metadata/ownerReferences",
        json!([{"apiVersion": "batch/v1", "kind": "Job", "name": "myjob", "uid": "1"}]),
    );
    let with_proxy = with(
        game2048(),
        "/spec/containers/1",
        json!({"name": "istio-proxy", "image": "istio/proxyv2",
               "ports": [{"containerPort": 15090, "name": "http-envoy-prom"}]}),
    );
    run_table(vec![
        case(
            "opt-out annotation on the pod",
            annotate(game2048(), &[("gracegate.io/inject", "disabled")]),
        )
        .skipped(SkipReason::OptedOut),
        case("opt-out annotation on the namespace", game2048())
            .setup(|f| f.namespace_annotation("gracegate.io/inject", "disabled"))
            .skipped(SkipReason::OptedOut),
        case(
            "the pod's annotation beats the namespace's opt-out",
            annotate(game2048(), &[("gracegate.io/inject", "enabled")]),
        )
        .setup(|f| f.namespace_annotation("gracegate.io/inject", "disabled"))
        .record("app-2048:readiness,startup,prestop"),
        case(
            "opt-out label on the pod",
            label(game2048(), &[("gracegate.io/inject", "disabled")]),
        )
        .skipped(SkipReason::OptedOut),
        case(
            "a mirror pod",
            annotate(game2048(), &[("kubernetes.io/config.mirror", "0123abcd")]),
        )
        .skipped(SkipReason::MirrorPod),
        case("a pod owned by a Job", owned_by_job.clone())
            .skipped(SkipReason::Owner("Job".to_owned())),
        case("a Job's pod template", template("website--job-sidecar.yaml", "Job", "myjob"))
            .setup(|f| f.workload_kind = Some("Job"))
            .skipped(SkipReason::Owner("Job".to_owned())),
        case(
            "a CronJob's pod template",
            template("podinfo--cronjob-backup-daily.yaml", "CronJob", "backup-daily"),
        )
        .setup(|f| f.workload_kind = Some("CronJob"))
        .skipped(SkipReason::Owner("CronJob".to_owned())),
        case(
            "a CronJob's pods belong to a Job",
            template("podinfo--cronjob-warm-cache.yaml", "CronJob", "warm-cache"),
        )
        .setup(|f| {
            f.workload_kind = Some("CronJob");
            f.policy = policy(json!({"skip": {"ownerKinds": ["Job"]}}));
        })
        .skipped(SkipReason::Owner("Job".to_owned())),
        case("a Deployment's pods belong to a ReplicaSet", game2048())
            .setup(|f| {
                f.workload_kind = Some("Deployment");
                f.policy = policy(json!({"skip": {"ownerKinds": ["ReplicaSet"]}}));
            })
            .skipped(SkipReason::Owner("ReplicaSet".to_owned())),
        case("no owner kinds skipped: a Job's pod is mutated", owned_by_job)
            .setup(|f| f.policy = policy(json!({"skip": {"ownerKinds": []}})))
            .record("myjob:prestop")
            .warns("no containerPort"),
        case("a Deployment's pod template is mutated", game2048())
            .setup(|f| f.workload_kind = Some("Deployment"))
            .record("app-2048:readiness,startup,prestop"),
        case("loadgenerator: a plain init container untouched", loadgenerator())
            .record("main:prestop;grace:30")
            .warns(r#"container "main": no containerPort to probe"#)
            .absent("/spec/initContainers/0/lifecycle")
            .absent("/spec/initContainers/0/readinessProbe"),
        case(
            "a plain init container listed: warning, untouched",
            annotate(loadgenerator(), &[("gracegate.io/containers", "frontend-check")]),
        )
        .warns(r#"gracegate.io/containers names "frontend-check", which is not a container or native sidecar"#)
        .absent("/spec/initContainers/0/lifecycle"),
        case("a native sidecar left alone unless listed", sidecar_app())
            .record("myapp:prestop")
            .warns(r#"container "myapp""#)
            .absent("/spec/initContainers/0/lifecycle"),
        case(
            "a native sidecar listed in gracegate.io/containers",
            annotate(sidecar_app(), &[("gracegate.io/containers", "myapp,logshipper")]),
        )
        .record("myapp:prestop;logshipper:prestop")
        .warns(r#"container "myapp""#)
        .warns(r#"container "logshipper""#)
        .at("/spec/initContainers/0/lifecycle/preStop", sleep(10))
        .at("/spec/initContainers/0/restartPolicy", json!("Always")),
        case(
            "the sidecar alone",
            annotate(sidecar_app(), &[("gracegate.io/containers", "logshipper")]),
        )
        .setup(|f| f.policy = policy(json!({"probes": {"port": 8080}})))
        .record("logshipper:readiness,startup,prestop")
        .at("/spec/initContainers/0/readinessProbe", probe("readiness", tcp(json!(8080))))
        .absent("/spec/containers/0/lifecycle"),
        case(
            "ephemeral containers untouched, even when listed",
            annotate(
                with(
                    game2048(),
                    "/spec/ephemeralContainers",
                    json!([{"name": "debugger", "image": "busybox", "ports": [{"containerPort": 80}]}]),
                ),
                &[("gracegate.io/containers", "app-2048,debugger")],
            ),
        )
        .record("app-2048:readiness,startup,prestop")
        .warns(r#"gracegate.io/containers names "debugger""#)
        .absent("/spec/ephemeralContainers/0/readinessProbe")
        .absent("/spec/ephemeralContainers/0/lifecycle"),
        case("istio-proxy in skip.containers untouched", with_proxy.clone())
            .record("app-2048:readiness,startup,prestop")
            .absent("/spec/containers/1/readinessProbe")
            .absent("/spec/containers/1/lifecycle"),
        case(
            "istio-proxy when the pod lists it",
            annotate(with_proxy.clone(), &[("gracegate.io/containers", "istio-proxy")]),
        )
        .record("istio-proxy:readiness,startup,prestop")
        .at("/spec/containers/1/readinessProbe", probe("readiness", tcp(json!(15090))))
        .absent("/spec/containers/0/readinessProbe"),
        case("skip.containers from the policy", with_proxy)
            .setup(|f| f.policy = policy(json!({"skip": {"containers": ["app-2048"]}})))
            .record("istio-proxy:readiness,startup,prestop"),
        case(
            "gracegate.io/containers picks one of two",
            annotate(envoy(), &[("gracegate.io/containers", "envoy")]),
        )
        .record("envoy:startup")
        .absent("/spec/containers/0/startupProbe"),
        case(
            "an unknown name in gracegate.io/containers warns",
            annotate(envoy(), &[("gracegate.io/containers", "envoy, missing")]),
        )
        .record("envoy:startup")
        .warns(r#"gracegate.io/containers names "missing", which is not a container or native sidecar"#),
        case(
            "every container skipped: the grace period is left alone",
            annotate(curl(), &[("gracegate.io/containers", "nobody")]),
        )
        .warns(r#"names "nobody""#)
        .at(GRACE, json!(0)),
    ]);
}

#[test]
fn annotations_and_precedence() {
    run_table(vec![
        case(
            "prestop-seconds that is not a number",
            annotate(game2048(), &[("gracegate.io/prestop-seconds", "ten")]),
        )
        .record("app-2048:readiness,startup,prestop")
        .warns(r#"pod annotation gracegate.io/prestop-seconds="ten" is not a whole number of seconds; ignored"#)
        .at("/spec/containers/0/lifecycle/preStop", sleep(10)),
        case(
            "prestop-seconds out of range",
            annotate(game2048(), &[("gracegate.io/prestop-seconds", "601")]),
        )
        .record("app-2048:readiness,startup,prestop")
        .warns(r#"pod annotation gracegate.io/prestop-seconds="601" is out of range; ignored"#),
        case(
            "shutdown-seconds negative",
            annotate(adservice(), &[("gracegate.io/shutdown-seconds", "-5")]),
        )
        .record("server:startup,prestop;grace:30")
        .warns(r#"gracegate.io/shutdown-seconds="-5" is out of range"#),
        case(
            "probe-path that is not a path",
            annotate(game2048(), &[("gracegate.io/probe-path", "healthz")]),
        )
        .record("app-2048:readiness,startup,prestop")
        .warns(r#"gracegate.io/probe-path="healthz" is not a path starting with /; ignored"#)
        .at("/spec/containers/0/readinessProbe", probe("readiness", tcp(json!(80)))),
        case(
            "probe-port that is neither a number nor a name",
            annotate(game2048(), &[("gracegate.io/probe-port", "Not_A_Port")]),
        )
        .record("app-2048:readiness,startup,prestop")
        .warns("is not Auto, a port number (1-65535) or a port name; ignored")
        .at("/spec/containers/0/readinessProbe/tcpSocket/port", json!(80)),
        case(
            "probe-port out of range",
            annotate(game2048(), &[("gracegate.io/probe-port", "70000")]),
        )
        .record("app-2048:readiness,startup,prestop")
        .warns(r#"gracegate.io/probe-port="70000""#),
        case(
            "probes with an unknown kind",
            annotate(game2048(), &[("gracegate.io/probes", "readiness,maybe")]),
        )
        .record("app-2048:readiness,startup,prestop")
        .warns("is not a list of readiness, startup, liveness, or none; ignored"),
        case(
            "containers naming nothing",
            annotate(envoy(), &[("gracegate.io/containers", " , ")]),
        )
        .record("envoy:startup")
        .warns(r#"gracegate.io/containers=" , " names no container; ignored"#)
        .warns(r#"container "shutdown-manager""#),
        case(
            "a pod annotation beats the namespace's",
            annotate(game2048(), &[("gracegate.io/prestop-seconds", "15")]),
        )
        .setup(|f| f.namespace_annotation("gracegate.io/prestop-seconds", "20"))
        .record("app-2048:readiness,startup,prestop;grace:35")
        .at("/spec/containers/0/lifecycle/preStop", sleep(15)),
        case("a namespace annotation beats the policy", game2048())
            .setup(|f| {
                f.namespace_annotation("gracegate.io/prestop-seconds", "20");
                f.policy = policy(json!({"preStop": {"seconds": 5}}));
            })
            .record("app-2048:readiness,startup,prestop;grace:40")
            .at("/spec/containers/0/lifecycle/preStop", sleep(20)),
        case("the policy beats the defaults", game2048())
            .setup(|f| f.policy = policy(json!({"preStop": {"seconds": 5}})))
            .record("app-2048:readiness,startup,prestop")
            .at("/spec/containers/0/lifecycle/preStop", sleep(5)),
        case(
            "an invalid pod value falls back to the namespace's",
            annotate(game2048(), &[("gracegate.io/prestop-seconds", "soon")]),
        )
        .setup(|f| f.namespace_annotation("gracegate.io/prestop-seconds", "20"))
        .record("app-2048:readiness,startup,prestop;grace:40")
        .warns(r#"pod annotation gracegate.io/prestop-seconds="soon""#)
        .at("/spec/containers/0/lifecycle/preStop", sleep(20)),
        case("an invalid namespace value falls back to the policy's", game2048())
            .setup(|f| f.namespace_annotation("gracegate.io/probes", "all"))
            .record("app-2048:readiness,startup,prestop")
            .warns(r#"namespace annotation gracegate.io/probes="all""#),
        case("probe annotations on the namespace", game2048())
            .setup(|f| {
                f.namespace_annotation("gracegate.io/probes", "readiness");
                f.namespace_annotation("gracegate.io/probe-path", "/healthz");
                f.namespace_annotation("gracegate.io/probe-port", "8080");
            })
            .record("app-2048:readiness,prestop")
            .at("/spec/containers/0/readinessProbe", probe("readiness", http("/healthz", json!(8080)))),
        case(
            "a very long invalid value: the warning is cut to 120 characters",
            annotate(
                game2048(),
                &[("gracegate.io/probe-path", &"x".repeat(300))],
            ),
        )
        .record("app-2048:readiness,startup,prestop")
        .warns("pod annotation gracegate.io/probe-path=\"xxx"),
    ]);
}

#[test]
fn policy_audit_and_record() {
    run_table(vec![
        case(
            "Audit: no patch, the would-be record as a warning",
            game2048(),
        )
        .setup(|f| f.policy = policy(json!({"mode": "Audit"})))
        .record("app-2048:readiness,startup,prestop")
        .warns("audit: would set app-2048:readiness,startup,prestop")
        .absent("/spec/containers/0/readinessProbe")
        .absent("/metadata/annotations"),
        case("Audit with ALB gates and a grace period", game2048())
            .setup(|f| {
                alb(f);
                f.policy = policy(json!({"mode": "Audit"}));
            })
            .record("app-2048:readiness,startup,prestop;grace:50;gates:1")
            .warns("audit: would set app-2048:readiness,startup,prestop;grace:50;gates:1")
            .absent("/spec/readinessGates"),
        case("Audit with nothing to do says nothing", lifecycle_demo())
            .setup(|f| f.policy = policy(json!({"mode": "Audit"})))
            .warns("no containerPort"),
        case("the policy choice's warning is passed on", game2048())
            .setup(|f| {
                f.policy_warning = Some("the namespace's gracegate.io/policy names no GracePolicy")
            })
            .record("app-2048:readiness,startup,prestop")
            .warns("the namespace's gracegate.io/policy names no GracePolicy"),
        case("a skipped pod still carries the policy warning", game2048())
            .setup(|f| {
                f.policy_warning = Some("the namespace's gracegate.io/policy names no GracePolicy");
                f.namespace_annotation("gracegate.io/inject", "disabled");
            })
            .skipped(SkipReason::OptedOut)
            .warns("names no GracePolicy"),
        case(
            "blackbox-exporter: the record lists containers in order",
            blackbox(),
        )
        .record(
            "blackbox-exporter:readiness,startup,prestop;\
                 module-configmap-reloader:prestop;\
                 kube-rbac-proxy:readiness,startup,prestop",
        )
        .warns(r#"container "module-configmap-reloader": no containerPort to probe"#)
        .at(
            "/spec/containers/0/readinessProbe/tcpSocket/port",
            json!(19115),
        )
        .at(
            "/spec/containers/2/readinessProbe/tcpSocket/port",
            json!(9115),
        ),
        case(
            "a stale record is replaced",
            annotate(
                game2048(),
                &[("gracegate.io/mutated", "app-2048:readiness")],
            ),
        )
        .record("app-2048:readiness,startup,prestop"),
    ]);
}

#[test]
fn summary_details() {
    let (mutation, _) = check(
        &case("ALB pod", game2048())
            .setup(alb)
            .record("app-2048:readiness,startup,prestop;grace:50;gates:1")
            .at(GRACE, json!(50)),
    );
    let summary = &mutation.summary;
    assert_eq!(summary.policy, "default");
    assert_eq!(summary.grace, Some((None, 50)));
    assert_eq!(summary.gates, [TGB_GATE]);
    assert!(TGB_GATE.starts_with(ALB_GATE_PREFIX));
    assert_eq!(
        summary.containers,
        [ContainerChanges {
            name: "app-2048".to_owned(),
            changes: vec![Change::Readiness, Change::Startup, Change::PreStop(30)],
        }]
    );
    assert_eq!(
        summary.change_counts(),
        [
            ("readiness", 1),
            ("startup", 1),
            ("prestop", 1),
            ("grace", 1),
            ("gates", 1)
        ]
    );

    let (mutation, _) = check(
        &case("Audit", adservice())
            .setup(|f| f.policy = policy(json!({"mode": "Audit"})))
            .record("server:startup,prestop;grace:30")
            .warns("audit: would set"),
    );
    assert!(mutation.summary.audit);
    assert_eq!(mutation.summary.policy, "test");
    assert_eq!(mutation.summary.grace, Some((Some(5), 30)));
    assert_eq!(
        mutation.summary.change_counts(),
        [("startup", 1), ("prestop", 1), ("grace", 1)]
    );
}

/// The patches, operation by operation: only the changed paths, parents created when missing,
/// `replace` only for a value that exists, `-` to append, and `/` in a key escaped as `~1`.
/// (No path the engine writes can hold a `~`; `patch.rs` tests the `~0` escape.)
#[test]
fn minimal_patches() {
    /// Name, pod, the expected patch as JSON, and the context's tweak.
    type Row = (&'static str, Value, Value, fn(&mut Fixture));
    let table: [Row; 4] = [
        (
            "frontend: beside existing annotations",
            frontend(),
            json!([
                {"op": "add", "path": "/spec/containers/0/startupProbe",
                 "value": probe("startup", tcp(json!(8080)))},
                {"op": "add", "path": "/spec/containers/0/lifecycle",
                 "value": {"preStop": sleep(10)}},
                {"op": "add", "path": "/metadata/annotations/gracegate.io~1mutated",
                 "value": "server:startup,prestop"},
            ]),
            |_| {},
        ),
        (
            "2048 behind an ALB: new annotations, gates and grace",
            game2048(),
            json!([
                {"op": "add", "path": "/spec/containers/0/readinessProbe",
                 "value": probe("readiness", tcp(json!(80)))},
                {"op": "add", "path": "/spec/containers/0/startupProbe",
                 "value": probe("startup", tcp(json!(80)))},
                {"op": "add", "path": "/spec/containers/0/lifecycle",
                 "value": {"preStop": sleep(30)}},
                {"op": "add", "path": "/spec/terminationGracePeriodSeconds", "value": 50},
                {"op": "add", "path": "/spec/readinessGates", "value": [gate(TGB_GATE)]},
                {"op": "add", "path": "/metadata/annotations",
                 "value": {"gracegate.io/mutated": "app-2048:readiness,startup,prestop;grace:50;gates:1"}},
            ]),
            alb,
        ),
        (
            "adservice with a gate list, a lifecycle and a stale record",
            annotate(
                with(
                    with(
                        adservice(),
                        "/spec/readinessGates",
                        json!([gate("example.com/a")]),
                    ),
                    "/spec/containers/0/lifecycle",
                    json!({"postStart": {"exec": {"command": ["true"]}}}),
                ),
                &[("gracegate.io/mutated", "old")],
            ),
            json!([
                {"op": "add", "path": "/spec/containers/0/startupProbe",
                 "value": probe("startup", tcp(json!(9555)))},
                {"op": "add", "path": "/spec/containers/0/lifecycle/preStop", "value": sleep(10)},
                {"op": "replace", "path": "/spec/terminationGracePeriodSeconds", "value": 30},
                {"op": "add", "path": "/spec/readinessGates/-", "value": gate("example.com/b")},
                {"op": "replace", "path": "/metadata/annotations/gracegate.io~1mutated",
                 "value": "server:startup,prestop;grace:30;gates:1"},
            ]),
            |f| f.policy = policy(json!({"readinessGates": {"extra": ["example.com/b"]}})),
        ),
        (
            "a pod without metadata",
            json!({"spec": {"containers": [{"name": "app", "ports": [{"containerPort": 80}]}]}}),
            json!([
                {"op": "add", "path": "/spec/containers/0/readinessProbe",
                 "value": probe("readiness", tcp(json!(80)))},
                {"op": "add", "path": "/spec/containers/0/startupProbe",
                 "value": probe("startup", tcp(json!(80)))},
                {"op": "add", "path": "/spec/containers/0/lifecycle",
                 "value": {"preStop": sleep(10)}},
                {"op": "add", "path": "/metadata",
                 "value": {"annotations": {"gracegate.io/mutated": "app:readiness,startup,prestop"}}},
            ]),
            |_| {},
        ),
    ];
    for (name, pod, expected, setup) in table {
        let mut fixture = Fixture::default();
        setup(&mut fixture);
        let mutation = mutate(&pod, &fixture.context()).unwrap();
        assert_eq!(
            serde_json::to_value(&mutation.patch).unwrap(),
            expected,
            "{name}"
        );
        let mut after = pod.clone();
        json_patch::patch(&mut after, &mutation.patch).unwrap();
        assert!(
            mutate(&after, &fixture.context()).unwrap().patch.is_empty(),
            "{name}"
        );
    }
}

#[test]
fn malformed_pods_are_errors() {
    let table = [
        ("not an object", json!(["pod"]), "not a JSON object"),
        (
            "no spec",
            json!({"metadata": {"name": "p"}}),
            "the pod has no spec",
        ),
        (
            "spec not an object",
            json!({"spec": []}),
            "the pod has no spec",
        ),
        (
            "no containers",
            json!({"spec": {}}),
            "spec.containers is missing",
        ),
        (
            "containers not a list",
            json!({"spec": {"containers": {"name": "app"}}}),
            "spec.containers is not a list",
        ),
        (
            "init containers not a list",
            with(
                web(json!([{"name": "app"}])),
                "/spec/initContainers",
                json!("sidecar"),
            ),
            "spec.initContainers is not a list",
        ),
        (
            "a container without a name",
            web(json!([{"image": "nginx"}])),
            "spec.containers[0] has no name",
        ),
        (
            "a container that is not an object",
            web(json!([{"name": "app"}, "nginx"])),
            "spec.containers[1] has no name",
        ),
        (
            "a name that is not a string",
            web(json!([{"name": 7}])),
            "spec.containers[0] has no name",
        ),
        (
            "grace not a number",
            with(game2048(), GRACE, json!("thirty")),
            "spec.terminationGracePeriodSeconds is not a whole number",
        ),
        (
            "grace a fraction",
            with(game2048(), GRACE, json!(30.5)),
            "spec.terminationGracePeriodSeconds is not a whole number",
        ),
        (
            "annotations not an object",
            with(game2048(), "/metadata/annotations", json!("gracegate")),
            "/metadata/annotations is not an object",
        ),
        (
            "annotations a list",
            with(game2048(), "/metadata/annotations", json!([])),
            "/metadata/annotations is not an object",
        ),
        (
            "metadata not an object",
            with(game2048(), "/metadata", json!("pod")),
            "/metadata is not an object",
        ),
        (
            "lifecycle not an object",
            with(game2048(), "/spec/containers/0/lifecycle", json!("none")),
            "/spec/containers/0/lifecycle is not an object",
        ),
    ];
    let fixture = Fixture::default();
    for (name, pod, expected) in table {
        let error = mutate(&pod, &fixture.context())
            .map(|mutation| mutation.patch)
            .expect_err(name);
        assert!(
            matches!(error, EngineError::Malformed(_) | EngineError::Path(_)),
            "{name}"
        );
        let text = error.to_string();
        assert!(text.starts_with("malformed pod: "), "{name}: {text}");
        assert!(text.contains(expected), "{name}: {text} lacks {expected:?}");
    }

    // Gates to add to readinessGates that is not a list: an error, not a replaced field.
    let gated = Fixture {
        policy: policy(json!({"readinessGates": {"extra": ["example.com/warmed-up"]}})),
        ..Fixture::default()
    };
    let pod = with(
        game2048(),
        "/spec/readinessGates",
        json!({"conditionType": "mine"}),
    );
    let error = mutate(&pod, &gated.context()).unwrap_err().to_string();
    assert!(
        error.contains("/spec/readinessGates is not a list"),
        "{error}"
    );
}

#[test]
fn warnings_are_cut_to_120_characters() {
    let long = "x".repeat(300);
    let pod = annotate(game2048(), &[("gracegate.io/probe-path", long.as_str())]);
    let mutation = mutate(&pod, &Fixture::default().context()).unwrap();
    assert_eq!(mutation.warnings.len(), 1);
    let warning = &mutation.warnings[0];
    assert_eq!(warning.chars().count(), MAX_WARNING_CHARS);
    assert!(warning.ends_with('…'), "{warning}");
    assert_eq!(truncate_warning("short"), "short");
    let exact = "y".repeat(MAX_WARNING_CHARS);
    assert_eq!(truncate_warning(&exact), exact);
}

#[test]
fn prestop_style_by_version() {
    let table = [
        ((1, 29), PreStopStyle::Exec),
        ((1, 30), PreStopStyle::NativeSleep),
        ((1, 33), PreStopStyle::NativeSleep),
        ((2, 0), PreStopStyle::NativeSleep),
        ((0, 99), PreStopStyle::Exec),
    ];
    for ((major, minor), expected) in table {
        assert_eq!(
            PreStopStyle::for_version(major, minor),
            expected,
            "{major}.{minor}"
        );
    }
}

/// ALB objects and policies reach the engine through [`ClusterView::context`]: only the pod's
/// namespace's TargetGroupBindings count, and the namespace's labels choose the policy.
#[test]
fn cluster_view_context() {
    let binding = BindingView {
        name: TGB.to_owned(),
        service_name: "service-2048".to_owned(),
        target_type: Some("ip".to_owned()),
    };
    let alb_namespace = |name: &str, labels: &[(&str, &str)]| {
        let mut namespace = NamespaceView::assumed_opted_in(name);
        namespace
            .labels
            .insert(ALB_LABEL.to_owned(), "enabled".to_owned());
        for (key, value) in labels {
            namespace
                .labels
                .insert((*key).to_owned(), (*value).to_owned());
        }
        namespace
    };
    let strict = policy(json!({
        "namespaceSelector": {"matchLabels": {"tier": "web"}},
        "priority": 10,
        "probes": {"liveness": {"enabled": true}},
    }));
    let audit = GracePolicy::from_value(json!({
        "apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": "audit"},
        "spec": {"mode": "Audit", "namespaceSelector": {"matchLabels": {"env": "dev"}}},
    }))
    .unwrap();
    let mut view = ClusterView::new(
        PolicySet::new(vec![strict, audit]).unwrap(),
        PreStopStyle::Exec,
    );
    for namespace in [
        alb_namespace("game-2048", &[]),
        // The same Service, but its TargetGroupBinding lives in game-2048.
        alb_namespace("staging", &[]),
        alb_namespace("web", &[("tier", "web"), ("env", "dev")]),
        alb_namespace("pinned", &[("tier", "web"), (POLICY_LABEL, "audit")]),
        alb_namespace("typo", &[(POLICY_LABEL, "strickt")]),
    ] {
        view.namespaces.insert(namespace.name.clone(), namespace);
    }
    view.alb.insert(
        "game-2048".to_owned(),
        AlbObjects {
            services: vec![service_2048()],
            bindings: vec![binding],
        },
    );
    view.alb.insert(
        "staging".to_owned(),
        AlbObjects {
            services: vec![service_2048()],
            bindings: Vec::new(),
        },
    );

    let pod = game2048();
    let table: [(&str, &str, &str, &[&str]); 6] = [
        (
            "game-2048",
            "default",
            "app-2048:readiness,startup,prestop;grace:50;gates:1",
            &[],
        ),
        (
            "staging",
            "default",
            "app-2048:readiness,startup,prestop",
            &[],
        ),
        (
            "web",
            "test",
            "app-2048:readiness,startup,liveness,prestop",
            &[],
        ),
        (
            "pinned",
            "audit",
            "app-2048:readiness,startup,prestop",
            &["audit: would set app-2048:readiness,startup,prestop"],
        ),
        (
            "typo",
            "default",
            "app-2048:readiness,startup,prestop",
            &["the namespace's gracegate.io/policy names no GracePolicy"],
        ),
        // Not seen: assumed opted in (the webhook was called), no ALB label.
        (
            "unknown",
            "default",
            "app-2048:readiness,startup,prestop",
            &[],
        ),
    ];
    for (namespace, policy_name, record, warnings) in table {
        let namespace_view = view.namespace(namespace);
        let context = view.context(&namespace_view, Some("Deployment"));
        let mutation = mutate(&pod, &context).unwrap();
        assert_eq!(mutation.summary.policy, policy_name, "{namespace}");
        assert_eq!(mutation.summary.record(), record, "{namespace}");
        assert_eq!(mutation.warnings, warnings, "{namespace}");
        assert_eq!(
            mutation.summary.audit,
            policy_name == "audit",
            "{namespace}"
        );
        if !mutation.summary.audit {
            let mut after = pod.clone();
            json_patch::patch(&mut after, &mutation.patch).unwrap();
            // The cluster is older than 1.30: an exec sleep.
            assert_eq!(
                after["spec"]["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][0],
                "sleep",
                "{namespace}"
            );
        }
    }

    view.alb_unavailable = Some("the TargetGroupBinding watch failed".to_owned());
    let namespace_view = view.namespace("game-2048");
    let mutation = mutate(&pod, &view.context(&namespace_view, None)).unwrap();
    assert!(mutation.summary.alb_lookup_failed);
    assert_eq!(
        mutation.summary.record(),
        "app-2048:readiness,startup,prestop"
    );
    assert_eq!(
        mutation.warnings,
        ["ALB gates not injected: lookup failed: the TargetGroupBinding watch failed"]
    );
}

/// Every workload of the corpus, mutated twice under a context that turns on everything
/// (liveness, ALB gates behind every Service of its file): the second pass is always empty.
#[test]
fn corpus_is_idempotent_with_everything_on() {
    let directory = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let (mut pods, mut gated) = (0, 0);
    for entry in std::fs::read_dir(&directory).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        if !file.ends_with(".yaml") || file.ends_with("-services.yaml") {
            continue;
        }
        let mut text = std::fs::read_to_string(&path).unwrap();
        if let Ok(services) =
            std::fs::read_to_string(directory.join(file.replace(".yaml", "-services.yaml")))
        {
            text.push_str("\n---\n");
            text.push_str(&services);
        }
        let documents = crate::yaml::parse_documents(&text).unwrap();
        let mut fixture = Fixture::default();
        alb(&mut fixture);
        fixture.policy = policy(json!({"probes": {"liveness": {"enabled": true}}}));
        fixture.alb.services = documents
            .iter()
            .filter(|document| document.value["kind"] == "Service")
            .filter_map(|document| ServiceView::from_object(&document.value))
            .collect();
        fixture.alb.bindings = fixture
            .alb
            .services
            .iter()
            .map(|service| BindingView {
                name: format!("tgb-{}", service.name),
                service_name: service.name.clone(),
                target_type: Some("ip".to_owned()),
            })
            .collect();
        for document in &documents {
            let kind = document.value["kind"].as_str().unwrap_or_default();
            let pod = match kind {
                "Pod" => document.value.clone(),
                "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" => {
                    document.value["spec"]["template"].clone()
                }
                _ => continue,
            };
            let name = format!("{file}: {kind} {}", document.value["metadata"]["name"]);
            pods += 1;
            let mutation = mutate(&pod, &fixture.context()).unwrap();
            if !mutation.summary.gates.is_empty() {
                gated += 1;
            }
            let mut after = pod.clone();
            json_patch::patch(&mut after, &mutation.patch).unwrap();
            assert_nothing_overwritten(&name, &pod, &after, "");
            assert_sleeps_within_grace(&name, &after);
            let again = mutate(&after, &fixture.context()).unwrap();
            assert!(again.patch.is_empty(), "{name}: {:?}", again.patch);
        }
    }
    assert_eq!(pods, 64, "70 workloads less 6 batch ones");
    assert!(gated >= 30, "only {gated} pods got gates");
}
