//! Kubernetes label selectors: `matchLabels` and `matchExpressions` with the operators
//! `In`, `NotIn`, `Exists` and `DoesNotExist`, as the API server evaluates them.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Checks that a selector can be evaluated: known operators, values only where they belong.
pub fn validate(selector: &LabelSelector) -> Result<(), String> {
    for expression in selector.match_expressions.iter().flatten() {
        let values = expression.values.as_deref().unwrap_or_default();
        match expression.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                return Err(format!(
                    "operator {} on key {:?} needs values",
                    expression.operator, expression.key
                ));
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                return Err(format!(
                    "operator {} on key {:?} takes no values",
                    expression.operator, expression.key
                ));
            }
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => {
                return Err(format!(
                    "unknown operator {other:?} on key {:?}",
                    expression.key
                ));
            }
        }
    }
    Ok(())
}

/// Whether `labels` satisfy `selector`. An empty selector matches everything; an invalid
/// expression (see [`validate`]) matches nothing.
pub fn matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_match = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(key, value)| labels.get(key) == Some(value));
    labels_match
        && selector
            .match_expressions
            .iter()
            .flatten()
            .all(|expression| {
                let values = expression.values.as_deref().unwrap_or_default();
                let value = labels.get(&expression.key);
                match expression.operator.as_str() {
                    "In" => value.is_some_and(|value| values.contains(value)),
                    "NotIn" => value.is_none_or(|value| !values.contains(value)),
                    "Exists" => value.is_some(),
                    "DoesNotExist" => value.is_none(),
                    _ => false,
                }
            })
}

/// Whether every key/value of a Service-style equality `selector` is among `labels`.
/// An empty selector selects nothing here: a Service without a selector has its endpoints
/// managed by hand and says nothing about which pods are behind it.
pub fn service_selects(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    !selector.is_empty()
        && selector
            .iter()
            .all(|(key, value)| labels.get(key) == Some(value))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn selector(value: serde_json::Value) -> LabelSelector {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn table() {
        let labels: BTreeMap<String, String> = [("env", "prod"), ("tier", "web")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let table = [
            (json!({}), true),
            (json!({"matchLabels": {"env": "prod"}}), true),
            (json!({"matchLabels": {"env": "dev"}}), false),
            (
                json!({"matchExpressions": [{"key": "env", "operator": "In", "values": ["dev", "prod"]}]}),
                true,
            ),
            (
                json!({"matchExpressions": [{"key": "env", "operator": "In", "values": ["dev"]}]}),
                false,
            ),
            (
                json!({"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["dev"]}]}),
                true,
            ),
            (
                json!({"matchExpressions": [{"key": "absent", "operator": "NotIn", "values": ["x"]}]}),
                true,
            ),
            (
                json!({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}),
                true,
            ),
            (
                json!({"matchExpressions": [{"key": "absent", "operator": "Exists"}]}),
                false,
            ),
            (
                json!({"matchExpressions": [{"key": "absent", "operator": "DoesNotExist"}]}),
                true,
            ),
            (
                json!({"matchExpressions": [{"key": "env", "operator": "DoesNotExist"}]}),
                false,
            ),
            (
                json!({"matchLabels": {"env": "prod"}, "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["web"]}]}),
                false,
            ),
            (
                json!({"matchExpressions": [{"key": "env", "operator": "Like", "values": ["prod"]}]}),
                false,
            ),
        ];
        for (raw, expected) in table {
            assert_eq!(matches(&selector(raw.clone()), &labels), expected, "{raw}");
        }
    }

    #[test]
    fn validation() {
        assert!(
            validate(&selector(
                json!({"matchExpressions": [{"key": "a", "operator": "Exists"}]})
            ))
            .is_ok()
        );
        assert!(
            validate(&selector(
                json!({"matchExpressions": [{"key": "a", "operator": "In"}]})
            ))
            .is_err()
        );
        assert!(
            validate(&selector(
                json!({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]})
            ))
            .is_err()
        );
        assert!(
            validate(&selector(
                json!({"matchExpressions": [{"key": "a", "operator": "Like", "values": ["x"]}]})
            ))
            .is_err()
        );
    }

    #[test]
    fn service_selector_must_be_non_empty() {
        let labels: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
        assert!(service_selects(&labels.clone(), &labels));
        assert!(!service_selects(&BTreeMap::new(), &labels));
    }
}
