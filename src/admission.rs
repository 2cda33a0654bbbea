//! One `admission.k8s.io/v1` AdmissionReview in, its response out, through the engine.
//!
//! The review is parsed once into JSON; the pod (`request.object`) is taken out as raw JSON
//! before the rest is read into kube's typed [`AdmissionRequest`], so the engine sees every
//! field of the pod as the API server sent it, including fields no typed model knows.
//!
//! The response is kube's [`AdmissionResponse`], except that `patch` is written as base64
//! text, as the API documents: kube-core serializes it as an array of numbers (kube-rs
//! #1781), which is non-canonical and about four times larger.

use std::panic::{AssertUnwindSafe, catch_unwind};

use base64::Engine as _;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use serde_json::Value;

use crate::engine::{self, Summary, truncate_warning};
use crate::view::ClusterView;

/// The review API versions gracegate answers; the chart registers only `v1`.
const REVIEW_VERSIONS: &[&str] = &["admission.k8s.io/v1", "admission.k8s.io/v1beta1"];
const REVIEW_KIND: &str = "AdmissionReview";

/// A body that is not an AdmissionReview gracegate can answer: HTTP 400 with the reason.
#[derive(Debug, thiserror::Error)]
pub enum InvalidReview {
    /// The body is not JSON (or nests deeper than the JSON reader allows).
    #[error("the body is not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    /// The JSON is not an AdmissionReview of a known version.
    #[error("the body is not an admission.k8s.io/v1 AdmissionReview (got {0})")]
    NotAReview(String),
    /// The review has no `request`.
    #[error("the AdmissionReview has no request")]
    NoRequest,
    /// The request's fields do not have the types of an AdmissionRequest.
    #[error("the AdmissionReview's request is malformed: {0}")]
    BadRequest(#[source] serde_json::Error),
    /// A pod CREATE without the pod.
    #[error("the CREATE of a pod carries no request.object")]
    NoObject,
}

/// What became of a review, as the `result` label of the request metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The pod gets a patch.
    Mutated,
    /// The pod needed nothing (or is in an Audit-mode namespace and needed nothing).
    Unchanged,
    /// Audit mode: the pod would have been patched; only warnings are returned.
    Audited,
    /// The pod was left alone (opt-out, mirror pod, batch owner).
    Skipped,
    /// Not a pod CREATE: allowed unchanged.
    Ignored,
    /// gracegate failed; the pod is allowed unchanged (or denied with `--fail-closed`).
    Error,
}

impl Outcome {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Mutated => "mutated",
            Self::Unchanged => "unchanged",
            Self::Audited => "audited",
            Self::Skipped => "skipped",
            Self::Ignored => "ignored",
            Self::Error => "error",
        }
    }
}

/// A review answered.
#[derive(Debug)]
pub struct Answer {
    /// The AdmissionReview to send back, serialized.
    pub body: Vec<u8>,
    /// The request's uid.
    pub uid: String,
    /// `CREATE`, `UPDATE`, `DELETE` or `CONNECT`.
    pub operation: &'static str,
    /// `request.namespace` (empty for cluster-scoped objects).
    pub namespace: String,
    /// The object's name, or its `generateName` when it has none yet.
    pub name: String,
    /// What happened.
    pub outcome: Outcome,
    /// The engine's account, for pods it looked at.
    pub summary: Option<Summary>,
    /// The internal error behind [`Outcome::Error`].
    pub error: Option<String>,
}

/// How the webhook answers when gracegate itself fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureMode {
    /// Allow the pod unchanged, with a warning (the default: never block a rollout).
    Open,
    /// Deny the pod.
    Closed,
}

/// Answers one review `body` with what `cluster` knows.
pub fn review(
    body: &[u8],
    cluster: &ClusterView,
    failure: FailureMode,
) -> Result<Answer, InvalidReview> {
    let mut document: Value = serde_json::from_slice(body).map_err(InvalidReview::NotJson)?;
    check_review_type(&document)?;
    // The pod stays raw JSON; the rest goes through kube's types.
    let object = document
        .pointer_mut("/request/object")
        .map(Value::take)
        .filter(|object| !object.is_null());
    let typed: AdmissionReview<DynamicObject> =
        serde_json::from_value(document).map_err(InvalidReview::BadRequest)?;
    let request: AdmissionRequest<DynamicObject> =
        typed.try_into().map_err(|_| InvalidReview::NoRequest)?;

    let operation = operation_label(&request.operation);
    let namespace = request.namespace.clone().unwrap_or_default();
    let name = object_name(&request, object.as_ref());
    let mut answer = Answer {
        body: Vec::new(),
        uid: request.uid.clone(),
        operation,
        namespace,
        name,
        outcome: Outcome::Ignored,
        summary: None,
        error: None,
    };
    let mut response = AdmissionResponse::from(&request);
    if is_pod_create(&request) {
        let pod = object.ok_or(InvalidReview::NoObject)?;
        response = mutate_pod(&pod, &mut answer, cluster, failure, response);
    }
    answer.body = encode(response);
    Ok(answer)
}

fn check_review_type(document: &Value) -> Result<(), InvalidReview> {
    let field = |key: &str| document.get(key).and_then(Value::as_str);
    match (field("apiVersion"), field("kind")) {
        (Some(version), Some(REVIEW_KIND)) if REVIEW_VERSIONS.contains(&version) => Ok(()),
        (version, kind) if document.is_object() => Err(InvalidReview::NotAReview(format!(
            "apiVersion {:?}, kind {:?}",
            version.unwrap_or(""),
            kind.unwrap_or("")
        ))),
        _ => Err(InvalidReview::NotAReview(
            "a JSON value that is no object".to_owned(),
        )),
    }
}

fn operation_label(operation: &Operation) -> &'static str {
    match operation {
        Operation::Create => "CREATE",
        Operation::Update => "UPDATE",
        Operation::Delete => "DELETE",
        Operation::Connect => "CONNECT",
    }
}

/// Only the CREATE of a pod itself (no subresource such as `ephemeralcontainers`) is mutated.
fn is_pod_create(request: &AdmissionRequest<DynamicObject>) -> bool {
    request.operation == Operation::Create
        && request.resource.group.is_empty()
        && request.resource.version == "v1"
        && request.resource.resource == "pods"
        && request.sub_resource.as_deref().is_none_or(str::is_empty)
}

/// Pods from `generateName` arrive without a name.
fn object_name(request: &AdmissionRequest<DynamicObject>, object: Option<&Value>) -> String {
    if !request.name.is_empty() {
        return request.name.clone();
    }
    object
        .and_then(|object| {
            object
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .filter(|name| !name.is_empty())
                .or_else(|| object.pointer("/metadata/generateName")?.as_str())
        })
        .unwrap_or_default()
        .to_owned()
}

fn mutate_pod(
    pod: &Value,
    answer: &mut Answer,
    cluster: &ClusterView,
    failure: FailureMode,
    response: AdmissionResponse,
) -> AdmissionResponse {
    let namespace = cluster.namespace(&answer.namespace);
    let context = cluster.context(&namespace, None);
    // The engine returns errors for malformed pods; a panic would be a bug, and a bug must
    // not take the webhook (and every pod creation in the cluster) down with it.
    let result = catch_unwind(AssertUnwindSafe(|| engine::mutate(pod, &context)))
        .unwrap_or_else(|panic| Err(engine::EngineError::Malformed(panic_message(&panic))));
    let mutation = match result {
        Ok(mutation) => mutation,
        Err(error) => return failed(response, answer, failure, error.to_string()),
    };
    let summary = &mutation.summary;
    answer.outcome = if summary.skipped.is_some() {
        Outcome::Skipped
    } else if !mutation.patch.is_empty() {
        Outcome::Mutated
    } else if summary.audit && summary.changed() {
        Outcome::Audited
    } else {
        Outcome::Unchanged
    };
    answer.summary = Some(mutation.summary);
    if mutation.patch.is_empty() {
        return with_warnings(response, mutation.warnings);
    }
    // `with_patch` takes the response; it fails only on a patch that does not serialize.
    match response
        .clone()
        .with_patch(mutation.patch)
        .map(|patched| with_warnings(patched, mutation.warnings))
    {
        Ok(patched) => patched,
        Err(error) => failed(response, answer, failure, error.to_string()),
    }
}

/// The answer when gracegate fails on a pod: allowed unchanged with a warning, or denied.
fn failed(
    response: AdmissionResponse,
    answer: &mut Answer,
    failure: FailureMode,
    message: String,
) -> AdmissionResponse {
    answer.outcome = Outcome::Error;
    let response = match failure {
        FailureMode::Open => with_warnings(
            response,
            vec![truncate_warning(&format!(
                "gracegate: pod admitted unchanged: {message}"
            ))],
        ),
        FailureMode::Closed => response.deny(format!("gracegate: {message}")),
    };
    answer.error = Some(message);
    response
}

/// Most warnings one response carries. kubectl prints each on its own line, and the API
/// server may drop "large numbers of warnings"; a pod with fifty port-less containers should
/// not flood the terminal with fifty lines saying the same thing.
pub const MAX_WARNINGS: usize = 10;

fn with_warnings(mut response: AdmissionResponse, mut warnings: Vec<String>) -> AdmissionResponse {
    if warnings.len() > MAX_WARNINGS {
        let hidden = warnings.len() - (MAX_WARNINGS - 1);
        warnings.truncate(MAX_WARNINGS - 1);
        warnings.push(format!("gracegate: {hidden} more warnings not shown"));
    }
    if !warnings.is_empty() {
        response.warnings = Some(warnings);
    }
    response
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("unknown panic");
    format!("internal error: {text}")
}

/// The response review as sent: kube's [`AdmissionResponse`] with `patch` as base64 text.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ResponseReview {
    api_version: String,
    kind: String,
    response: Base64Patch,
}

#[derive(serde::Serialize)]
struct Base64Patch {
    #[serde(flatten)]
    response: AdmissionResponse,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
}

/// Serializes the review with `patch` as base64 text.
fn encode(mut response: AdmissionResponse) -> Vec<u8> {
    let patch = response
        .patch
        .take()
        .map(|patch| base64::engine::general_purpose::STANDARD.encode(patch));
    let review = ResponseReview {
        api_version: response.types.api_version.clone(),
        kind: response.types.kind.clone(),
        response: Base64Patch { response, patch },
    };
    // Only maps with non-string keys fail to serialize; a review has none.
    serde_json::to_vec(&review).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn review_of(operation: &str, resource: &str, object: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": resource},
                "namespace": "shop",
                "operation": operation,
                "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
                "object": object,
                "dryRun": false
            }
        }))
        .unwrap()
    }

    fn pod() -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": "frontend-7d9c8b-", "namespace": "", "labels": {"app": "frontend"}},
            "spec": {"containers": [{"name": "server", "image": "frontend", "ports": [{"containerPort": 8080}]}]}
        })
    }

    fn response(answer: &Answer) -> Value {
        serde_json::from_slice::<Value>(&answer.body).unwrap()["response"].clone()
    }

    #[test]
    fn pod_create_gets_a_base64_patch() {
        let cluster = ClusterView::default();
        let answer = review(
            &review_of("CREATE", "pods", pod()),
            &cluster,
            FailureMode::Open,
        )
        .unwrap();
        assert_eq!(answer.outcome, Outcome::Mutated);
        assert_eq!(answer.name, "frontend-7d9c8b-");
        assert_eq!(answer.namespace, "shop");
        let response = response(&answer);
        assert_eq!(response["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert_eq!(response["allowed"], true);
        assert_eq!(response["patchType"], "JSONPatch");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(response["patch"].as_str().unwrap())
            .unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
        let mut patched = pod();
        json_patch::patch(&mut patched, &patch).unwrap();
        assert_eq!(
            patched["metadata"]["annotations"]["gracegate.io/mutated"],
            "server:readiness,startup,prestop"
        );
    }

    #[test]
    fn warnings_are_capped() {
        let containers: Vec<Value> = (0..30)
            .map(|index| json!({"name": format!("worker-{index}"), "image": "busybox"}))
            .collect();
        let mut many = pod();
        many["spec"]["containers"] = Value::Array(containers);
        let answer = review(
            &review_of("CREATE", "pods", many),
            &ClusterView::default(),
            FailureMode::Open,
        )
        .unwrap();
        let warnings = response(&answer)["warnings"].as_array().unwrap().clone();
        assert_eq!(warnings.len(), MAX_WARNINGS);
        assert!(
            warnings[0].as_str().unwrap().contains("worker-0"),
            "{warnings:?}"
        );
        assert_eq!(
            warnings[MAX_WARNINGS - 1],
            "gracegate: 21 more warnings not shown"
        );
    }

    #[test]
    fn dry_run_is_answered_the_same() {
        let cluster = ClusterView::default();
        let mut body: Value = serde_json::from_slice(&review_of("CREATE", "pods", pod())).unwrap();
        let wet = review(
            &serde_json::to_vec(&body).unwrap(),
            &cluster,
            FailureMode::Open,
        )
        .unwrap();
        body["request"]["dryRun"] = json!(true);
        let dry = review(
            &serde_json::to_vec(&body).unwrap(),
            &cluster,
            FailureMode::Open,
        )
        .unwrap();
        assert_eq!(dry.outcome, Outcome::Mutated);
        assert_eq!(dry.body, wet.body);
    }

    #[test]
    fn everything_but_pod_create_passes_through() {
        let cluster = ClusterView::default();
        for (operation, resource) in [
            ("UPDATE", "pods"),
            ("DELETE", "pods"),
            ("CREATE", "deployments"),
        ] {
            let answer = review(
                &review_of(operation, resource, pod()),
                &cluster,
                FailureMode::Open,
            )
            .unwrap();
            assert_eq!(answer.outcome, Outcome::Ignored, "{operation} {resource}");
            let response = response(&answer);
            assert_eq!(response["allowed"], true);
            assert!(response.get("patch").is_none());
            assert!(response.get("patchType").is_none());
        }
    }

    #[test]
    fn malformed_pods_fail_open_or_closed() {
        let cluster = ClusterView::default();
        let body = review_of(
            "CREATE",
            "pods",
            json!({"metadata": {}, "spec": {"containers": 3}}),
        );
        let open = review(&body, &cluster, FailureMode::Open).unwrap();
        assert_eq!(open.outcome, Outcome::Error);
        let response = response(&open);
        assert_eq!(response["allowed"], true);
        assert!(response.get("patch").is_none());
        assert!(
            response["warnings"][0]
                .as_str()
                .unwrap()
                .starts_with("gracegate: pod admitted unchanged: malformed pod")
        );
        let closed = review(&body, &cluster, FailureMode::Closed).unwrap();
        let response = super::tests::response(&closed);
        assert_eq!(response["allowed"], false);
        assert!(
            response["status"]["message"]
                .as_str()
                .unwrap()
                .contains("spec.containers is not a list")
        );
    }

    #[test]
    fn bad_bodies_are_invalid() {
        let cluster = ClusterView::default();
        let table: [(&[u8], &str); 6] = [
            (b"", "not JSON"),
            (b"{}", "not an admission.k8s.io/v1 AdmissionReview"),
            (b"[1, 2]", "no object"),
            (
                br#"{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}"#,
                "has no request",
            ),
            (
                br#"{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": 5}}"#,
                "request is malformed",
            ),
            (
                br#"{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": "u", "kind": {"group": "", "version": "v1", "kind": "Pod"}, "resource": {"group": "", "version": "v1", "resource": "pods"}, "operation": "CREATE", "userInfo": {}}}"#,
                "carries no request.object",
            ),
        ];
        for (body, expected) in table {
            let error = review(body, &cluster, FailureMode::Open).unwrap_err();
            assert!(
                error.to_string().contains(expected),
                "{}: {error}",
                String::from_utf8_lossy(body)
            );
        }
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(matches!(
            review(deep.as_bytes(), &cluster, FailureMode::Open),
            Err(InvalidReview::NotJson(_))
        ));
    }

    /// Any JSON value anywhere a real review has one gets an answer or a reason, never a panic.
    mod no_input_panics {
        use super::*;
        use proptest::prelude::*;

        fn json_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<f64>().prop_map(Value::from),
                "[a-z/~.:-]{0,12}".prop_map(Value::from),
            ];
            leaf.prop_recursive(4, 32, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                    prop::collection::btree_map(
                        prop_oneof![
                            "[a-z]{1,8}",
                            Just("name".to_owned()),
                            Just("containers".to_owned()),
                            Just("ports".to_owned()),
                            Just("lifecycle".to_owned()),
                            Just("readinessGates".to_owned()),
                            Just("annotations".to_owned()),
                        ],
                        inner,
                        0..6
                    )
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
                ]
            })
        }

        const PLACES: &[&str] = &[
            "/request/object",
            "/request/object/metadata",
            "/request/object/metadata/annotations",
            "/request/object/metadata/labels",
            "/request/object/metadata/ownerReferences",
            "/request/object/spec",
            "/request/object/spec/containers",
            "/request/object/spec/containers/0",
            "/request/object/spec/containers/0/ports",
            "/request/object/spec/containers/0/lifecycle",
            "/request/object/spec/initContainers",
            "/request/object/spec/readinessGates",
            "/request/object/spec/terminationGracePeriodSeconds",
            "/request/namespace",
            "/request/uid",
            "/request",
        ];

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn any_value_anywhere(place in 0..PLACES.len(), value in json_value()) {
                let mut document: Value =
                    serde_json::from_slice(&review_of("CREATE", "pods", pod())).unwrap();
                if let Some(slot) = document.pointer_mut(PLACES[place]) {
                    *slot = value;
                }
                let body = serde_json::to_vec(&document).unwrap();
                for failure in [FailureMode::Open, FailureMode::Closed] {
                    if let Ok(answer) = review(&body, &ClusterView::default(), failure) {
                        let answered: Value = serde_json::from_slice(&answer.body).unwrap();
                        prop_assert_eq!(&answered["response"]["uid"], &document["request"]["uid"]);
                        // An engine panic is caught, but is a bug all the same.
                        let error = answer.error.unwrap_or_default();
                        prop_assert!(!error.contains("internal error"), "{}", error);
                    }
                }
            }

            #[test]
            fn any_bytes(body in prop::collection::vec(any::<u8>(), 0..512)) {
                let _ = review(&body, &ClusterView::default(), FailureMode::Open);
            }
        }
    }
}
