//! The kube part: reflectors of Namespaces, Services, TargetGroupBindings and GracePolicies,
//! a view rebuilt from their stores at most once per [`DEBOUNCE`], and best-effort `Valid`
//! conditions on GracePolicies.
//!
//! Everything that decides something lives in the pure modules ([`super::sync`],
//! [`super::objects`], [`super::policies`]); this file only moves objects and events between
//! the API server and them.

use std::collections::HashMap;
use std::pin::{Pin, pin};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::reflector::{self, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::Value;
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;

use super::ClusterError;
use super::objects::{Bindings, Built, ClusterObjects, ViewBuilder};
use super::policies::{Outcome, Verdict, status_patch};
use super::sync::{Health, Resource, Signal, SyncState, signal};
use crate::engine::PreStopStyle;
use crate::policy::{self, GracePolicy};
use crate::view::ClusterView;

/// Longest wait between a change in the cluster and the view that shows it. A rollout or a
/// namespace-wide relabel is a burst of hundreds of events in a second; one rebuild per
/// 200 ms keeps that to a handful of rebuilds, while a single change shows up well within
/// the time the API server takes to create the pods it concerns.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// Field manager of the status patches gracegate writes.
const FIELD_MANAGER: &str = "gracegate";

/// `elbv2.k8s.aws/v1beta1` `TargetGroupBinding`, the AWS Load Balancer Controller's CRD.
pub fn target_group_binding_resource() -> ApiResource {
    ApiResource {
        group: "elbv2.k8s.aws".to_owned(),
        version: "v1beta1".to_owned(),
        api_version: "elbv2.k8s.aws/v1beta1".to_owned(),
        kind: "TargetGroupBinding".to_owned(),
        plural: "targetgroupbindings".to_owned(),
    }
}

/// `gracegate.io/v1alpha1` `GracePolicy` (cluster-scoped).
pub fn grace_policy_resource() -> ApiResource {
    ApiResource {
        group: "gracegate.io".to_owned(),
        version: "v1alpha1".to_owned(),
        api_version: policy::API_VERSION.to_owned(),
        kind: policy::KIND.to_owned(),
        plural: "gracepolicies".to_owned(),
    }
}

/// Watches the cluster and publishes a [`ClusterView`] after every change, at most once per
/// [`DEBOUNCE`]. Runs until a watch stream ends, which kube's watchers never do on their own
/// (they retry with backoff), so in practice until the future is dropped.
///
/// - `file_policies`: the `--policy-file` policies; a cluster GracePolicy of the same name
///   takes their place while it exists (see [`super::PolicyReport`]).
/// - `publish`: called with each new view. The first view comes once Namespaces, Services and
///   GracePolicies are listed and TargetGroupBindings are listed or known to be unavailable.
/// - `synced`: called with `(resource, synced)` for [`Resource::name`]s: `false` for every
///   resource at start, then on every change. A resource whose CRD is not installed counts
///   as synced (it has no objects). `targetgroupbindings` goes back to `false` while its watch
///   fails; the published view then has `alb_unavailable` set and pods still get everything
///   but ALB gates, so a server should not hold `/readyz` back on that resource alone.
///
/// Invalid cluster GracePolicies are logged and get a `Valid=False` condition through the
/// `gracepolicies/status` subresource (needs RBAC `patch` on it); a status write that fails is
/// logged and never stops the watch.
pub async fn watch(
    client: Client,
    file_policies: Vec<GracePolicy>,
    prestop_style: PreStopStyle,
    publish: impl Fn(ClusterView) + Send + Sync + 'static,
    synced: impl Fn(&'static str, bool) + Send + Sync + 'static,
) -> Result<(), ClusterError> {
    let mut builder = ViewBuilder::new(file_policies, prestop_style)?;
    for resource in Resource::ALL {
        synced(resource.name(), false);
    }
    // Served from the API server's watch cache rather than a quorum read of etcd: every
    // gracegate replica lists everything at start and after every desync.
    let config = watcher::Config::default().any_semantic();
    let bindings_resource = target_group_binding_resource();
    let policies_resource = grace_policy_resource();

    // managedFields (and a Service's annotations, often a whole kubectl last-applied copy)
    // are never read; dropping them roughly halves what the stores hold.
    let (namespaces, writer) = reflector::store::<Namespace>();
    let mut namespace_events = pin!(
        watcher(Api::<Namespace>::all(client.clone()), config.clone())
            .default_backoff()
            .modify(|namespace| namespace.managed_fields_mut().clear())
            .reflect(writer)
    );
    let (services, writer) = reflector::store::<Service>();
    let mut service_events = pin!(
        watcher(Api::<Service>::all(client.clone()), config.clone())
            .default_backoff()
            .modify(|service| {
                service.managed_fields_mut().clear();
                service.metadata.annotations = None;
                service.status = None;
            })
            .reflect(writer)
    );
    let writer = Writer::new(bindings_resource.clone());
    let bindings = writer.as_reader();
    let mut binding_events = pin!(
        watcher(
            Api::<DynamicObject>::all_with(client.clone(), &bindings_resource),
            config.clone(),
        )
        .default_backoff()
        .modify(|binding| binding.managed_fields_mut().clear())
        .reflect(writer)
    );
    let policy_api = Api::<DynamicObject>::all_with(client.clone(), &policies_resource);
    let writer = Writer::new(policies_resource.clone());
    let policies = writer.as_reader();
    let mut policy_events = pin!(
        watcher(policy_api.clone(), config)
            .default_backoff()
            .modify(|policy| policy.managed_fields_mut().clear())
            .reflect(writer)
    );

    let stores = Stores {
        namespaces,
        services,
        bindings,
        policies,
    };
    let mut state = SyncState::default();
    let mut rebuild_at: Option<Instant> = None;
    let mut published = false;
    let mut status_writes: JoinSet<(String, Result<(), kube::Error>)> = JoinSet::new();
    // The last verdict written (or attempted) per policy: a write that fails for want of RBAC
    // is not retried on every rebuild, only when the verdict changes.
    let mut written: HashMap<String, Verdict> = HashMap::new();
    loop {
        let wake = tokio::select! {
            item = next_item(&mut namespace_events) => {
                Wake::Stream(Resource::Namespaces, observe(Resource::Namespaces, item))
            }
            item = next_item(&mut service_events) => {
                Wake::Stream(Resource::Services, observe(Resource::Services, item))
            }
            item = next_item(&mut binding_events) => {
                Wake::Stream(Resource::TargetGroupBindings, observe(Resource::TargetGroupBindings, item))
            }
            item = next_item(&mut policy_events) => {
                Wake::Stream(Resource::GracePolicies, observe(Resource::GracePolicies, item))
            }
            () = tokio::time::sleep_until(rebuild_at.unwrap_or_else(Instant::now)),
                if rebuild_at.is_some() => Wake::Rebuild,
            Some(joined) = status_writes.join_next(), if !status_writes.is_empty() => {
                Wake::StatusWritten(joined)
            }
        };
        match wake {
            Wake::Stream(resource, Item::Ended) => {
                return Err(ClusterError::WatchEnded {
                    resource: resource.name(),
                });
            }
            Wake::Stream(_, Item::Ignored) => {}
            Wake::Stream(resource, Item::Signal(signal)) => {
                let transition = state.apply(resource, signal);
                if let Some(now_synced) = transition.synced {
                    tracing::info!(
                        resource = resource.name(),
                        synced = now_synced,
                        "cache sync changed"
                    );
                    synced(resource.name(), now_synced);
                }
                if let Some(health) = &transition.health {
                    log_health(resource, health);
                }
                // Throttle rather than debounce: a steady stream of events must not put the
                // rebuild off forever.
                if transition.rebuild && state.ready() && rebuild_at.is_none() {
                    rebuild_at = Some(Instant::now() + DEBOUNCE);
                }
            }
            Wake::Rebuild => {
                rebuild_at = None;
                let built = builder.build(&stores.objects(&state));
                log_policies(&built);
                if *state.health(Resource::GracePolicies) == Health::Listed {
                    write_statuses(
                        &built,
                        &stores.policies,
                        &policy_api,
                        &mut written,
                        &mut status_writes,
                    );
                }
                let view = built.view;
                if published {
                    tracing::debug!(
                        namespaces = view.namespaces.len(),
                        alb_namespaces = view.alb.len(),
                        policies = view.policies.policies().len(),
                        "cluster view updated"
                    );
                } else {
                    published = true;
                    tracing::info!(
                        namespaces = view.namespaces.len(),
                        alb_namespaces = view.alb.len(),
                        policies = view.policies.policies().len(),
                        alb_unavailable = view.alb_unavailable.as_deref(),
                        "cluster view ready"
                    );
                }
                publish(view);
            }
            Wake::StatusWritten(Ok((name, Ok(())))) => {
                tracing::debug!(policy = %name, "GracePolicy status written");
            }
            Wake::StatusWritten(Ok((name, Err(error)))) => {
                tracing::warn!(
                    policy = %name,
                    %error,
                    "cannot write the GracePolicy's Valid condition (needs patch on gracepolicies/status); the verdict stands"
                );
            }
            Wake::StatusWritten(Err(error)) => {
                tracing::warn!(%error, "a GracePolicy status write did not finish");
            }
        }
    }
}

/// What woke the watch loop.
enum Wake {
    /// A watch stream yielded (or ended).
    Stream(Resource, Item),
    /// The debounce delay is over.
    Rebuild,
    /// A status write finished.
    StatusWritten(Result<(String, Result<(), kube::Error>), JoinError>),
}

/// A watch stream item, reduced.
enum Item {
    /// The stream ended.
    Ended,
    /// An event of a (re)list in progress.
    Ignored,
    /// Something the sync state needs to hear.
    Signal(Signal),
}

/// The readers of the four reflectors.
struct Stores {
    namespaces: Store<Namespace>,
    services: Store<Service>,
    bindings: Store<DynamicObject>,
    policies: Store<DynamicObject>,
}

impl Stores {
    /// What the stores hold, with TargetGroupBindings and GracePolicies as their health says:
    /// an absent CRD has no objects, whatever a store kept from before it was deleted.
    fn objects(&self, state: &SyncState) -> ClusterObjects {
        let bindings = match state.health(Resource::TargetGroupBindings) {
            Health::Listed => Bindings::Known(self.bindings.state()),
            Health::Absent => Bindings::Known(Vec::new()),
            Health::Failed(reason) => {
                Bindings::Unavailable(format!("TargetGroupBinding watch: {reason}"))
            }
            Health::Pending => {
                Bindings::Unavailable("TargetGroupBindings not listed yet".to_owned())
            }
        };
        let policies = match state.health(Resource::GracePolicies) {
            Health::Absent => Vec::new(),
            _ => self.policies.state(),
        };
        ClusterObjects {
            namespaces: self.namespaces.state(),
            services: self.services.state(),
            bindings,
            policies,
        }
    }
}

/// The next item of a watch stream.
// futures' `StreamExt::next` is the usual way, but futures is not a direct dependency; the
// `WatchStreamExt` bound carries its supertrait `Stream`, and so `poll_next`.
async fn next_item<S: WatchStreamExt + Unpin>(stream: &mut S) -> Option<S::Item> {
    std::future::poll_fn(|context| Pin::new(&mut *stream).poll_next(context)).await
}

/// Logs a stream item that needs it and reduces it for the sync state.
fn observe<K>(resource: Resource, item: Option<Result<watcher::Event<K>, watcher::Error>>) -> Item {
    let Some(item) = item else {
        return Item::Ended;
    };
    if let Err(error) = &item {
        // The watcher retries with backoff (0.8 s doubling to 30 s), so this is at most one
        // line per retry.
        tracing::warn!(resource = resource.name(), %error, "watch error; retrying");
    }
    match signal(item) {
        Some(signal) => Item::Signal(signal),
        None => Item::Ignored,
    }
}

fn log_health(resource: Resource, health: &Health) {
    let resource = resource.name();
    match health {
        Health::Listed => tracing::info!(resource, "listed"),
        Health::Absent => tracing::info!(
            resource,
            "the CRD is not installed: treating it as having no objects, and retrying"
        ),
        Health::Failed(reason) if resource == Resource::TargetGroupBindings.name() => {
            tracing::warn!(resource, %reason, "ALB readiness gates are off until the watch recovers");
        }
        Health::Failed(reason) => tracing::warn!(resource, %reason, "cannot list"),
        Health::Pending => {}
    }
}

fn log_policies(built: &Built) {
    for verdict in &built.policies.changed {
        let policy = verdict.name.as_str();
        let generation = verdict.generation;
        match &verdict.outcome {
            Outcome::Accepted { overrides_file } => {
                tracing::info!(policy, generation, overrides_file, "GracePolicy accepted")
            }
            Outcome::Rejected { reason, in_force } => tracing::warn!(
                policy,
                generation,
                %reason,
                in_force = ?in_force,
                "GracePolicy rejected"
            ),
        }
    }
    for policy in &built.policies.removed {
        tracing::info!(policy = %policy, "GracePolicy removed");
    }
}

/// Starts a status write for every policy whose `Valid` condition does not say its verdict.
fn write_statuses(
    built: &Built,
    store: &Store<DynamicObject>,
    api: &Api<DynamicObject>,
    written: &mut HashMap<String, Verdict>,
    writes: &mut JoinSet<(String, Result<(), kube::Error>)>,
) {
    let objects = store.state();
    let statuses: HashMap<String, Option<&Value>> = objects
        .iter()
        .map(|object| (object.name_any(), object.data.get("status")))
        .collect();
    written.retain(|name, _| statuses.contains_key(name));
    for verdict in &built.policies.verdicts {
        if written.get(&verdict.name) == Some(verdict) {
            continue;
        }
        let current = statuses.get(&verdict.name).copied().flatten();
        let Some(patch) = status_patch(verdict, current, Timestamp::now()) else {
            continue;
        };
        written.insert(verdict.name.clone(), verdict.clone());
        let api = api.clone();
        let name = verdict.name.clone();
        writes.spawn(async move {
            let params = PatchParams {
                field_manager: Some(FIELD_MANAGER.to_owned()),
                ..PatchParams::default()
            };
            let result = api
                .patch_status(&name, &params, &Patch::Merge(&patch))
                .await
                .map(|_| ());
            (name, result)
        });
    }
}
