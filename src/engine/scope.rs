//! What the engine leaves alone: opted-out, mirror and batch pods; init, ephemeral and
//! listed containers.

use std::fmt;

use serde_json::Value;

use super::settings::{self, Settings};
use super::{Context, EngineError, Target, Warnings};
use crate::policy::PolicySpec;

/// Annotation the kubelet puts on the API copy of a static pod.
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// Why a pod was left alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// `gracegate.io/inject: disabled` on the pod (annotation or label) or its namespace.
    OptedOut,
    /// A mirror pod: the kubelet owns its spec.
    MirrorPod,
    /// Owned by a kind listed in `skip.ownerKinds`.
    Owner(String),
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OptedOut => f.write_str("opted out with gracegate.io/inject=disabled"),
            Self::MirrorPod => f.write_str("mirror pod"),
            Self::Owner(kind) => write!(f, "owned by a {kind}"),
        }
    }
}

/// Why the whole pod is left alone, if it is.
pub(crate) fn skip_pod(
    pod: &Value,
    annotations: Option<&Value>,
    labels: Option<&Value>,
    context: &Context<'_>,
) -> Option<SkipReason> {
    let annotation = |key: &str| annotations.and_then(|map| map.get(key));
    let pod_inject = annotation(settings::INJECT).and_then(Value::as_str);
    let namespace_inject = context
        .namespace
        .annotations
        .get(settings::INJECT)
        .map(String::as_str);
    let label_inject = labels
        .and_then(|map| map.get(settings::INJECT))
        .and_then(Value::as_str);
    if settings::opted_out(pod_inject.or(namespace_inject)) || settings::opted_out(label_inject) {
        return Some(SkipReason::OptedOut);
    }
    if annotation(MIRROR_ANNOTATION).is_some() {
        return Some(SkipReason::MirrorPod);
    }
    let skip_kinds = &context.policy.spec.skip.owner_kinds;
    owner_kinds(pod, context.workload_kind)
        .find(|kind| skip_kinds.iter().any(|skip| skip == kind))
        .map(|kind| SkipReason::Owner(kind.to_owned()))
}

/// The kinds that own the pod: its ownerReferences, or for a template the chain from its
/// workload (a CronJob's pods belong to a Job, a Deployment's to a ReplicaSet).
fn owner_kinds<'a>(
    pod: &'a Value,
    workload_kind: Option<&'a str>,
) -> impl Iterator<Item = &'a str> {
    let references = pod
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|reference| reference.get("kind")?.as_str());
    let implied: &'static [&'static str] = match workload_kind {
        Some("CronJob") => &["Job"],
        Some("Deployment") => &["ReplicaSet"],
        _ => &[],
    };
    references
        .chain(workload_kind)
        .chain(implied.iter().copied())
}

/// The containers the engine looks after: the pod's list when `gracegate.io/containers`
/// gives one (native sidecars included), else every regular container not in
/// `skip.containers`.
pub(crate) fn containers<'a>(
    spec: &'a Value,
    settings: &Settings<'a>,
    policy: &PolicySpec,
    warnings: &mut Warnings,
) -> Result<Vec<Target<'a>>, EngineError> {
    let regular = list(spec, "containers")?
        .ok_or_else(|| EngineError::Malformed("spec.containers is missing".to_owned()))?;
    let init = list(spec, "initContainers")?.unwrap_or_default();
    let Some(wanted) = &settings.containers else {
        return Ok(regular
            .into_iter()
            .filter(|target| {
                !policy
                    .skip
                    .containers
                    .iter()
                    .any(|skip| skip == target.name)
            })
            .collect());
    };
    let sidecars = init.into_iter().filter(|target| {
        target
            .container
            .get("restartPolicy")
            .and_then(Value::as_str)
            == Some("Always")
    });
    let chosen: Vec<Target<'a>> = regular
        .into_iter()
        .chain(sidecars)
        .filter(|target| wanted.contains(&target.name))
        .collect();
    for name in wanted {
        if !chosen.iter().any(|target| target.name == *name) {
            warnings.push_fmt(format_args!(
                "gracegate.io/containers names {name:?}, which is not a container or native sidecar"
            ));
        }
    }
    Ok(chosen)
}

fn list<'a>(spec: &'a Value, key: &'static str) -> Result<Option<Vec<Target<'a>>>, EngineError> {
    let Some(items) = spec.get(key).filter(|items| !items.is_null()) else {
        return Ok(None);
    };
    let items = items
        .as_array()
        .ok_or_else(|| EngineError::Malformed(format!("spec.{key} is not a list")))?;
    items
        .iter()
        .enumerate()
        .map(|(index, container)| {
            let name = container
                .as_object()
                .and_then(|fields| fields.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    EngineError::Malformed(format!("spec.{key}[{index}] has no name"))
                })?;
            Ok(Target {
                list: key,
                index,
                name,
                container,
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}
