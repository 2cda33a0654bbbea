//! Benchmarks of the mutation engine on a real pod: the microservices-demo `frontend`
//! (`tests/corpus/microservices-demo--kubernetes-manifests.yaml`, Deployment `frontend`, with
//! its Service), in a namespace assumed opted in, as the webhook sees it.
//!
//! - `engine/mutate_frontend`: [`engine::mutate`] alone (the pod lacks a startup probe and a
//!   preStop, so the patch has three operations);
//! - `engine/mutate_frontend_alb`: the same pod behind an ALB (`ip` TargetGroupBinding), which
//!   adds a readiness gate and a grace period;
//! - `engine/end_to_end_frontend`: the pod's JSON parsed, mutated, the patch serialized and
//!   base64-encoded as an AdmissionResponse carries it, and applied to the pod.
//!
//! Run: `cargo bench --bench engine`. The target is at most 10 µs per pod for `mutate`.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;

use base64::Engine as _;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gracegate::engine::{self, Mutation};
use gracegate::view::{AlbObjects, BindingView, ClusterView, ServiceView};
use serde_json::Value;

const CORPUS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/corpus/microservices-demo--kubernetes-manifests"
);

/// The first object of that kind and name in `<CORPUS><suffix>.yaml`.
fn corpus_object(suffix: &str, kind: &str, name: &str) -> Value {
    let text = std::fs::read_to_string(format!("{CORPUS}{suffix}.yaml")).unwrap();
    gracegate::yaml::parse_documents(&text)
        .unwrap()
        .into_iter()
        .map(|document| document.value)
        .find(|object| object["kind"] == kind && object["metadata"]["name"] == name)
        .unwrap()
}

/// The `frontend` pod as the API server would send it: the Deployment's template as a Pod.
fn frontend_pod() -> Value {
    let mut pod = corpus_object("", "Deployment", "frontend")["spec"]["template"].clone();
    pod["apiVersion"] = "v1".into();
    pod["kind"] = "Pod".into();
    pod
}

/// A cluster with the `frontend` Service in `default`; with `alb`, the namespace opts in to
/// ALB gates and an `ip` TargetGroupBinding points at the Service.
fn cluster(alb: bool) -> ClusterView {
    let service =
        ServiceView::from_object(&corpus_object("-services", "Service", "frontend")).unwrap();
    let mut view = ClusterView::default();
    let mut objects = AlbObjects {
        services: vec![service],
        bindings: Vec::new(),
    };
    if alb {
        let mut namespace = view.namespace("default");
        namespace.labels.insert(
            "gracegate.io/alb-readiness-gates".to_owned(),
            "enabled".to_owned(),
        );
        view.namespaces.insert("default".to_owned(), namespace);
        objects.bindings.push(BindingView {
            name: "k8s-default-frontend-6f1c5a7e2b".to_owned(),
            service_name: "frontend".to_owned(),
            target_type: Some("ip".to_owned()),
        });
    }
    view.alb.insert("default".to_owned(), objects);
    view
}

/// What the webhook does with a mutation: serialize the patch, base64 it, and (as the API
/// server will) apply it.
fn respond(pod: &mut Value, mutation: &Mutation) -> String {
    let patch = serde_json::to_vec(&mutation.patch).unwrap();
    json_patch::patch(pod, &mutation.patch).unwrap();
    base64::engine::general_purpose::STANDARD.encode(patch)
}

fn benchmarks(c: &mut Criterion) {
    let pod = frontend_pod();
    let pod_json = serde_json::to_vec(&pod).unwrap();
    let plain = cluster(false);
    let behind_alb = cluster(true);
    let namespace = plain.namespace("default");
    let alb_namespace = behind_alb.namespace("default");
    let context = plain.context(&namespace, None);
    let alb_context = behind_alb.context(&alb_namespace, None);

    // The benchmarks measure real work only if the pod needs what they claim it does.
    let mutation = engine::mutate(&pod, &context).unwrap();
    assert_eq!(mutation.summary.record(), "server:startup,prestop");
    assert_eq!(mutation.patch.len(), 3);
    let alb_mutation = engine::mutate(&pod, &alb_context).unwrap();
    assert_eq!(
        alb_mutation.summary.record(),
        "server:startup,prestop;grace:50;gates:1"
    );

    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Elements(1));
    group.bench_function("mutate_frontend", |b| {
        b.iter(|| engine::mutate(black_box(&pod), black_box(&context)).unwrap())
    });
    group.bench_function("mutate_frontend_alb", |b| {
        b.iter(|| engine::mutate(black_box(&pod), black_box(&alb_context)).unwrap())
    });
    group.bench_function("end_to_end_frontend", |b| {
        b.iter(|| {
            let mut pod: Value = serde_json::from_slice(black_box(&pod_json)).unwrap();
            let mutation = engine::mutate(&pod, &context).unwrap();
            respond(&mut pod, &mutation)
        })
    });
    group.finish();
}

criterion_group!(benches, benchmarks);
criterion_main!(benches);
