//! The `GracePolicy` resource (`gracegate.io/v1alpha1`): its types, the built-in defaults,
//! validation, and the choice of the policy that applies to a namespace.
//!
//! A policy is read by overlaying the user's document on the embedded default policy
//! (`default-policy.yaml`, SPEC §2), so a policy that says only
//! `probes: {liveness: {enabled: true}}` keeps every other default, including the per-probe
//! ones. The merged document is then deserialized strictly (unknown fields are errors) and
//! validated.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{selector, yaml};

/// API group and version of the resource.
pub const API_VERSION: &str = "gracegate.io/v1alpha1";
/// Kind of the resource.
pub const KIND: &str = "GracePolicy";
/// Namespace label that names the policy a namespace uses.
pub const POLICY_LABEL: &str = "gracegate.io/policy";

/// The embedded default policy, as YAML (SPEC §2).
pub const DEFAULT_POLICY_YAML: &str = include_str!("default-policy.yaml");

/// Longest preStop sleep a policy may ask for. Ten minutes is twice the AWS ALB's default
/// deregistration delay (300 s); anything longer holds node drains hostage for no gain.
pub const MAX_PRESTOP_SECONDS: i64 = 600;
/// Longest app drain a policy may ask for. One hour covers the slowest real drains in the
/// corpus (Cassandra's `nodetool drain` with a 1800 s grace period).
pub const MAX_SHUTDOWN_SECONDS: i64 = 3600;

/// Errors of reading or validating a policy.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The document is not YAML or JSON, or its fields have the wrong types.
    #[error("policy {name}: {source}")]
    Parse {
        /// Name of the policy, or `<unnamed>`.
        name: String,
        /// What the decoder said.
        #[source]
        source: serde_json::Error,
    },
    /// The document is not a `gracegate.io/v1alpha1` `GracePolicy`.
    #[error(
        "policy {name}: expected apiVersion {API_VERSION} and kind {KIND}, got {api_version} {kind}"
    )]
    WrongType {
        /// Name of the policy, or `<unnamed>`.
        name: String,
        /// The document's apiVersion.
        api_version: String,
        /// The document's kind.
        kind: String,
    },
    /// The fields parse but their values are not allowed.
    #[error("policy {name}: {}", problems.join("; "))]
    Invalid {
        /// Name of the policy.
        name: String,
        /// One sentence per problem, each naming the field.
        problems: Vec<String>,
    },
    /// Two policies share a name.
    #[error("policy {0} is defined twice")]
    Duplicate(String),
}

/// A `GracePolicy` object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GracePolicy {
    /// Always [`API_VERSION`].
    pub api_version: String,
    /// Always [`KIND`].
    pub kind: String,
    /// Only the name is used.
    pub metadata: PolicyMetadata,
    /// What the policy asks for.
    pub spec: PolicySpec,
    /// Written by the cluster; ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Value>,
}

/// The part of `metadata` a policy uses; other metadata is kept as it came.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PolicyMetadata {
    /// The policy's name, referenced by the `gracegate.io/policy` namespace label.
    #[serde(default)]
    pub name: String,
    /// Everything else (labels, uid, managedFields, ...), unused.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// `spec` of a `GracePolicy`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicySpec {
    /// Which namespaces the policy applies to.
    pub namespace_selector: LabelSelector,
    /// Highest wins when several policies match; ties go to the first name in order.
    pub priority: i32,
    /// Enforce (patch) or Audit (warnings and metrics only).
    pub mode: Mode,
    /// The preStop sleep.
    pub pre_stop: PreStopSpec,
    /// The app's own drain after SIGTERM.
    pub shutdown: ShutdownSpec,
    /// Injected probes.
    pub probes: ProbesSpec,
    /// Injected readiness gates.
    pub readiness_gates: ReadinessGatesSpec,
    /// What is left alone.
    pub skip: SkipSpec,
}

/// Whether a policy patches pods or only reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// Patch pods.
    Enforce,
    /// Never patch; say what would change in warnings and metrics.
    Audit,
}

/// `spec.preStop`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PreStopSpec {
    /// Inject a preStop hook where a container has none.
    pub enabled: bool,
    /// Length of the sleep.
    pub seconds: i64,
    /// How to sleep.
    pub action: PreStopAction,
}

/// How an injected preStop sleeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PreStopAction {
    /// The native `sleep` handler where the cluster has it (Kubernetes ≥ 1.30), else `Exec`.
    Auto,
    /// Always the native `sleep` handler.
    Sleep,
    /// Always `exec: [sleep, N]` (needs a `sleep` binary in the image).
    Exec,
}

/// `spec.shutdown`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ShutdownSpec {
    /// Seconds the app needs after SIGTERM to finish in-flight work.
    pub seconds: i64,
}

/// `spec.probes`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProbesSpec {
    /// Port of injected probes.
    pub port: ProbePort,
    /// The readiness probe.
    pub readiness: ProbeSpec,
    /// The startup probe.
    pub startup: ProbeSpec,
    /// The liveness probe.
    pub liveness: ProbeSpec,
}

/// Port of an injected probe: `Auto`, a number, or a `containerPort` name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbePort {
    /// The first TCP `containerPort`, preferring one named `http`.
    Auto,
    /// A port number.
    Number(i32),
    /// A `containerPort` name, which must exist on the container.
    Name(String),
}

impl ProbePort {
    /// Reads a port as written in a policy or annotation: `Auto`, `8080` or `http`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text == "Auto" {
            return Ok(Self::Auto);
        }
        if let Ok(number) = text.parse::<i64>() {
            return if (1..=65535).contains(&number) {
                Ok(Self::Number(number as i32))
            } else {
                Err(format!("port {number} is outside 1-65535"))
            };
        }
        if is_port_name(text) {
            Ok(Self::Name(text.to_owned()))
        } else {
            Err(format!(
                "{text:?} is neither Auto, a port number nor a port name"
            ))
        }
    }
}

/// Whether `name` is a valid `containerPort` name (IANA_SVC_NAME: at most 15 lowercase
/// letters, digits and inner single hyphens, with at least one letter).
pub fn is_port_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !name.is_empty()
        && name.len() <= 15
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.iter().any(u8::is_ascii_lowercase)
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

impl Serialize for ProbePort {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Auto => serializer.serialize_str("Auto"),
            Self::Number(number) => serializer.serialize_i32(*number),
            Self::Name(name) => serializer.serialize_str(name),
        }
    }
}

impl<'de> Deserialize<'de> for ProbePort {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = match Value::deserialize(deserializer)? {
            Value::String(text) => text,
            Value::Number(number) => number.to_string(),
            other => {
                return Err(serde::de::Error::custom(format!(
                    "port must be Auto, a number or a name, not {other}"
                )));
            }
        };
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// One probe's settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProbeSpec {
    /// Inject this probe where a container has none of its kind.
    pub enabled: bool,
    /// Which handler to inject.
    pub handler: ProbeHandler,
    /// HTTP path; empty means none (and so `tcpSocket` under `Auto`).
    pub path: String,
    /// `periodSeconds` of the injected probe.
    pub period_seconds: i32,
    /// `timeoutSeconds` of the injected probe.
    pub timeout_seconds: i32,
    /// `failureThreshold` of the injected probe.
    pub failure_threshold: i32,
}

/// Handler of an injected probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProbeHandler {
    /// `httpGet` when a path is configured, else `tcpSocket`: gracegate never guesses a path.
    Auto,
    /// Always `httpGet` (a path is required).
    #[serde(rename = "HTTPGet")]
    HttpGet,
    /// Always `tcpSocket`.
    #[serde(rename = "TCPSocket")]
    TcpSocket,
}

/// `spec.readinessGates`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReadinessGatesSpec {
    /// AWS Load Balancer Controller target-health gates.
    pub alb: AlbGatesSpec,
    /// Condition types every pod gets.
    pub extra: Vec<String>,
}

/// `spec.readinessGates.alb`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AlbGatesSpec {
    /// When to inject ALB gates.
    pub enabled: AlbGates,
    /// preStop sleep of a pod behind an ALB (the ALB needs longer to deregister a target).
    pub pre_stop_seconds: i64,
}

/// When ALB readiness gates are injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlbGates {
    /// In namespaces labelled `gracegate.io/alb-readiness-gates=enabled` (or the AWS alias).
    Auto,
    /// In every namespace.
    Always,
    /// Never.
    Never,
}

impl Serialize for AlbGates {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Auto => serializer.serialize_str("Auto"),
            Self::Always => serializer.serialize_bool(true),
            Self::Never => serializer.serialize_bool(false),
        }
    }
}

impl<'de> Deserialize<'de> for AlbGates {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match Value::deserialize(deserializer)? {
            Value::Bool(true) => Ok(Self::Always),
            Value::Bool(false) => Ok(Self::Never),
            Value::String(text) if text == "Auto" => Ok(Self::Auto),
            other => Err(serde::de::Error::custom(format!(
                "readinessGates.alb.enabled must be Auto, true or false, not {other}"
            ))),
        }
    }
}

/// `spec.skip`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SkipSpec {
    /// Pods owned (directly or through a Job) by these kinds are left alone.
    pub owner_kinds: Vec<String>,
    /// Containers with these names are left alone unless the pod lists them.
    pub containers: Vec<String>,
}

impl GracePolicy {
    /// The built-in policy (SPEC §2).
    pub fn builtin() -> Self {
        // The embedded document is checked by a unit test, so this cannot fail at run time.
        Self::from_value(default_document())
            .unwrap_or_else(|error| unreachable!("the embedded default policy is invalid: {error}"))
    }

    /// Reads a policy from a parsed YAML or JSON document, filling what it leaves out with
    /// the defaults, and validates it.
    pub fn from_value(document: Value) -> Result<Self, PolicyError> {
        let name = document
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("<unnamed>")
            .to_owned();
        let api_version = document
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("");
        let kind = document.get("kind").and_then(Value::as_str).unwrap_or("");
        if api_version != API_VERSION || kind != KIND {
            return Err(PolicyError::WrongType {
                name,
                api_version: api_version.to_owned(),
                kind: kind.to_owned(),
            });
        }
        let mut merged = default_document();
        overlay(&mut merged, document, "");
        let policy: Self = serde_json::from_value(merged).map_err(|source| PolicyError::Parse {
            name: name.clone(),
            source,
        })?;
        policy.validate()?;
        Ok(policy)
    }

    /// Reads every `GracePolicy` in a multi-document YAML text.
    pub fn from_yaml_documents(text: &str) -> Result<Vec<Self>, PolicyError> {
        let documents = yaml::parse_documents(text).map_err(|error| PolicyError::Parse {
            name: "<unnamed>".to_owned(),
            source: serde::de::Error::custom(error),
        })?;
        documents
            .into_iter()
            .filter(|document| !document.value.is_null())
            .map(|document| Self::from_value(document.value))
            .collect()
    }

    /// The policy's name.
    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// Checks every value a policy may not have, naming each problem.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let mut problems = Vec::new();
        let spec = &self.spec;
        if self.metadata.name.is_empty() {
            problems.push("metadata.name is empty".to_owned());
        }
        let mut seconds = |field: &str, value: i64, max: i64| {
            if !(0..=max).contains(&value) {
                problems.push(format!("{field} must be between 0 and {max}, got {value}"));
            }
        };
        seconds(
            "spec.preStop.seconds",
            spec.pre_stop.seconds,
            MAX_PRESTOP_SECONDS,
        );
        seconds(
            "spec.readinessGates.alb.preStopSeconds",
            spec.readiness_gates.alb.pre_stop_seconds,
            MAX_PRESTOP_SECONDS,
        );
        seconds(
            "spec.shutdown.seconds",
            spec.shutdown.seconds,
            MAX_SHUTDOWN_SECONDS,
        );
        for (kind, probe) in [
            ("readiness", &spec.probes.readiness),
            ("startup", &spec.probes.startup),
            ("liveness", &spec.probes.liveness),
        ] {
            let field = format!("spec.probes.{kind}");
            for (name, value) in [
                ("periodSeconds", probe.period_seconds),
                ("timeoutSeconds", probe.timeout_seconds),
                ("failureThreshold", probe.failure_threshold),
            ] {
                if value < 1 {
                    problems.push(format!("{field}.{name} must be at least 1, got {value}"));
                }
            }
            if !probe.path.is_empty() && !probe.path.starts_with('/') {
                problems.push(format!(
                    "{field}.path must start with /, got {:?}",
                    probe.path
                ));
            }
            if probe.handler == ProbeHandler::HttpGet && probe.path.is_empty() {
                problems.push(format!("{field}.handler HTTPGet needs a path"));
            }
        }
        for gate in &spec.readiness_gates.extra {
            if let Err(reason) = check_condition_type(gate) {
                problems.push(format!("spec.readinessGates.extra {gate:?}: {reason}"));
            }
        }
        if let Err(reason) = selector::validate(&spec.namespace_selector) {
            problems.push(format!("spec.namespaceSelector: {reason}"));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(PolicyError::Invalid {
                name: self.metadata.name.clone(),
                problems,
            })
        }
    }
}

/// The embedded default policy as a JSON value.
fn default_document() -> Value {
    yaml::parse_documents(DEFAULT_POLICY_YAML)
        .ok()
        .and_then(|documents| documents.into_iter().next())
        .map(|document| document.value)
        .unwrap_or_else(|| unreachable!("the embedded default policy is not YAML"))
}

/// Fields replaced whole rather than merged: a selector means what it says, not what it says
/// plus the default's `matchLabels`.
const ATOMIC_FIELDS: &[&str] = &["/spec/namespaceSelector"];

/// Overlays `user` on `base`: objects merge key by key, everything else replaces, and a
/// `null` keeps the default.
fn overlay(base: &mut Value, user: Value, path: &str) {
    match (base, user) {
        (_, Value::Null) => {}
        (Value::Object(base), Value::Object(user)) if !ATOMIC_FIELDS.contains(&path) => {
            for (key, value) in user {
                let child = format!("{path}/{key}");
                match base.get_mut(&key) {
                    Some(slot) => overlay(slot, value, &child),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, user) => *base = user,
    }
}

/// Checks a pod condition type: a qualified name, `[prefix/]name`, as the API server does for
/// `readinessGates[].conditionType`. A gate the API would refuse would block the pod.
pub fn check_condition_type(value: &str) -> Result<(), String> {
    let (prefix, name) = match value.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, value),
    };
    if name.is_empty() || name.len() > 63 {
        return Err("the name part must be 1 to 63 characters".to_owned());
    }
    let name_ok = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    if !name_ok {
        return Err("the name part must be alphanumeric, '-', '_' or '.', \
                    starting and ending alphanumeric"
            .to_owned());
    }
    if let Some(prefix) = prefix {
        let prefix_ok = !prefix.is_empty()
            && prefix.len() <= 253
            && prefix.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            });
        if !prefix_ok {
            return Err("the prefix must be a DNS subdomain".to_owned());
        }
    }
    Ok(())
}

/// The policies known to gracegate, and the choice among them.
#[derive(Clone, Debug, Default)]
pub struct PolicySet {
    /// Sorted by descending priority, then name, so the first match wins.
    policies: Vec<GracePolicy>,
}

/// The policy chosen for a namespace, and why.
#[derive(Clone, Copy, Debug)]
pub struct Selected<'a> {
    /// The policy that applies.
    pub policy: &'a GracePolicy,
    /// A problem worth a warning (a `gracegate.io/policy` label naming no policy).
    pub warning: Option<&'static str>,
}

impl PolicySet {
    /// Builds a set, refusing two policies of the same name.
    pub fn new(mut policies: Vec<GracePolicy>) -> Result<Self, PolicyError> {
        policies.sort_by(|a, b| {
            b.spec
                .priority
                .cmp(&a.spec.priority)
                .then(a.name().cmp(b.name()))
        });
        let mut names: Vec<&str> = policies.iter().map(GracePolicy::name).collect();
        names.sort_unstable();
        if let Some(pair) = names.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(PolicyError::Duplicate(pair[0].to_owned()));
        }
        Ok(Self { policies })
    }

    /// The policies, highest priority first.
    pub fn policies(&self) -> &[GracePolicy] {
        &self.policies
    }

    /// Chooses the policy for a namespace with these labels: the one its
    /// `gracegate.io/policy` label names, else the highest-priority policy whose
    /// `namespaceSelector` matches, else `fallback` (the built-in defaults).
    pub fn select<'a>(
        &'a self,
        namespace_labels: &BTreeMap<String, String>,
        fallback: &'a GracePolicy,
    ) -> Selected<'a> {
        let mut warning = None;
        if let Some(wanted) = namespace_labels.get(POLICY_LABEL) {
            match self.policies.iter().find(|policy| policy.name() == wanted) {
                Some(policy) => {
                    return Selected {
                        policy,
                        warning: None,
                    };
                }
                None => warning = Some("the namespace's gracegate.io/policy names no GracePolicy"),
            }
        }
        let policy = self
            .policies
            .iter()
            .find(|policy| selector::matches(&policy.spec.namespace_selector, namespace_labels))
            .unwrap_or(fallback);
        Selected { policy, warning }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn policy(spec: Value) -> Result<GracePolicy, PolicyError> {
        GracePolicy::from_value(json!({
            "apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": "p"}, "spec": spec
        }))
    }

    #[test]
    fn builtin_matches_the_spec() {
        let builtin = GracePolicy::builtin();
        let spec = &builtin.spec;
        assert_eq!(builtin.name(), "default");
        assert_eq!(spec.mode, Mode::Enforce);
        assert_eq!((spec.pre_stop.enabled, spec.pre_stop.seconds), (true, 10));
        assert_eq!(spec.pre_stop.action, PreStopAction::Auto);
        assert_eq!(spec.shutdown.seconds, 20);
        assert_eq!(spec.probes.port, ProbePort::Auto);
        let r = &spec.probes.readiness;
        assert_eq!(
            (
                r.enabled,
                r.period_seconds,
                r.timeout_seconds,
                r.failure_threshold
            ),
            (true, 5, 1, 3)
        );
        let s = &spec.probes.startup;
        assert_eq!(
            (
                s.enabled,
                s.period_seconds,
                s.timeout_seconds,
                s.failure_threshold
            ),
            (true, 2, 1, 60)
        );
        let l = &spec.probes.liveness;
        assert_eq!(
            (
                l.enabled,
                l.period_seconds,
                l.timeout_seconds,
                l.failure_threshold
            ),
            (false, 10, 1, 3)
        );
        assert_eq!(spec.readiness_gates.alb.enabled, AlbGates::Auto);
        assert_eq!(spec.readiness_gates.alb.pre_stop_seconds, 30);
        assert!(spec.readiness_gates.extra.is_empty());
        assert_eq!(spec.skip.owner_kinds, ["Job", "CronJob"]);
        assert_eq!(spec.skip.containers, ["istio-proxy", "linkerd-proxy"]);
    }

    #[test]
    fn partial_policy_keeps_per_probe_defaults() {
        let p = policy(json!({"probes": {"liveness": {"enabled": true}}})).unwrap();
        assert!(p.spec.probes.liveness.enabled);
        assert_eq!(p.spec.probes.liveness.period_seconds, 10);
        assert_eq!(p.spec.probes.startup.failure_threshold, 60);
        assert_eq!(p.spec.pre_stop.seconds, 10);
    }

    #[test]
    fn selector_is_replaced_not_merged() {
        let p = policy(json!({"namespaceSelector": {"matchLabels": {"team": "a"}}})).unwrap();
        let labels = p.spec.namespace_selector.match_labels.unwrap();
        assert_eq!(labels.len(), 1);
        assert_eq!(labels["team"], "a");
    }

    #[test]
    fn invalid_values_are_named() {
        let table = [
            (
                json!({"preStop": {"seconds": -1}}),
                "spec.preStop.seconds must be between 0 and 600, got -1",
            ),
            (
                json!({"preStop": {"seconds": 3601}}),
                "spec.preStop.seconds",
            ),
            (
                json!({"shutdown": {"seconds": -5}}),
                "spec.shutdown.seconds must be between 0 and 3600",
            ),
            (
                json!({"probes": {"readiness": {"handler": "Grpc"}}}),
                "unknown variant `Grpc`",
            ),
            (
                json!({"probes": {"startup": {"handler": "HTTPGet"}}}),
                "spec.probes.startup.handler HTTPGet needs a path",
            ),
            (
                json!({"probes": {"readiness": {"periodSeconds": 0}}}),
                "spec.probes.readiness.periodSeconds must be at least 1",
            ),
            (
                json!({"probes": {"liveness": {"path": "healthz"}}}),
                "spec.probes.liveness.path must start with /",
            ),
            (
                json!({"probes": {"port": 70000}}),
                "port 70000 is outside 1-65535",
            ),
            (json!({"probes": {"port": "Not_A_Port"}}), "neither Auto"),
            (json!({"mode": "Dry"}), "unknown variant `Dry`"),
            (
                json!({"readinessGates": {"extra": ["bad gate"]}}),
                "spec.readinessGates.extra",
            ),
            (
                json!({"readinessGates": {"alb": {"enabled": "yes"}}}),
                "must be Auto, true or false",
            ),
            (json!({"preStp": {}}), "unknown field `preStp`"),
            (
                json!({"namespaceSelector": {"matchExpressions": [{"key": "a", "operator": "In", "values": []}]}}),
                "needs values",
            ),
        ];
        for (spec, expected) in table {
            let error = policy(spec.clone()).unwrap_err().to_string();
            assert!(
                error.contains(expected),
                "{spec}: {error} lacks {expected:?}"
            );
        }
    }

    #[test]
    fn wrong_kind_is_refused() {
        let error =
            GracePolicy::from_value(json!({"apiVersion": "v1", "kind": "ConfigMap"})).unwrap_err();
        assert!(matches!(error, PolicyError::WrongType { .. }));
    }

    #[test]
    fn selection_by_label_priority_and_name() {
        let named = |name: &str, priority: i32, labels: Value| {
            GracePolicy::from_value(json!({
                "apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name},
                "spec": {"priority": priority, "namespaceSelector": {"matchLabels": labels}}
            }))
            .unwrap()
        };
        let set = PolicySet::new(vec![
            named("b-low", 0, json!({"team": "a"})),
            named("a-low", 0, json!({"team": "a"})),
            named("high", 5, json!({"tier": "web"})),
            named("pinned", -10, json!({"never": "matches"})),
        ])
        .unwrap();
        let builtin = GracePolicy::builtin();
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let table = [
            (labels(&[("team", "a")]), "a-low", false),
            (labels(&[("team", "a"), ("tier", "web")]), "high", false),
            (
                labels(&[("team", "a"), (POLICY_LABEL, "pinned")]),
                "pinned",
                false,
            ),
            (
                labels(&[("team", "a"), (POLICY_LABEL, "missing")]),
                "a-low",
                true,
            ),
            (labels(&[("other", "x")]), "default", false),
        ];
        for (ns, expected, warned) in table {
            let selected = set.select(&ns, &builtin);
            assert_eq!(selected.policy.name(), expected, "{ns:?}");
            assert_eq!(selected.warning.is_some(), warned, "{ns:?}");
        }
    }

    #[test]
    fn duplicate_names_are_refused() {
        let p = GracePolicy::builtin();
        assert!(matches!(
            PolicySet::new(vec![p.clone(), p]),
            Err(PolicyError::Duplicate(_))
        ));
    }

    #[test]
    fn condition_types() {
        assert!(
            check_condition_type("target-health.elbv2.k8s.aws/k8s-default-web-0123456789").is_ok()
        );
        assert!(check_condition_type("example.com/ready").is_ok());
        assert!(check_condition_type("Ready").is_ok());
        assert!(check_condition_type(&format!("a.b/{}", "x".repeat(64))).is_err());
        assert!(check_condition_type("UPPER.com/x").is_err());
        assert!(check_condition_type("a/-x").is_err());
    }
}
