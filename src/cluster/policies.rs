//! The GracePolicies in force: those of `--policy-file` and those of the cluster, with the
//! last valid version of each cluster policy kept when a later version is invalid (SPEC §2),
//! and the `Valid` status condition that tells users why a policy was rejected.
//!
//! Pure: documents in, a [`PolicySet`] and one [`Verdict`] per cluster policy out.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

use crate::policy::{GracePolicy, PolicyError, PolicySet};

/// Type of the status condition gracegate writes on a GracePolicy.
pub const VALID_CONDITION: &str = "Valid";

/// What gracegate made of one cluster GracePolicy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The policy's name.
    pub name: String,
    /// `metadata.generation` of the version judged, when the object has one.
    pub generation: Option<i64>,
    /// Accepted or rejected.
    pub outcome: Outcome,
}

/// Whether a cluster policy is in force.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The policy is valid and in force.
    Accepted {
        /// Whether it shadows a `--policy-file` policy of the same name.
        overrides_file: bool,
    },
    /// The policy is invalid.
    Rejected {
        /// What is wrong with it.
        reason: String,
        /// What applies under its name instead.
        in_force: InForce,
    },
}

/// What applies under the name of a rejected cluster policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InForce {
    /// The last valid version seen since gracegate started.
    Previous,
    /// The `--policy-file` policy of the same name.
    File,
    /// Nothing: no valid version of it was seen since gracegate started.
    Nothing,
}

/// The policies in force after an update, and what changed.
#[derive(Clone, Debug)]
pub struct PolicyReport {
    /// The policies in force: file and cluster policies, one per name.
    pub set: PolicySet,
    /// One verdict per cluster policy, by name.
    pub verdicts: Vec<Verdict>,
    /// The verdicts that differ from the previous update's (a new, edited, rejected or
    /// accepted-again policy), to log once rather than on every update.
    pub changed: Vec<Verdict>,
    /// Cluster policies gone since the previous update.
    pub removed: Vec<String>,
}

impl PolicyReport {
    /// The rejected cluster policies, as (name, reason).
    pub fn rejected(&self) -> Vec<(&str, &str)> {
        self.verdicts
            .iter()
            .filter_map(|verdict| match &verdict.outcome {
                Outcome::Rejected { reason, .. } => Some((verdict.name.as_str(), reason.as_str())),
                Outcome::Accepted { .. } => None,
            })
            .collect()
    }
}

/// The file policies, and the last valid version of each cluster policy.
///
/// A cluster policy and a file policy with the same name: the cluster's wins, and the file's
/// applies again when the cluster's is deleted or when it is invalid with no valid version
/// seen before. The file is set once by whoever deploys gracegate; the cluster's policies are
/// edited live with kubectl, so the cluster copy is the newer statement of intent. Refusing the
/// pair instead would leave a name with no policy over an ordering question. The shadowing is
/// visible in the log and in the cluster policy's `Valid` condition.
#[derive(Clone, Debug)]
pub(crate) struct PolicyBook {
    file: BTreeMap<String, GracePolicy>,
    last_good: BTreeMap<String, GracePolicy>,
    previous: BTreeMap<String, Verdict>,
}

impl PolicyBook {
    /// A book with the `--policy-file` policies (already validated); two with the same name
    /// are refused.
    pub fn new(file_policies: Vec<GracePolicy>) -> Result<Self, PolicyError> {
        // PolicySet::new is the one place that checks names are unique.
        let set = PolicySet::new(file_policies)?;
        Ok(Self {
            file: set
                .policies()
                .iter()
                .map(|policy| (policy.name().to_owned(), policy.clone()))
                .collect(),
            last_good: BTreeMap::new(),
            previous: BTreeMap::new(),
        })
    }

    /// Judges the cluster's current GracePolicy documents (every one of them, not a delta)
    /// and returns the policies in force.
    pub fn update(&mut self, documents: impl IntoIterator<Item = Value>) -> PolicyReport {
        let mut verdicts: BTreeMap<String, Verdict> = BTreeMap::new();
        for document in documents {
            let Some(name) = document
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .map(str::to_owned)
            else {
                // The API server never serves an object without a name.
                continue;
            };
            let generation = document
                .pointer("/metadata/generation")
                .and_then(Value::as_i64);
            let outcome = match GracePolicy::from_value(document) {
                Ok(policy) => {
                    self.last_good.insert(name.clone(), policy);
                    Outcome::Accepted {
                        overrides_file: self.file.contains_key(&name),
                    }
                }
                Err(error) => Outcome::Rejected {
                    reason: error.to_string(),
                    in_force: if self.last_good.contains_key(&name) {
                        InForce::Previous
                    } else if self.file.contains_key(&name) {
                        InForce::File
                    } else {
                        InForce::Nothing
                    },
                },
            };
            verdicts.insert(
                name.clone(),
                Verdict {
                    name,
                    generation,
                    outcome,
                },
            );
        }
        self.last_good.retain(|name, _| verdicts.contains_key(name));

        // A cluster policy replaces the file policy of the same name (see the type's doc for
        // why): file first, cluster over it.
        let mut in_force = self.file.clone();
        in_force.extend(
            self.last_good
                .iter()
                .map(|(name, policy)| (name.clone(), policy.clone())),
        );
        let set = PolicySet::new(in_force.into_values().collect()).unwrap_or_else(|error| {
            unreachable!("policies keyed by name cannot share a name: {error}")
        });

        let changed = verdicts
            .values()
            .filter(|verdict| self.previous.get(&verdict.name) != Some(*verdict))
            .cloned()
            .collect();
        let removed = self
            .previous
            .keys()
            .filter(|name| !verdicts.contains_key(*name))
            .cloned()
            .collect();
        self.previous = verdicts.clone();
        PolicyReport {
            set,
            verdicts: verdicts.into_values().collect(),
            changed,
            removed,
        }
    }
}

/// The `Valid` condition for a verdict: `status`, `reason`, `message`.
fn condition_fields(verdict: &Verdict) -> (&'static str, &'static str, String) {
    match &verdict.outcome {
        Outcome::Accepted {
            overrides_file: false,
        } => ("True", "Accepted", "the policy is in force".to_owned()),
        Outcome::Accepted {
            overrides_file: true,
        } => (
            "True",
            "Accepted",
            "the policy is in force, in place of the --policy-file policy of the same name"
                .to_owned(),
        ),
        Outcome::Rejected { reason, in_force } => {
            let instead = match in_force {
                InForce::Previous => "the last valid version stays in force",
                InForce::File => "the --policy-file policy of the same name stays in force",
                InForce::Nothing => "no version of it is in force",
            };
            ("False", "Invalid", format!("{reason}; {instead}"))
        }
    }
}

/// The JSON merge patch for the policy's `status` subresource that records the verdict as its
/// `Valid` condition, or `None` when `current_status` (the object's `status`) already says
/// so. Other conditions are kept; `lastTransitionTime` moves only when the condition's status
/// changes.
pub fn status_patch(
    verdict: &Verdict,
    current_status: Option<&Value>,
    now: Timestamp,
) -> Option<Value> {
    let (status, reason, message) = condition_fields(verdict);
    let conditions: Vec<Value> = current_status
        .and_then(|status| status.get("conditions"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let existing = conditions
        .iter()
        .find(|condition| condition.get("type").and_then(Value::as_str) == Some(VALID_CONDITION));
    let text = |condition: &Value, field: &str| {
        condition
            .get(field)
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    if let Some(existing) = existing {
        let same = text(existing, "status").as_deref() == Some(status)
            && text(existing, "reason").as_deref() == Some(reason)
            && text(existing, "message").as_deref() == Some(message.as_str())
            && existing.get("observedGeneration").and_then(Value::as_i64) == verdict.generation;
        if same {
            return None;
        }
    }
    let transition_time = existing
        .filter(|existing| text(existing, "status").as_deref() == Some(status))
        .and_then(|existing| existing.get("lastTransitionTime").cloned())
        .unwrap_or_else(|| json!(Time(now)));
    let mut condition = json!({
        "type": VALID_CONDITION,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": transition_time,
    });
    if let Some(generation) = verdict.generation {
        condition["observedGeneration"] = json!(generation);
    }
    let mut conditions: Vec<Value> = conditions
        .into_iter()
        .filter(|condition| condition.get("type").and_then(Value::as_str) != Some(VALID_CONDITION))
        .collect();
    conditions.push(condition);
    Some(json!({"status": {"conditions": conditions}}))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::policy::{API_VERSION, KIND};

    fn document(name: &str, generation: i64, spec: Value) -> Value {
        json!({
            "apiVersion": API_VERSION, "kind": KIND,
            "metadata": {"name": name, "generation": generation, "resourceVersion": "1"},
            "spec": spec,
        })
    }

    fn file_policy(name: &str, seconds: i64) -> GracePolicy {
        GracePolicy::from_value(document(name, 1, json!({"preStop": {"seconds": seconds}})))
            .unwrap()
    }

    fn prestop_of(report: &PolicyReport, name: &str) -> Option<i64> {
        report
            .set
            .policies()
            .iter()
            .find(|policy| policy.name() == name)
            .map(|policy| policy.spec.pre_stop.seconds)
    }

    #[test]
    fn the_last_good_version_stays_in_force() {
        let mut book = PolicyBook::new(Vec::new()).unwrap();
        let good = document("web", 1, json!({"preStop": {"seconds": 15}}));
        let bad = document("web", 2, json!({"preStop": {"seconds": -1}}));
        let fixed = document("web", 3, json!({"preStop": {"seconds": 25}}));

        let report = book.update([good]);
        assert_eq!(prestop_of(&report, "web"), Some(15));
        assert!(report.rejected().is_empty());

        let report = book.update([bad.clone()]);
        assert_eq!(prestop_of(&report, "web"), Some(15), "generation 1 stays");
        let rejected = report.rejected();
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].0, "web");
        assert!(
            rejected[0]
                .1
                .contains("spec.preStop.seconds must be between 0 and 600, got -1"),
            "{}",
            rejected[0].1
        );
        assert_eq!(
            report.verdicts[0].outcome,
            Outcome::Rejected {
                reason: rejected[0].1.to_owned(),
                in_force: InForce::Previous
            }
        );
        assert_eq!(report.changed.len(), 1, "the rejection is news");

        let report = book.update([bad]);
        assert!(report.changed.is_empty(), "the same rejection is not news");
        assert_eq!(prestop_of(&report, "web"), Some(15));

        let report = book.update([fixed]);
        assert_eq!(prestop_of(&report, "web"), Some(25));
        assert_eq!(report.changed.len(), 1);
        assert!(report.rejected().is_empty());
    }

    #[test]
    fn an_invalid_policy_never_seen_valid_is_not_in_force() {
        let mut book = PolicyBook::new(Vec::new()).unwrap();
        let report = book.update([
            document("broken", 1, json!({"mode": "Dry"})),
            document("ok", 1, json!({})),
        ]);
        let names: Vec<_> = report
            .set
            .policies()
            .iter()
            .map(GracePolicy::name)
            .collect();
        assert_eq!(names, ["ok"]);
        assert_eq!(report.rejected().len(), 1);
        assert!(report.rejected()[0].1.contains("unknown variant `Dry`"));
        assert!(matches!(
            report.verdicts[0].outcome,
            Outcome::Rejected {
                in_force: InForce::Nothing,
                ..
            }
        ));
    }

    #[test]
    fn a_cluster_policy_overrides_the_file_policy_of_the_same_name() {
        let mut book =
            PolicyBook::new(vec![file_policy("default", 5), file_policy("file-only", 7)]).unwrap();
        let report = book.update([document("default", 1, json!({"preStop": {"seconds": 40}}))]);
        assert_eq!(prestop_of(&report, "default"), Some(40));
        assert_eq!(prestop_of(&report, "file-only"), Some(7));
        assert_eq!(report.set.policies().len(), 2);
        assert_eq!(
            report.verdicts[0].outcome,
            Outcome::Accepted {
                overrides_file: true
            }
        );

        // Invalid while a valid cluster version was seen: that version stays.
        let report = book.update([document(
            "default",
            2,
            json!({"preStop": {"seconds": 9999}}),
        )]);
        assert_eq!(prestop_of(&report, "default"), Some(40));

        // Deleted: the file's applies again.
        let report = book.update([]);
        assert_eq!(prestop_of(&report, "default"), Some(5));
        assert_eq!(report.removed, ["default"]);
        assert!(report.verdicts.is_empty());
    }

    #[test]
    fn an_invalid_cluster_policy_falls_back_to_the_file_one() {
        let mut book = PolicyBook::new(vec![file_policy("default", 5)]).unwrap();
        let report = book.update([document("default", 1, json!({"shutdown": {"seconds": -3}}))]);
        assert_eq!(prestop_of(&report, "default"), Some(5));
        assert!(matches!(
            report.verdicts[0].outcome,
            Outcome::Rejected {
                in_force: InForce::File,
                ..
            }
        ));
    }

    #[test]
    fn a_deleted_policy_does_not_come_back_as_last_good() {
        let mut book = PolicyBook::new(Vec::new()).unwrap();
        book.update([document("web", 1, json!({}))]);
        book.update([]);
        let report = book.update([document("web", 5, json!({"mode": "Nope"}))]);
        assert!(report.set.policies().is_empty());
        assert!(matches!(
            report.verdicts[0].outcome,
            Outcome::Rejected {
                in_force: InForce::Nothing,
                ..
            }
        ));
    }

    #[test]
    fn duplicate_file_policies_are_refused() {
        assert!(matches!(
            PolicyBook::new(vec![file_policy("a", 1), file_policy("a", 2)]),
            Err(PolicyError::Duplicate(name)) if name == "a"
        ));
    }

    #[test]
    fn an_edit_that_stays_valid_is_reported_once() {
        let mut book = PolicyBook::new(Vec::new()).unwrap();
        assert_eq!(
            book.update([document("web", 1, json!({}))]).changed.len(),
            1
        );
        assert!(
            book.update([document("web", 1, json!({}))])
                .changed
                .is_empty()
        );
        let report = book.update([document("web", 2, json!({"priority": 3}))]);
        assert_eq!(report.changed.len(), 1);
        assert_eq!(report.changed[0].generation, Some(2));
    }

    fn now() -> Timestamp {
        "2025-01-02T03:04:05Z".parse().unwrap()
    }

    fn rejected(generation: i64) -> Verdict {
        Verdict {
            name: "web".to_owned(),
            generation: Some(generation),
            outcome: Outcome::Rejected {
                reason: "policy web: spec.shutdown.seconds must be between 0 and 3600, got -3"
                    .to_owned(),
                in_force: InForce::Previous,
            },
        }
    }

    #[test]
    fn status_patch_records_a_rejection() {
        let other = json!({"type": "Other", "status": "True"});
        let current = json!({"conditions": [other]});
        let patch = status_patch(&rejected(4), Some(&current), now()).unwrap();
        assert_eq!(
            patch,
            json!({"status": {"conditions": [other, {
                "type": "Valid",
                "status": "False",
                "reason": "Invalid",
                "message": "policy web: spec.shutdown.seconds must be between 0 and 3600, got -3; \
                            the last valid version stays in force",
                "lastTransitionTime": "2025-01-02T03:04:05Z",
                "observedGeneration": 4,
            }]}})
        );
        // Once written, nothing more to write.
        assert_eq!(
            status_patch(&rejected(4), Some(&patch["status"]), now()),
            None
        );
    }

    #[test]
    fn status_patch_keeps_the_transition_time_while_the_status_holds() {
        let current = status_patch(&rejected(4), None, now()).unwrap();
        let later: Timestamp = "2025-02-01T00:00:00Z".parse().unwrap();
        // A new generation, still invalid: same status, so the same transition time.
        let patch = status_patch(&rejected(5), Some(&current["status"]), later).unwrap();
        let condition = &patch["status"]["conditions"][0];
        assert_eq!(condition["observedGeneration"], 5);
        assert_eq!(condition["lastTransitionTime"], "2025-01-02T03:04:05Z");
        // Accepted again: the status flips and the time moves.
        let accepted = Verdict {
            outcome: Outcome::Accepted {
                overrides_file: false,
            },
            ..rejected(6)
        };
        let patch = status_patch(&accepted, Some(&patch["status"]), later).unwrap();
        let condition = &patch["status"]["conditions"][0];
        assert_eq!(condition["status"], "True");
        assert_eq!(condition["reason"], "Accepted");
        assert_eq!(condition["message"], "the policy is in force");
        assert_eq!(condition["lastTransitionTime"], "2025-02-01T00:00:00Z");
        assert_eq!(patch["status"]["conditions"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn status_patch_without_generation_leaves_it_out() {
        let verdict = Verdict {
            generation: None,
            ..rejected(1)
        };
        let patch = status_patch(&verdict, None, now()).unwrap();
        assert!(
            patch["status"]["conditions"][0]
                .get("observedGeneration")
                .is_none()
        );
        assert_eq!(status_patch(&verdict, Some(&patch["status"]), now()), None);
    }
}
