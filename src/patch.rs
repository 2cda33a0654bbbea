//! Building minimal JSON Patches (RFC 6902) against the document as received.
//!
//! Every operation touches only the path that changes. A missing parent is created by
//! adding it with the new value nested inside, and keys are escaped (`~0`, `~1`) by
//! `jsonptr`. The builder reads the original document only, so callers must not set two
//! paths under the same missing parent; the engine never does (one preStop per lifecycle,
//! one annotation, one readinessGates list).

use json_patch::{AddOperation, Patch, PatchOperation, ReplaceOperation};
use jsonptr::{PointerBuf, Token};
use serde_json::{Map, Value};

/// A path the patch cannot reach.
#[derive(Debug, thiserror::Error)]
#[error("{path} is not {expected}, so {child} cannot be set under it")]
pub struct PathError {
    /// The JSON Pointer of the offending node.
    pub path: String,
    /// What the node would have to be: `an object` or `a list`.
    pub expected: &'static str,
    /// The key that was to be set under it.
    pub child: String,
}

/// One step of a path: an object key or an array index.
#[derive(Clone, Copy, Debug)]
pub enum Step<'a> {
    /// An object member.
    Key(&'a str),
    /// An array element that exists.
    Index(usize),
}

impl<'a> From<&'a str> for Step<'a> {
    fn from(key: &'a str) -> Self {
        Self::Key(key)
    }
}

impl From<usize> for Step<'_> {
    fn from(index: usize) -> Self {
        Self::Index(index)
    }
}

fn token(step: Step<'_>) -> Token<'static> {
    match step {
        Step::Key(key) => Token::new(key.to_owned()),
        Step::Index(index) => Token::from(index),
    }
}

fn pointer(steps: &[Step<'_>]) -> PointerBuf {
    PointerBuf::from_tokens(steps.iter().copied().map(token))
}

/// Collects operations against one document.
#[derive(Debug)]
pub struct PatchBuilder<'a> {
    document: &'a Value,
    operations: Vec<PatchOperation>,
}

impl<'a> PatchBuilder<'a> {
    /// A builder for patches of `document`.
    pub fn new(document: &'a Value) -> Self {
        Self {
            document,
            operations: Vec::new(),
        }
    }

    /// Sets `value` at `path`, creating missing (or `null`) parents: `add` when the member is
    /// new, `replace` when it exists.
    pub fn set(&mut self, path: &[Step<'_>], value: Value) -> Result<(), PathError> {
        let mut node = self.document;
        for (depth, step) in path.iter().enumerate() {
            let child = match (*step, node) {
                (Step::Key(key), Value::Object(map)) => {
                    map.get(key).filter(|child| !child.is_null())
                }
                (Step::Index(index), Value::Array(items)) => items.get(index),
                (_, _) => {
                    return Err(PathError {
                        path: pointer(&path[..depth]).to_string(),
                        expected: match step {
                            Step::Key(_) => "an object",
                            Step::Index(_) => "a list",
                        },
                        child: pointer(&path[depth..=depth]).to_string(),
                    });
                }
            };
            match child {
                Some(child) => node = child,
                None => {
                    // The first missing step: add it, with the rest of the path nested inside.
                    let nested = path[depth + 1..].iter().rev().fold(value, |inner, step| {
                        let key = match step {
                            Step::Key(key) => (*key).to_owned(),
                            Step::Index(index) => index.to_string(),
                        };
                        Value::Object(Map::from_iter([(key, inner)]))
                    });
                    self.operations.push(PatchOperation::Add(AddOperation {
                        path: pointer(&path[..=depth]),
                        value: nested,
                    }));
                    return Ok(());
                }
            }
        }
        self.operations
            .push(PatchOperation::Replace(ReplaceOperation {
                path: pointer(path),
                value,
            }));
        Ok(())
    }

    /// Appends `values` to the array at `path`, creating the array when it is missing (or
    /// `null`). Anything else there is an error: replacing it would drop what the user wrote.
    pub fn append(&mut self, path: &[Step<'_>], values: Vec<Value>) -> Result<(), PathError> {
        if values.is_empty() {
            return Ok(());
        }
        let existing = path
            .iter()
            .try_fold(self.document, |node, step| match *step {
                Step::Key(key) => node.get(key),
                Step::Index(index) => node.get(index),
            });
        match existing {
            Some(Value::Array(_)) => {
                for value in values {
                    let mut path = pointer(path);
                    path.push_back(Token::new("-"));
                    self.operations
                        .push(PatchOperation::Add(AddOperation { path, value }));
                }
                Ok(())
            }
            None | Some(Value::Null) => self.set(path, Value::Array(values)),
            Some(_) => Err(PathError {
                path: pointer(path).to_string(),
                expected: "a list",
                child: "-".to_owned(),
            }),
        }
    }

    /// Whether no operation was collected.
    pub fn is_empty(&self) -> bool {
        self.operations.is_empty()
    }

    /// The patch.
    pub fn finish(self) -> Patch {
        Patch(self.operations)
    }
}

/// Prefixes every path of `patch` with `prefix`, for a pod template inside a workload.
pub fn prefixed(patch: &Patch, prefix: &[&str]) -> Patch {
    let prefix = PointerBuf::from_tokens(prefix.iter().map(|key| Token::new(*key)));
    Patch(
        patch
            .iter()
            .map(|operation| match operation {
                PatchOperation::Add(add) => PatchOperation::Add(AddOperation {
                    path: prefix.concat(&add.path),
                    value: add.value.clone(),
                }),
                PatchOperation::Replace(replace) => PatchOperation::Replace(ReplaceOperation {
                    path: prefix.concat(&replace.path),
                    value: replace.value.clone(),
                }),
                other => unreachable!("the engine emits only add and replace, not {other}"),
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn applied(document: &Value, patch: &Patch) -> Value {
        let mut out = document.clone();
        json_patch::patch(&mut out, patch).unwrap();
        out
    }

    #[test]
    fn creates_missing_parents_and_escapes() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]}});
        let mut builder = PatchBuilder::new(&pod);
        builder
            .set(
                &[
                    "metadata".into(),
                    "annotations".into(),
                    "gracegate.io/mutated".into(),
                ],
                json!("x"),
            )
            .unwrap();
        builder
            .set(
                &[
                    "spec".into(),
                    "containers".into(),
                    0.into(),
                    "lifecycle".into(),
                    "preStop".into(),
                ],
                json!({"sleep": {"seconds": 5}}),
            )
            .unwrap();
        let patch = builder.finish();
        let text = serde_json::to_string(&patch).unwrap();
        assert!(text.contains(r#""path":"/metadata/annotations""#), "{text}");
        assert!(
            text.contains(r#""path":"/spec/containers/0/lifecycle""#),
            "{text}"
        );
        let out = applied(&pod, &patch);
        assert_eq!(out["metadata"]["annotations"]["gracegate.io/mutated"], "x");
        assert_eq!(
            out["spec"]["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"],
            5
        );
    }

    #[test]
    fn escapes_tilde_and_slash_in_existing_parents() {
        let pod = json!({"metadata": {"annotations": {"a~b/c": "1"}}});
        let mut builder = PatchBuilder::new(&pod);
        builder
            .set(
                &["metadata".into(), "annotations".into(), "x~y/z".into()],
                json!("2"),
            )
            .unwrap();
        builder
            .set(
                &["metadata".into(), "annotations".into(), "a~b/c".into()],
                json!("3"),
            )
            .unwrap();
        let patch = builder.finish();
        assert_eq!(patch[0].path().as_str(), "/metadata/annotations/x~0y~1z");
        assert!(matches!(patch[1], PatchOperation::Replace(_)));
        let out = applied(&pod, &patch);
        assert_eq!(
            out["metadata"]["annotations"],
            json!({"a~b/c": "3", "x~y/z": "2"})
        );
    }

    #[test]
    fn null_parent_is_replaced() {
        let pod = json!({"spec": {"containers": [{"name": "a", "lifecycle": null}]}});
        let mut builder = PatchBuilder::new(&pod);
        builder
            .set(
                &[
                    "spec".into(),
                    "containers".into(),
                    0.into(),
                    "lifecycle".into(),
                    "preStop".into(),
                ],
                json!({}),
            )
            .unwrap();
        let out = applied(&pod, &builder.finish());
        assert_eq!(
            out["spec"]["containers"][0]["lifecycle"],
            json!({"preStop": {}})
        );
    }

    #[test]
    fn append_creates_or_extends() {
        let without = json!({"spec": {}});
        let with = json!({"spec": {"readinessGates": [{"conditionType": "a"}]}});
        for pod in [without, with] {
            let mut builder = PatchBuilder::new(&pod);
            builder
                .append(
                    &["spec".into(), "readinessGates".into()],
                    vec![json!({"conditionType": "b"}), json!({"conditionType": "c"})],
                )
                .unwrap();
            let out = applied(&pod, &builder.finish());
            let gates = out["spec"]["readinessGates"].as_array().unwrap();
            assert_eq!(gates.last().unwrap()["conditionType"], "c");
        }
    }

    #[test]
    fn append_to_a_non_list_is_an_error() {
        let pod = json!({"spec": {"readinessGates": {"conditionType": "a"}}});
        let mut builder = PatchBuilder::new(&pod);
        let error = builder
            .append(
                &["spec".into(), "readinessGates".into()],
                vec![json!({"conditionType": "b"})],
            )
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "/spec/readinessGates is not a list, so - cannot be set under it"
        );
        assert!(builder.is_empty());
    }

    #[test]
    fn non_object_parent_is_an_error() {
        let pod = json!({"metadata": {"annotations": "oops"}});
        let mut builder = PatchBuilder::new(&pod);
        let error = builder
            .set(
                &["metadata".into(), "annotations".into(), "k".into()],
                json!("v"),
            )
            .unwrap_err();
        assert_eq!(error.path, "/metadata/annotations");
    }

    #[test]
    fn prefixing_keeps_escapes() {
        let pod = json!({"metadata": {}});
        let mut builder = PatchBuilder::new(&pod);
        builder
            .set(
                &["metadata".into(), "annotations".into()],
                json!({"a/b": "c"}),
            )
            .unwrap();
        let patch = prefixed(&builder.finish(), &["spec", "template"]);
        assert_eq!(
            patch[0].path().as_str(),
            "/spec/template/metadata/annotations"
        );
    }
}
