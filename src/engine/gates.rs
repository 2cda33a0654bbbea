//! Readiness gates: the AWS Load Balancer Controller's `target-health.elbv2.k8s.aws/<TGB>`
//! for pods behind an `ip` TargetGroupBinding, plus the policy's `extra` gates.

use serde_json::Value;

use super::{AlbLookup, Context, Warnings};
use crate::policy::{AlbGates, check_condition_type};
use crate::selector::service_selects;
use crate::view::string_map;

/// Prefix of the ALB controller's readiness gates.
pub const ALB_GATE_PREFIX: &str = "target-health.elbv2.k8s.aws/";
/// Namespace label that turns ALB gates on.
pub const ALB_LABEL: &str = "gracegate.io/alb-readiness-gates";
/// The AWS Load Balancer Controller's own label, honoured as an alias.
pub const AWS_ALB_LABEL: &str = "elbv2.k8s.aws/pod-readiness-gate-inject";

/// The gates a pod gets.
#[derive(Debug, Default)]
pub(crate) struct GatePlan {
    /// Condition types to add, in order, none already on the pod.
    pub add: Vec<String>,
    /// Whether the pod is behind an ALB (a gate it has or gets).
    pub behind_alb: bool,
    /// Whether the ALB lookup failed.
    pub lookup_failed: bool,
}

/// Works out the gates for a pod.
pub(crate) fn plan(
    spec: &Value,
    labels: Option<&Value>,
    context: &Context<'_>,
    warnings: &mut Warnings,
) -> GatePlan {
    let existing: Vec<&str> = spec
        .get("readinessGates")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|gate| gate.get("conditionType")?.as_str())
        .collect();
    let mut plan = GatePlan::default();
    let mut wanted: Vec<String> = Vec::new();
    if alb_enabled(context) {
        match context.alb {
            AlbLookup::Unavailable(reason) => {
                plan.lookup_failed = true;
                warnings.push_fmt(format_args!(
                    "ALB gates not injected: lookup failed: {reason}"
                ));
            }
            AlbLookup::Known(objects) => {
                let labels = string_map(labels);
                let mut bindings: Vec<_> = objects
                    .bindings
                    .iter()
                    .filter(|binding| binding.target_type.as_deref() == Some("ip"))
                    .filter(|binding| {
                        objects.services.iter().any(|service| {
                            service.name == binding.service_name
                                && service_selects(&service.selector, &labels)
                        })
                    })
                    .collect();
                bindings.sort_by(|a, b| a.name.cmp(&b.name));
                for binding in bindings {
                    let gate = format!("{ALB_GATE_PREFIX}{}", binding.name);
                    match check_condition_type(&gate) {
                        Ok(()) => wanted.push(gate),
                        // The reason first: a name long enough to fail is cut from the end.
                        Err(reason) => warnings.push_fmt(format_args!(
                            "no ALB gate: {reason}, in TargetGroupBinding {:?}",
                            binding.name
                        )),
                    }
                }
            }
        }
    }
    wanted.extend(context.policy.spec.readiness_gates.extra.iter().cloned());
    for gate in wanted {
        if !existing.contains(&gate.as_str()) && !plan.add.contains(&gate) {
            plan.add.push(gate);
        }
    }
    plan.behind_alb = existing
        .iter()
        .copied()
        .chain(plan.add.iter().map(String::as_str))
        .any(|gate| gate.starts_with(ALB_GATE_PREFIX));
    plan
}

fn alb_enabled(context: &Context<'_>) -> bool {
    match context.policy.spec.readiness_gates.alb.enabled {
        AlbGates::Always => true,
        AlbGates::Never => false,
        AlbGates::Auto => {
            let labels = &context.namespace.labels;
            [ALB_LABEL, AWS_ALB_LABEL]
                .iter()
                .any(|key| labels.get(*key).map(String::as_str) == Some("enabled"))
        }
    }
}
