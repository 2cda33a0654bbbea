//! The mutation engine: a pod (as received, raw JSON) and its context in; JSON Patch
//! operations, warnings and a summary out. No I/O, no clock, no globals.
//!
//! The rules (SPEC §3), each in its own module:
//! - [`settings`]: pod and namespace annotations over the policy;
//! - [`scope`]: which pods and containers are left alone;
//! - [`probes`]: readiness, startup and liveness probes where missing;
//! - [`lifecycle`]: the preStop sleep and the grace period;
//! - [`gates`]: ALB and extra readiness gates.
//!
//! The engine reads only the paths it needs and patches only the paths it changes, so fields
//! unknown to any typed model pass through untouched.

mod gates;
mod lifecycle;
mod probes;
mod scope;
mod settings;

use std::fmt::Write as _;

use json_patch::Patch;
use serde_json::Value;

use crate::patch::{PatchBuilder, PathError, Step};
use crate::policy::{GracePolicy, Mode};
use crate::view::{AlbObjects, NamespaceView};

pub use lifecycle::own_sleep_seconds;
pub use scope::SkipReason;

/// Annotation that records what gracegate changed.
pub const MUTATED_ANNOTATION: &str = "gracegate.io/mutated";
/// Longest warning, in characters: the API server asks for at most 120.
pub const MAX_WARNING_CHARS: usize = 120;

/// How an injected preStop sleeps when the policy says `Auto`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreStopStyle {
    /// `lifecycle.preStop.sleep` (Kubernetes ≥ 1.30).
    NativeSleep,
    /// `lifecycle.preStop.exec: [sleep, N]`.
    Exec,
}

impl PreStopStyle {
    /// The style a cluster of this `major.minor` version supports: native from 1.30 on.
    pub fn for_version(major: u32, minor: u32) -> Self {
        if (major, minor) >= (1, 30) {
            Self::NativeSleep
        } else {
            Self::Exec
        }
    }
}

/// The ALB objects of the pod's namespace, or why they are not known.
#[derive(Clone, Copy, Debug)]
pub enum AlbLookup<'a> {
    /// The Services and TargetGroupBindings of the namespace.
    Known(&'a AlbObjects),
    /// The lookup failed; gates are not injected, everything else is.
    Unavailable(&'a str),
}

/// Everything besides the pod that the engine consults.
#[derive(Clone, Copy, Debug)]
pub struct Context<'a> {
    /// The pod's namespace (from `request.namespace`, never the pod's metadata).
    pub namespace: &'a NamespaceView,
    /// The policy that applies.
    pub policy: &'a GracePolicy,
    /// A problem with the policy choice, passed on as a warning.
    pub policy_warning: Option<&'a str>,
    /// The namespace's Services and TargetGroupBindings.
    pub alb: AlbLookup<'a>,
    /// The preStop handler the cluster supports.
    pub prestop_style: PreStopStyle,
    /// When the pod is a template, the kind of its workload (`Deployment`, `CronJob`, ...).
    pub workload_kind: Option<&'a str>,
}

/// What a pod is missing, as applied (Enforce) or reported (Audit).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Mutation {
    /// The operations, relative to the pod. Empty in Audit mode and for a pod that needs
    /// nothing.
    pub patch: Patch,
    /// Short messages (at most [`MAX_WARNING_CHARS`]) for the user.
    pub warnings: Vec<String>,
    /// What changed, or would change.
    pub summary: Summary,
}

/// What the engine did to a pod.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    /// Name of the policy that applied.
    pub policy: String,
    /// Why the pod was left alone, if it was.
    pub skipped: Option<SkipReason>,
    /// Whether the policy is in Audit mode (nothing applied).
    pub audit: bool,
    /// Per-container changes, in container order; containers without changes are absent.
    pub containers: Vec<ContainerChanges>,
    /// The grace period, before (`None` when unset) and after, when it was raised.
    pub grace: Option<(Option<i64>, i64)>,
    /// Readiness gates added.
    pub gates: Vec<String>,
    /// Whether the ALB lookup failed.
    pub alb_lookup_failed: bool,
}

impl Summary {
    /// Whether anything changed (or would, in Audit mode).
    pub fn changed(&self) -> bool {
        !self.containers.is_empty() || self.grace.is_some() || !self.gates.is_empty()
    }

    /// The value of the `gracegate.io/mutated` annotation, e.g.
    /// `app:readiness,startup,prestop;grace:50;gates:1`.
    pub fn record(&self) -> String {
        let mut parts: Vec<String> = self
            .containers
            .iter()
            .map(|container| {
                let changes: Vec<&str> = container
                    .changes
                    .iter()
                    .map(|change| change.label())
                    .collect();
                format!("{}:{}", container.name, changes.join(","))
            })
            .collect();
        if let Some((_, to)) = self.grace {
            parts.push(format!("grace:{to}"));
        }
        if !self.gates.is_empty() {
            parts.push(format!("gates:{}", self.gates.len()));
        }
        parts.join(";")
    }

    /// Each change once, by its metric label (`readiness`, `prestop`, `grace`, `gates`, ...),
    /// with how many times it happened.
    pub fn change_counts(&self) -> Vec<(&'static str, u64)> {
        let mut counts: Vec<(&'static str, u64)> = Vec::new();
        let mut bump =
            |label: &'static str| match counts.iter_mut().find(|(seen, _)| *seen == label) {
                Some((_, count)) => *count += 1,
                None => counts.push((label, 1)),
            };
        for container in &self.containers {
            for change in &container.changes {
                bump(change.label());
            }
        }
        if self.grace.is_some() {
            bump("grace");
        }
        for _ in &self.gates {
            bump("gates");
        }
        counts
    }
}

/// The changes to one container.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerChanges {
    /// The container's name.
    pub name: String,
    /// What it got, in patch order.
    pub changes: Vec<Change>,
}

/// One change to a container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// A readiness probe.
    Readiness,
    /// A startup probe.
    Startup,
    /// A liveness probe.
    Liveness,
    /// A preStop sleep of that many seconds.
    PreStop(i64),
}

impl Change {
    /// The change's name in the annotation and the metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::Readiness => "readiness",
            Self::Startup => "startup",
            Self::Liveness => "liveness",
            Self::PreStop(_) => "prestop",
        }
    }
}

/// A pod the engine cannot work on. The admission layer fails open on it.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A field the engine must read or write has the wrong shape.
    #[error("malformed pod: {0}")]
    Malformed(String),
    /// A path to patch runs through something that is not an object.
    #[error("malformed pod: {0}")]
    Path(#[from] PathError),
}

/// Works out what `pod` is missing under `context`.
pub fn mutate(pod: &Value, context: &Context<'_>) -> Result<Mutation, EngineError> {
    let policy = &context.policy.spec;
    let mut warnings = Warnings::default();
    if let Some(warning) = context.policy_warning {
        warnings.push(warning);
    }
    let mut summary = Summary {
        policy: context.policy.name().to_owned(),
        audit: policy.mode == Mode::Audit,
        ..Summary::default()
    };
    if !pod.is_object() {
        return Err(EngineError::Malformed(
            "the object is not a JSON object".to_owned(),
        ));
    }

    let annotations = pod.pointer("/metadata/annotations");
    let labels = pod.pointer("/metadata/labels");
    if let Some(reason) = scope::skip_pod(pod, annotations, labels, context) {
        summary.skipped = Some(reason);
        return Ok(Mutation {
            patch: Patch::default(),
            warnings: warnings.into_inner(),
            summary,
        });
    }
    let spec = pod
        .get("spec")
        .filter(|spec| spec.is_object())
        .ok_or_else(|| EngineError::Malformed("the pod has no spec".to_owned()))?;
    let settings = settings::resolve(annotations, context, &mut warnings);
    let targets = scope::containers(spec, &settings, policy, &mut warnings)?;

    let mut builder = PatchBuilder::new(pod);
    let gates = gates::plan(spec, labels, context, &mut warnings);
    summary.alb_lookup_failed = gates.lookup_failed;
    let prestop_seconds = settings.prestop_seconds(gates.behind_alb, policy);

    let mut longest_prestop = 0;
    for target in &targets {
        let mut changes = Vec::new();
        probes::inject(
            target,
            &settings,
            policy,
            &mut builder,
            &mut changes,
            &mut warnings,
        )?;
        let sleep = lifecycle::inject_prestop(
            target,
            prestop_seconds,
            settings.prestop_action(policy, context.prestop_style),
            &mut builder,
            &mut changes,
        )?;
        longest_prestop = longest_prestop.max(sleep);
        if !changes.is_empty() {
            summary.containers.push(ContainerChanges {
                name: target.name.to_owned(),
                changes,
            });
        }
    }
    if !targets.is_empty() {
        summary.grace = lifecycle::raise_grace(
            spec,
            longest_prestop + settings.shutdown_seconds,
            &mut builder,
        )?;
    }
    summary.gates = gates.add;
    builder.append(
        &["spec".into(), "readinessGates".into()],
        summary
            .gates
            .iter()
            .map(|gate| serde_json::json!({ "conditionType": gate }))
            .collect(),
    )?;

    let changed = summary.changed();
    if changed {
        builder.set(
            &[
                "metadata".into(),
                "annotations".into(),
                Step::Key(MUTATED_ANNOTATION),
            ],
            Value::String(summary.record()),
        )?;
    }
    let patch = if summary.audit {
        if changed {
            warnings.push(&format!("audit: would set {}", summary.record()));
        }
        Patch::default()
    } else {
        builder.finish()
    };
    Ok(Mutation {
        patch,
        warnings: warnings.into_inner(),
        summary,
    })
}

/// Warnings, each cut to [`MAX_WARNING_CHARS`] and none twice.
#[derive(Debug, Default)]
pub(crate) struct Warnings(Vec<String>);

impl Warnings {
    pub(crate) fn push(&mut self, text: &str) {
        let text = truncate_warning(text);
        if !self.0.contains(&text) {
            self.0.push(text);
        }
    }

    pub(crate) fn push_fmt(&mut self, args: std::fmt::Arguments<'_>) {
        let mut text = String::new();
        let _ = text.write_fmt(args);
        self.push(&text);
    }

    fn into_inner(self) -> Vec<String> {
        self.0
    }
}

/// Cuts `text` to at most [`MAX_WARNING_CHARS`] characters, ending in `…` when cut.
pub fn truncate_warning(text: &str) -> String {
    if text.chars().count() <= MAX_WARNING_CHARS {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(MAX_WARNING_CHARS - 1).collect();
    cut.push('…');
    cut
}

/// A container the engine looks after.
#[derive(Debug)]
pub(crate) struct Target<'a> {
    /// `containers` or `initContainers` (a native sidecar the pod asked for).
    pub list: &'static str,
    pub index: usize,
    pub name: &'a str,
    pub container: &'a Value,
}

impl Target<'_> {
    /// The path of a field of this container.
    pub fn path<'s>(&self, field: &'s str) -> [Step<'s>; 4] {
        [
            Step::Key("spec"),
            Step::Key(self.list),
            Step::Index(self.index),
            Step::Key(field),
        ]
    }
}

#[cfg(test)]
mod tests;
