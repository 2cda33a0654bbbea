//! The HTTP routes: `POST /mutate`, `GET /healthz`, `GET /readyz` on the webhook listener,
//! `GET /metrics` on the metrics listener, and the state they share.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::TimeoutLayer;

use crate::admission::{self, Answer, FailureMode, Outcome};
use crate::metrics::{self, Metrics};
use crate::view::ClusterView;

/// Largest review body accepted. A pod is rarely over 100 KiB; the API server's own limit on
/// an object is 3 MiB (etcd's 1.5 MiB after encoding), so nothing legitimate is larger.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;
/// Time allowed for one request, body included: below the 5 s `timeoutSeconds` of the
/// webhook registration, so the API server hears from gracegate before it gives up.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(4);

/// The caches `/readyz` waits for when gracegate watches a cluster. TargetGroupBindings are
/// not among them: while their watch fails, pods get everything but ALB gates (with a
/// warning), which beats refusing to serve.
const READINESS_CACHES: [&str; 3] = ["namespaces", "services", "gracepolicies"];

/// What the handlers share.
#[derive(Debug)]
pub struct AppState {
    /// What gracegate knows of the cluster; swapped whole when a watch updates it.
    pub cluster: ArcSwap<ClusterView>,
    /// The Prometheus metrics.
    pub metrics: Metrics,
    /// Allow or deny a pod when gracegate fails.
    pub failure: FailureMode,
    certificates_loaded: AtomicBool,
    caches: Mutex<Caches>,
    shutting_down: AtomicBool,
}

/// Where the cluster caches stand.
#[derive(Debug)]
struct Caches {
    /// Synced or not, for each of [`READINESS_CACHES`] (empty in standalone mode).
    synced: BTreeMap<&'static str, bool>,
    /// Whether a view built from the watches has replaced the empty one.
    published: bool,
}

impl AppState {
    /// State for a server that answers from `cluster`. With `watched`, `/readyz` waits until
    /// the cluster caches are synced and a view built from them is published.
    pub fn new(cluster: ClusterView, failure: FailureMode, watched: bool) -> Self {
        let caches = Caches {
            synced: if watched {
                READINESS_CACHES.iter().map(|name| (*name, false)).collect()
            } else {
                BTreeMap::new()
            },
            published: !watched,
        };
        Self {
            cluster: ArcSwap::from_pointee(cluster),
            metrics: Metrics::new(),
            failure,
            certificates_loaded: AtomicBool::new(false),
            caches: Mutex::new(caches),
            shutting_down: AtomicBool::new(false),
        }
    }

    /// Marks the serving certificate as loaded.
    pub fn set_certificates_loaded(&self) {
        self.certificates_loaded.store(true, Ordering::Release);
    }

    /// Records whether the cache of `resource` is synced, for `/readyz` and the metrics.
    pub fn set_cache_synced(&self, resource: &'static str, synced: bool) {
        self.metrics.set_cache_synced(resource, synced);
        if let Ok(mut caches) = self.caches.lock()
            && let Some(slot) = caches.synced.get_mut(resource)
        {
            *slot = synced;
        }
    }

    /// Swaps in a view built from the cluster's objects.
    pub fn publish_cluster(&self, view: ClusterView) {
        self.cluster.store(Arc::new(view));
        if let Ok(mut caches) = self.caches.lock() {
            caches.published = true;
        }
    }

    /// From now on `/readyz` fails, so endpoints drop this replica while it keeps serving.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }

    /// Why the server is not ready, if it is not.
    pub fn not_ready(&self) -> Option<&'static str> {
        if self.shutting_down.load(Ordering::Acquire) {
            return Some("shutting down");
        }
        if !self.certificates_loaded.load(Ordering::Acquire) {
            return Some("certificates not loaded");
        }
        let caches_ready = self
            .caches
            .lock()
            .is_ok_and(|caches| caches.published && caches.synced.values().all(|synced| *synced));
        (!caches_ready).then_some("cluster caches not synced")
    }
}

/// The webhook listener's routes. Health routes sit outside the timeout and body limit.
pub fn router(state: Arc<AppState>) -> Router {
    let webhook = Router::new().route("/mutate", post(mutate)).layer((
        TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, REQUEST_TIMEOUT),
        DefaultBodyLimit::max(MAX_BODY_BYTES),
    ));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(webhook)
        // The admission layer already turns an engine panic into a fail-open answer; this
        // catches anything else, so a bug costs one 500 and never the process.
        .layer(CatchPanicLayer::new())
        .with_state(state)
}

/// The metrics listener's routes.
pub fn metrics_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    match state.not_ready() {
        None => "ok\n".into_response(),
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")).into_response(),
    }
}

async fn render_metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        state.metrics.render(),
    )
        .into_response()
}

async fn mutate(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            state.metrics.observe_invalid(started.elapsed());
            tracing::warn!(reason = %rejection.body_text(), "review body refused");
            return rejection.into_response();
        }
    };
    let cluster = state.cluster.load();
    match admission::review(&body, &cluster, state.failure) {
        Ok(answer) => {
            let elapsed = started.elapsed();
            state.metrics.observe_review(
                answer.operation,
                answer.outcome,
                answer.summary.as_ref(),
                elapsed,
            );
            log_answer(&answer, elapsed);
            ([(header::CONTENT_TYPE, "application/json")], answer.body).into_response()
        }
        Err(invalid) => {
            state.metrics.observe_invalid(started.elapsed());
            tracing::warn!(reason = %invalid, bytes = body.len(), "invalid review");
            (StatusCode::BAD_REQUEST, format!("{invalid}\n")).into_response()
        }
    }
}

fn log_answer(answer: &Answer, elapsed: Duration) {
    let latency_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    let changes = answer
        .summary
        .as_ref()
        .map(|summary| summary.record())
        .unwrap_or_default();
    match answer.outcome {
        Outcome::Ignored => tracing::debug!(
            uid = %answer.uid,
            operation = answer.operation,
            namespace = %answer.namespace,
            name = %answer.name,
            latency_us,
            "review ignored"
        ),
        Outcome::Error => tracing::warn!(
            uid = %answer.uid,
            operation = answer.operation,
            namespace = %answer.namespace,
            pod = %answer.name,
            outcome = answer.outcome.label(),
            error = answer.error.as_deref().unwrap_or_default(),
            latency_us,
            "review failed"
        ),
        outcome => tracing::info!(
            uid = %answer.uid,
            operation = answer.operation,
            namespace = %answer.namespace,
            pod = %answer.name,
            outcome = outcome.label(),
            changes = %changes,
            latency_us,
            "review"
        ),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt as _;

    fn state() -> Arc<AppState> {
        Arc::new(AppState::new(
            ClusterView::default(),
            FailureMode::Open,
            false,
        ))
    }

    async fn call(router: Router, request: Request<Body>) -> (StatusCode, String) {
        let response = router.oneshot(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[test]
    fn readiness_caches_are_watched_resources() {
        let watched: Vec<&str> = crate::cluster::Resource::ALL
            .iter()
            .map(|resource| resource.name())
            .collect();
        for name in READINESS_CACHES {
            assert!(watched.contains(&name), "{name}");
        }
    }

    #[tokio::test]
    async fn readiness_follows_certificates_caches_and_shutdown() {
        let state = Arc::new(AppState::new(
            ClusterView::default(),
            FailureMode::Open,
            true,
        ));
        let readyz = || Request::get("/readyz").body(Body::empty()).unwrap();
        let (status, body) = call(router(state.clone()), readyz()).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "certificates not loaded\n")
        );
        state.set_certificates_loaded();
        let not_synced = "cluster caches not synced\n";
        assert_eq!(call(router(state.clone()), readyz()).await.1, not_synced);
        for resource in READINESS_CACHES {
            state.set_cache_synced(resource, true);
        }
        // Synced, but the view built from the caches is not in yet.
        assert_eq!(call(router(state.clone()), readyz()).await.1, not_synced);
        state.publish_cluster(ClusterView::default());
        assert_eq!(
            call(router(state.clone()), readyz()).await.0,
            StatusCode::OK
        );
        // A failing TargetGroupBinding watch does not hold readiness back; the others do.
        state.set_cache_synced("targetgroupbindings", false);
        assert_eq!(
            call(router(state.clone()), readyz()).await.0,
            StatusCode::OK
        );
        state.set_cache_synced("services", false);
        assert_eq!(call(router(state.clone()), readyz()).await.1, not_synced);
        state.set_cache_synced("services", true);
        state.begin_shutdown();
        let (status, body) = call(router(state.clone()), readyz()).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
        );
        let healthz = Request::get("/healthz").body(Body::empty()).unwrap();
        assert_eq!(call(router(state.clone()), healthz).await.0, StatusCode::OK);
        let (_, text) = call(
            metrics_router(state),
            Request::get("/metrics").body(Body::empty()).unwrap(),
        )
        .await;
        assert!(
            text.contains(r#"gracegate_cache_synced{resource="targetgroupbindings"} 0"#),
            "{text}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_never_ends_gets_408_before_the_api_server_gives_up() {
        let stalled =
            Body::from_stream(futures::stream::pending::<Result<Bytes, std::io::Error>>());
        let request = Request::post("/mutate").body(stalled).unwrap();
        let started = tokio::time::Instant::now();
        let (status, _) = call(router(state()), request).await;
        assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
        // Measured on tokio's paused clock, which jumps straight to the timer.
        assert_eq!(started.elapsed(), REQUEST_TIMEOUT);
    }

    #[tokio::test]
    async fn bodies_over_the_limit_get_413_and_count_as_invalid() {
        let state = state();
        let request = Request::post("/mutate")
            .body(Body::from(vec![b' '; MAX_BODY_BYTES + 1]))
            .unwrap();
        let (status, _) = call(router(state.clone()), request).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        let request = Request::post("/mutate").body(Body::from("{}")).unwrap();
        let (status, body) = call(router(state.clone()), request).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            body.contains("not an admission.k8s.io/v1 AdmissionReview"),
            "{body}"
        );
        let (_, text) = call(
            metrics_router(state),
            Request::get("/metrics").body(Body::empty()).unwrap(),
        )
        .await;
        assert!(
            text.contains(
                r#"gracegate_admission_requests_total{operation="unknown",result="invalid"} 2"#
            ),
            "{text}"
        );
    }
}
