//! From the watched objects to a [`ClusterView`]: Namespaces, the Services and
//! TargetGroupBindings behind ALB readiness gates, and the GracePolicies in force.
//!
//! Pure: the watch loop hands over what its stores hold; tests hand over objects read from
//! YAML. TargetGroupBindings and GracePolicies are `DynamicObject`s, read the same way as
//! `gracegate mutate` reads them from its input ([`BindingView::from_object`],
//! [`GracePolicy::from_value`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::api::DynamicObject;
use serde_json::Value;

use super::policies::{PolicyBook, PolicyReport};
use crate::engine::PreStopStyle;
use crate::policy::{self, GracePolicy, PolicyError};
use crate::view::{AlbObjects, BindingView, ClusterView, NamespaceView, ServiceView};

/// The objects a view is built from, as the watches' stores hold them.
#[derive(Clone, Debug, Default)]
pub struct ClusterObjects {
    /// Every Namespace.
    pub namespaces: Vec<Arc<Namespace>>,
    /// Every Service, in all namespaces.
    pub services: Vec<Arc<Service>>,
    /// Every TargetGroupBinding, or why they are not known.
    pub bindings: Bindings,
    /// Every GracePolicy of the cluster.
    pub policies: Vec<Arc<DynamicObject>>,
}

/// The TargetGroupBindings, or why they are not known.
#[derive(Clone, Debug)]
pub enum Bindings {
    /// The bindings (none when the CRD is not installed).
    Known(Vec<Arc<DynamicObject>>),
    /// They cannot be listed; the engine injects everything but ALB gates, and warns.
    Unavailable(String),
}

impl Default for Bindings {
    fn default() -> Self {
        Self::Known(Vec::new())
    }
}

/// A view and what the GracePolicies came to.
#[derive(Clone, Debug)]
pub struct Built {
    /// The view for the engine.
    pub view: ClusterView,
    /// The policies in force, the verdict on each cluster policy, and what changed.
    pub policies: PolicyReport,
}

/// Builds views, remembering the last valid version of each cluster GracePolicy between
/// builds.
#[derive(Clone, Debug)]
pub struct ViewBuilder {
    policies: PolicyBook,
    prestop_style: PreStopStyle,
}

impl ViewBuilder {
    /// A builder with the policies of `--policy-file` (already validated; two with the same
    /// name are refused) and the cluster's preStop style.
    pub fn new(
        file_policies: Vec<GracePolicy>,
        prestop_style: PreStopStyle,
    ) -> Result<Self, PolicyError> {
        Ok(Self {
            policies: PolicyBook::new(file_policies)?,
            prestop_style,
        })
    }

    /// The view of these objects. GracePolicies are judged against the previous builds: an
    /// invalid version leaves the last valid one in force (see [`super::PolicyReport`]).
    pub fn build(&mut self, objects: &ClusterObjects) -> Built {
        let report = self.policies.update(
            objects
                .policies
                .iter()
                .map(|object| policy_document(object)),
        );
        let mut view = ClusterView::new(report.set.clone(), self.prestop_style);
        view.namespaces = objects
            .namespaces
            .iter()
            .map(|namespace| namespace_view(namespace))
            .map(|namespace| (namespace.name.clone(), namespace))
            .collect();
        match &objects.bindings {
            Bindings::Known(bindings) => view.alb = alb_objects(&objects.services, bindings),
            Bindings::Unavailable(reason) => view.alb_unavailable = Some(reason.clone()),
        }
        Built {
            view,
            policies: report,
        }
    }
}

fn namespace_view(namespace: &Namespace) -> NamespaceView {
    let metadata = &namespace.metadata;
    NamespaceView {
        name: metadata.name.clone().unwrap_or_default(),
        labels: metadata.labels.clone().unwrap_or_default(),
        annotations: metadata.annotations.clone().unwrap_or_default(),
    }
}

/// Groups bindings and the Services they reference by namespace.
fn alb_objects(
    services: &[Arc<Service>],
    bindings: &[Arc<DynamicObject>],
) -> HashMap<String, AlbObjects> {
    let mut alb: HashMap<String, AlbObjects> = HashMap::new();
    let mut referenced: HashSet<(&str, &str)> = HashSet::new();
    for object in bindings {
        let Some(namespace) = object.metadata.namespace.as_deref() else {
            continue;
        };
        let Some(binding) = serde_json::to_value(object.as_ref())
            .ok()
            .and_then(|value| BindingView::from_object(&value))
        else {
            // No serviceRef: nothing to match pods against, as in `gracegate mutate`.
            continue;
        };
        alb.entry(namespace.to_owned())
            .or_default()
            .bindings
            .push(binding);
    }
    for (namespace, objects) in &alb {
        for binding in &objects.bindings {
            referenced.insert((namespace.as_str(), binding.service_name.as_str()));
        }
    }
    // Only Services a binding points at can give a gate. A cluster has thousands of
    // Services and a handful of bindings, and the view is rebuilt on every change.
    let mut kept: Vec<(String, ServiceView)> = Vec::new();
    for service in services {
        let metadata = &service.metadata;
        let (Some(namespace), Some(name)) = (metadata.namespace.as_deref(), &metadata.name) else {
            continue;
        };
        if !referenced.contains(&(namespace, name.as_str())) {
            continue;
        }
        kept.push((
            namespace.to_owned(),
            ServiceView {
                name: name.clone(),
                selector: service
                    .spec
                    .as_ref()
                    .and_then(|spec| spec.selector.clone())
                    .unwrap_or_default(),
            },
        ));
    }
    for (namespace, service) in kept {
        alb.entry(namespace).or_default().services.push(service);
    }
    for objects in alb.values_mut() {
        // Store order is a hash order; a sorted view compares equal across rebuilds.
        objects.bindings.sort_by(|a, b| a.name.cmp(&b.name));
        objects.services.sort_by(|a, b| a.name.cmp(&b.name));
    }
    alb
}

/// A cluster GracePolicy as the document [`GracePolicy::from_value`] reads. Objects of a list
/// may come without `apiVersion` and `kind`; the watch is of that one kind, so they are
/// filled in.
pub(crate) fn policy_document(object: &DynamicObject) -> Value {
    let mut document = serde_json::to_value(object).unwrap_or(Value::Null);
    if let Some(fields) = document.as_object_mut() {
        fields
            .entry("apiVersion")
            .or_insert_with(|| policy::API_VERSION.into());
        fields.entry("kind").or_insert_with(|| policy::KIND.into());
    }
    document
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::path::Path;

    use serde_json::json;

    use super::*;
    use crate::engine;
    use crate::manifests;
    use crate::yaml;

    const SERVICES_2048: &str =
        include_str!("../../tests/corpus/aws-load-balancer-controller--2048_full-services.yaml");
    const DEPLOYMENT_2048: &str =
        include_str!("../../tests/corpus/aws-load-balancer-controller--2048_full.yaml");
    const GUESTBOOK_SERVICES: &str =
        include_str!("../../tests/corpus/examples--guestbook-all-in-one-services.yaml");

    /// The cluster side of the 2048 example: its namespace opted in to ALB gates, and the
    /// bindings the AWS controller creates for its Ingress (one `ip`, one `instance`, one for
    /// a Service that does not exist, one in another namespace).
    const CLUSTER_2048: &str = "\
apiVersion: v1
kind: Namespace
metadata:
  name: game-2048
  labels:
    gracegate.io/inject: enabled
    gracegate.io/alb-readiness-gates: enabled
  annotations:
    gracegate.io/shutdown-seconds: \"15\"
---
apiVersion: elbv2.k8s.aws/v1beta1
kind: TargetGroupBinding
metadata:
  namespace: game-2048
  name: k8s-game2048-service2-0123456789
spec:
  serviceRef: {name: service-2048, port: 80}
  targetGroupARN: arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/k8s-game2048/0123456789
  targetType: ip
---
apiVersion: elbv2.k8s.aws/v1beta1
kind: TargetGroupBinding
metadata:
  namespace: game-2048
  name: k8s-game2048-instance-abcdef
spec:
  serviceRef: {name: service-2048, port: 80}
  targetType: instance
---
apiVersion: elbv2.k8s.aws/v1beta1
kind: TargetGroupBinding
metadata:
  namespace: game-2048
  name: k8s-game2048-orphan-abcdef
spec:
  serviceRef: {name: no-such-service, port: 80}
  targetType: ip
---
apiVersion: elbv2.k8s.aws/v1beta1
kind: TargetGroupBinding
metadata:
  namespace: other
  name: k8s-other-service2-abcdef
spec:
  serviceRef: {name: service-2048, port: 80}
  targetType: ip
";

    fn documents(text: &str) -> Vec<Value> {
        yaml::parse_documents(text)
            .unwrap()
            .into_iter()
            .map(|document| document.value)
            .filter(|value| !value.is_null())
            .collect()
    }

    fn of_kind(values: &[Value], kind: &str) -> Vec<Value> {
        values
            .iter()
            .filter(|value| value["kind"] == kind)
            .cloned()
            .collect()
    }

    /// The objects as the stores would hold them: typed Namespaces and Services, dynamic
    /// bindings and policies.
    fn objects(text: &str) -> ClusterObjects {
        let values = documents(text);
        let typed = |kind: &str| -> Vec<Value> { of_kind(&values, kind) };
        ClusterObjects {
            namespaces: typed("Namespace")
                .into_iter()
                .map(|value| Arc::new(serde_json::from_value(value).unwrap()))
                .collect(),
            services: typed("Service")
                .into_iter()
                .map(|mut value| {
                    // Services in a manifest without a namespace land in `default`.
                    if value.pointer("/metadata/namespace").is_none() {
                        value["metadata"]["namespace"] = json!("default");
                    }
                    Arc::new(serde_json::from_value(value).unwrap())
                })
                .collect(),
            bindings: Bindings::Known(dynamic(typed("TargetGroupBinding"))),
            policies: dynamic(typed("GracePolicy")),
        }
    }

    fn dynamic(values: Vec<Value>) -> Vec<Arc<DynamicObject>> {
        values
            .into_iter()
            .map(|value| Arc::new(serde_json::from_value(value).unwrap()))
            .collect()
    }

    fn builder() -> ViewBuilder {
        ViewBuilder::new(Vec::new(), PreStopStyle::NativeSleep).unwrap()
    }

    #[test]
    fn alb_objects_of_the_2048_example() {
        let built = builder().build(&objects(&format!("{SERVICES_2048}\n---\n{CLUSTER_2048}")));
        let view = built.view;
        assert_eq!(view.alb_unavailable, None);
        let namespace = &view.namespaces["game-2048"];
        assert!(namespace.opted_in());
        assert_eq!(namespace.annotations["gracegate.io/shutdown-seconds"], "15");
        let game = &view.alb["game-2048"];
        let names: Vec<_> = game.bindings.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "k8s-game2048-instance-abcdef",
                "k8s-game2048-orphan-abcdef",
                "k8s-game2048-service2-0123456789"
            ]
        );
        assert_eq!(game.bindings[2].service_name, "service-2048");
        assert_eq!(game.bindings[2].target_type.as_deref(), Some("ip"));
        assert_eq!(game.services.len(), 1);
        assert_eq!(game.services[0].name, "service-2048");
        assert_eq!(
            game.services[0].selector["app.kubernetes.io/name"],
            "app-2048"
        );
        // The binding in `other` points at a Service of that name in `other`, which does not
        // exist: a Service never matches across namespaces.
        assert!(view.alb["other"].services.is_empty());
    }

    #[test]
    fn services_no_binding_points_at_are_left_out() {
        let text = format!("{GUESTBOOK_SERVICES}\n---\n{SERVICES_2048}\n---\n{CLUSTER_2048}");
        let built = builder().build(&objects(&text));
        assert!(
            !built.view.alb.contains_key("default"),
            "guestbook has no bindings"
        );
        assert_eq!(built.view.alb["game-2048"].services.len(), 1);
        // With a binding, the guestbook's frontend Service is kept.
        let binding = "\
apiVersion: elbv2.k8s.aws/v1beta1
kind: TargetGroupBinding
metadata: {namespace: default, name: frontend-tgb}
spec: {serviceRef: {name: frontend, port: 80}, targetType: ip}
";
        let built = builder().build(&objects(&format!("{GUESTBOOK_SERVICES}\n---\n{binding}")));
        let services: Vec<_> = built.view.alb["default"]
            .services
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(services, ["frontend"]);
    }

    /// The server's view and `gracegate mutate`'s view of the same objects give the same
    /// mutation, gate included.
    #[test]
    fn the_watched_view_mutates_like_gracegate_mutate() {
        let cluster = format!("{SERVICES_2048}\n---\n{CLUSTER_2048}");
        let offline_input = format!("{cluster}\n---\n{DEPLOYMENT_2048}");
        let outcomes = manifests::process(
            &offline_input,
            Path::new("input.yaml"),
            Vec::new(),
            PreStopStyle::NativeSleep,
        )
        .unwrap();
        let offline = outcomes
            .iter()
            .find_map(|outcome| outcome.workload.as_ref())
            .and_then(|workload| workload.mutation.as_ref())
            .unwrap();

        let view = builder().build(&objects(&cluster)).view;
        let deployment = &documents(DEPLOYMENT_2048)[0];
        let namespace = view.namespace("game-2048");
        let mutation = engine::mutate(
            &deployment["spec"]["template"],
            &view.context(&namespace, Some("Deployment")),
        )
        .unwrap();
        assert_eq!(mutation, *offline);
        assert_eq!(
            mutation.summary.gates,
            ["target-health.elbv2.k8s.aws/k8s-game2048-service2-0123456789"]
        );
    }

    #[test]
    fn unavailable_bindings_are_passed_on() {
        let mut objects = objects(&format!("{SERVICES_2048}\n---\n{CLUSTER_2048}"));
        objects.bindings = Bindings::Unavailable("API server answered 403 Forbidden".to_owned());
        let view = builder().build(&objects).view;
        assert_eq!(
            view.alb_unavailable.as_deref(),
            Some("API server answered 403 Forbidden")
        );
        assert!(view.alb.is_empty());
        let namespace = view.namespace("game-2048");
        let deployment = &documents(DEPLOYMENT_2048)[0];
        let mutation = engine::mutate(
            &deployment["spec"]["template"],
            &view.context(&namespace, Some("Deployment")),
        )
        .unwrap();
        assert!(mutation.summary.gates.is_empty());
        assert!(
            mutation
                .warnings
                .iter()
                .any(|warning| warning.contains("403 Forbidden")),
            "{:?}",
            mutation.warnings
        );
        assert!(
            mutation.summary.changed(),
            "everything else is still injected"
        );
    }

    #[test]
    fn cluster_policies_choose_by_namespace_and_keep_the_last_good_version() {
        let policy = |seconds: i64, generation: i64| {
            format!(
                "\
apiVersion: gracegate.io/v1alpha1
kind: GracePolicy
metadata: {{name: games, generation: {generation}}}
spec:
  namespaceSelector: {{matchLabels: {{gracegate.io/alb-readiness-gates: enabled}}}}
  priority: 10
  preStop: {{seconds: {seconds}}}
"
            )
        };
        let mut builder =
            ViewBuilder::new(vec![GracePolicy::builtin()], PreStopStyle::Exec).unwrap();
        let text =
            |seconds, generation| format!("{CLUSTER_2048}\n---\n{}", policy(seconds, generation));
        let chosen = |built: &Built| {
            let namespace = built.view.namespace("game-2048");
            let context = built.view.context(&namespace, None);
            (
                context.policy.name().to_owned(),
                context.policy.spec.pre_stop.seconds,
            )
        };

        let built = builder.build(&objects(&text(12, 1)));
        assert_eq!(chosen(&built), ("games".to_owned(), 12));
        assert_eq!(built.view.prestop_style, PreStopStyle::Exec);
        assert_eq!(
            built.policies.set.policies().len(),
            2,
            "file default + games"
        );

        let built = builder.build(&objects(&text(-12, 2)));
        assert_eq!(chosen(&built), ("games".to_owned(), 12));
        assert_eq!(built.policies.rejected().len(), 1);
        assert_eq!(built.policies.rejected()[0].0, "games");

        let built = builder.build(&objects(CLUSTER_2048));
        assert_eq!(chosen(&built), ("default".to_owned(), 10));
        assert_eq!(built.policies.removed, ["games"]);
    }

    #[test]
    fn policy_documents_get_their_type_filled_in() {
        let object: DynamicObject = serde_json::from_value(json!({
            "metadata": {"name": "bare"},
            "spec": {"priority": 1},
        }))
        .unwrap();
        let document = policy_document(&object);
        assert_eq!(document["apiVersion"], policy::API_VERSION);
        assert_eq!(document["kind"], policy::KIND);
        assert_eq!(GracePolicy::from_value(document).unwrap().spec.priority, 1);
        // A typed object keeps what it says.
        let object: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "gracegate.io/v2", "kind": "GracePolicy", "metadata": {"name": "x"},
        }))
        .unwrap();
        assert_eq!(policy_document(&object)["apiVersion"], "gracegate.io/v2");
    }

    #[test]
    fn the_view_does_not_depend_on_store_order() {
        let mut objects = objects(&format!("{SERVICES_2048}\n---\n{CLUSTER_2048}"));
        let first = builder().build(&objects).view;
        objects.namespaces.reverse();
        if let Bindings::Known(bindings) = &mut objects.bindings {
            bindings.reverse();
        }
        let second = builder().build(&objects).view;
        assert_eq!(first.alb, second.alb);
        assert_eq!(first.namespaces, second.namespaces);
    }
}
