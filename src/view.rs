//! What the engine knows of the cluster: namespaces, the Services and TargetGroupBindings
//! behind ALB readiness gates, the policies, and the preStop style the cluster supports.
//!
//! Offline (`gracegate mutate`) a [`ClusterView`] is built from the objects in the input;
//! in the server, from watches of the cluster or nothing at all in standalone mode.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use crate::engine::{AlbLookup, Context, PreStopStyle};
use crate::policy::{GracePolicy, PolicySet};

/// Namespace label that turns gracegate on.
pub const INJECT_LABEL: &str = "gracegate.io/inject";

/// The labels and annotations of a namespace.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NamespaceView {
    /// The namespace's name.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its annotations (gracegate's pod annotations are valid here too).
    pub annotations: BTreeMap<String, String>,
}

impl NamespaceView {
    /// Reads a `Namespace` object.
    pub fn from_object(object: &Value) -> Option<Self> {
        Some(Self {
            name: object.pointer("/metadata/name")?.as_str()?.to_owned(),
            labels: string_map(object.pointer("/metadata/labels")),
            annotations: string_map(object.pointer("/metadata/annotations")),
        })
    }

    /// A namespace gracegate has not seen: the API server only calls the webhook for
    /// namespaces labelled `gracegate.io/inject=enabled`, so that label is assumed.
    pub fn assumed_opted_in(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            labels: BTreeMap::from([(INJECT_LABEL.to_owned(), "enabled".to_owned())]),
            annotations: BTreeMap::new(),
        }
    }

    /// Whether the webhook's namespaceSelector would send this namespace's pods to gracegate.
    pub fn opted_in(&self) -> bool {
        self.labels.get(INJECT_LABEL).map(String::as_str) == Some("enabled")
    }
}

/// A Service's name and pod selector.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceView {
    /// The Service's name.
    pub name: String,
    /// `spec.selector`; empty for a Service without one.
    pub selector: BTreeMap<String, String>,
}

impl ServiceView {
    /// Reads a `Service` object.
    pub fn from_object(object: &Value) -> Option<Self> {
        Some(Self {
            name: object.pointer("/metadata/name")?.as_str()?.to_owned(),
            selector: string_map(object.pointer("/spec/selector")),
        })
    }
}

/// A TargetGroupBinding (`elbv2.k8s.aws`) of the AWS Load Balancer Controller.
#[derive(Clone, Debug, PartialEq)]
pub struct BindingView {
    /// The binding's name; the readiness gate is `target-health.elbv2.k8s.aws/<name>`.
    pub name: String,
    /// `spec.serviceRef.name`.
    pub service_name: String,
    /// `spec.targetType` (`ip` or `instance`); only `ip` targets are pods.
    pub target_type: Option<String>,
}

impl BindingView {
    /// Reads a `TargetGroupBinding` object.
    pub fn from_object(object: &Value) -> Option<Self> {
        Some(Self {
            name: object.pointer("/metadata/name")?.as_str()?.to_owned(),
            service_name: object
                .pointer("/spec/serviceRef/name")?
                .as_str()?
                .to_owned(),
            target_type: object
                .pointer("/spec/targetType")
                .and_then(Value::as_str)
                .map(str::to_owned),
        })
    }
}

/// The Services and TargetGroupBindings of one namespace.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AlbObjects {
    /// Services of the namespace.
    pub services: Vec<ServiceView>,
    /// TargetGroupBindings of the namespace.
    pub bindings: Vec<BindingView>,
}

static NO_ALB_OBJECTS: AlbObjects = AlbObjects {
    services: Vec::new(),
    bindings: Vec::new(),
};

/// Everything the engine may consult, for every namespace.
#[derive(Clone, Debug)]
pub struct ClusterView {
    /// Known namespaces by name.
    pub namespaces: HashMap<String, NamespaceView>,
    /// ALB objects by namespace.
    pub alb: HashMap<String, AlbObjects>,
    /// Why ALB objects cannot be trusted right now (a failed watch), if they cannot.
    pub alb_unavailable: Option<String>,
    /// The GracePolicies.
    pub policies: PolicySet,
    /// The policy used when none matches.
    pub builtin: GracePolicy,
    /// The preStop handler the cluster supports.
    pub prestop_style: PreStopStyle,
}

impl Default for ClusterView {
    fn default() -> Self {
        Self::new(PolicySet::default(), PreStopStyle::NativeSleep)
    }
}

impl ClusterView {
    /// A view with no namespaces or ALB objects.
    pub fn new(policies: PolicySet, prestop_style: PreStopStyle) -> Self {
        Self {
            namespaces: HashMap::new(),
            alb: HashMap::new(),
            alb_unavailable: None,
            policies,
            builtin: GracePolicy::builtin(),
            prestop_style,
        }
    }

    /// The namespace of that name, or an opted-in stand-in for one not seen.
    pub fn namespace(&self, name: &str) -> NamespaceView {
        self.namespaces
            .get(name)
            .cloned()
            .unwrap_or_else(|| NamespaceView::assumed_opted_in(name))
    }

    /// The engine's context for a pod in `namespace`. `workload_kind` is the kind of the
    /// workload when the pod is a template (`Deployment`, `CronJob`, ...).
    pub fn context<'a>(
        &'a self,
        namespace: &'a NamespaceView,
        workload_kind: Option<&'a str>,
    ) -> Context<'a> {
        let selected = self.policies.select(&namespace.labels, &self.builtin);
        let alb = match &self.alb_unavailable {
            Some(reason) => AlbLookup::Unavailable(reason),
            None => AlbLookup::Known(self.alb.get(&namespace.name).unwrap_or(&NO_ALB_OBJECTS)),
        };
        Context {
            namespace,
            policy: selected.policy,
            policy_warning: selected.warning,
            alb,
            prestop_style: self.prestop_style,
            workload_kind,
        }
    }
}

/// Reads a `map[string]string` such as labels; values that are not strings are dropped.
pub fn string_map(value: Option<&Value>) -> BTreeMap<String, String> {
    value
        .and_then(Value::as_object)
        .map(|map| {
            map.iter()
                .filter_map(|(key, value)| Some((key.clone(), value.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}
