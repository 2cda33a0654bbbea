//! The whole review path without the network: an AdmissionReview body in (the
//! microservices-demo `frontend` pod of `examples/review.json`), the response body out —
//! JSON parsing, the engine, the patch and its base64 encoding.
//!
//! Run: `cargo bench --bench admission`.
#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gracegate::admission::{self, FailureMode, Outcome};
use gracegate::view::ClusterView;

fn review(c: &mut Criterion) {
    let body = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/review.json")).unwrap();
    let cluster = ClusterView::default();
    let answer = admission::review(&body, &cluster, FailureMode::Open).unwrap();
    assert_eq!(answer.outcome, Outcome::Mutated);

    let mut group = c.benchmark_group("admission");
    group.throughput(Throughput::Elements(1));
    group.bench_function("review_frontend", |b| {
        b.iter(|| admission::review(black_box(&body), &cluster, FailureMode::Open).unwrap())
    });
    group.finish();
}

criterion_group!(benches, review);
criterion_main!(benches);
