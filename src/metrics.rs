//! The Prometheus metrics of the webhook. Their names are part of gracegate's interface
//! (SPEC §4): dashboards and alerts are written against them.

use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::admission::Outcome;
use crate::engine::Summary;

/// `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels<const N: usize> = [(&'static str, &'static str); N];

/// Every metric gracegate exports, and the registry that renders them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<Labels<2>, Counter>,
    duration: Histogram,
    mutations: Family<Labels<1>, Counter>,
    alb_lookup_failures: Counter,
    certificate_expiry: Gauge,
    cache_synced: Family<Labels<1>, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<Labels<2>, Counter>::default();
        registry.register(
            "gracegate_admission_requests",
            "Admission reviews answered, by operation and result",
            requests.clone(),
        );
        // 10 µs to ~2.6 s: a review takes tens of microseconds; anything near the
        // webhook's 5 s timeout lands in the top buckets.
        let duration = Histogram::new(exponential_buckets(0.000_01, 4.0, 10));
        registry.register(
            "gracegate_admission_duration_seconds",
            "Time to answer an admission review, from body received to response built",
            duration.clone(),
        );
        let mutations = Family::<Labels<1>, Counter>::default();
        registry.register(
            "gracegate_mutations",
            "Changes made to pods, by kind of change",
            mutations.clone(),
        );
        let alb_lookup_failures = Counter::default();
        registry.register(
            "gracegate_alb_lookup_failures",
            "Pods whose ALB readiness gates could not be worked out",
            alb_lookup_failures.clone(),
        );
        let certificate_expiry = Gauge::default();
        registry.register(
            "gracegate_certificate_expiry_timestamp_seconds",
            "When the serving certificate expires, in seconds since the Unix epoch",
            certificate_expiry.clone(),
        );
        let cache_synced = Family::<Labels<1>, Gauge>::default();
        registry.register(
            "gracegate_cache_synced",
            "1 when the cache of that resource is synced with the cluster",
            cache_synced.clone(),
        );
        Self {
            registry,
            requests,
            duration,
            mutations,
            alb_lookup_failures,
            certificate_expiry,
            cache_synced,
        }
    }

    /// Counts one review.
    pub fn observe_review(
        &self,
        operation: &'static str,
        outcome: Outcome,
        summary: Option<&Summary>,
        elapsed: Duration,
    ) {
        self.requests
            .get_or_create(&[("operation", operation), ("result", outcome.label())])
            .inc();
        self.duration.observe(elapsed.as_secs_f64());
        let Some(summary) = summary else { return };
        if outcome == Outcome::Mutated {
            for (change, count) in summary.change_counts() {
                self.mutations
                    .get_or_create(&[("change", change)])
                    .inc_by(count);
            }
        }
        if summary.alb_lookup_failed {
            self.alb_lookup_failures.inc();
        }
    }

    /// Counts a body that is not an AdmissionReview.
    pub fn observe_invalid(&self, elapsed: Duration) {
        self.requests
            .get_or_create(&[("operation", "unknown"), ("result", "invalid")])
            .inc();
        self.duration.observe(elapsed.as_secs_f64());
    }

    /// Records the serving certificate's `notAfter`.
    pub fn set_certificate_expiry(&self, unix_seconds: i64) {
        self.certificate_expiry.set(unix_seconds);
    }

    /// Records whether the cache of `resource` is synced.
    pub fn set_cache_synced(&self, resource: &'static str, synced: bool) {
        self.cache_synced
            .get_or_create(&[("resource", resource)])
            .set(i64::from(synced));
    }

    /// The metrics in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_documented_ones() {
        let metrics = Metrics::new();
        let summary = Summary {
            containers: vec![crate::engine::ContainerChanges {
                name: "app".to_owned(),
                changes: vec![
                    crate::engine::Change::Readiness,
                    crate::engine::Change::PreStop(10),
                ],
            }],
            grace: Some((None, 50)),
            ..Summary::default()
        };
        metrics.observe_review(
            "CREATE",
            Outcome::Mutated,
            Some(&summary),
            Duration::from_micros(40),
        );
        metrics.observe_invalid(Duration::from_micros(3));
        metrics.set_certificate_expiry(1_900_000_000);
        metrics.set_cache_synced("namespaces", true);
        let text = metrics.render();
        for line in [
            r#"gracegate_admission_requests_total{operation="CREATE",result="mutated"} 1"#,
            r#"gracegate_admission_requests_total{operation="unknown",result="invalid"} 1"#,
            "gracegate_admission_duration_seconds_count 2",
            r#"gracegate_mutations_total{change="readiness"} 1"#,
            r#"gracegate_mutations_total{change="prestop"} 1"#,
            r#"gracegate_mutations_total{change="grace"} 1"#,
            "gracegate_certificate_expiry_timestamp_seconds 1900000000",
            r#"gracegate_cache_synced{resource="namespaces"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    }
}
