//! The kube part: reflectors of Namespaces, Services, TargetGroupBindings and GracePolicies,
//! the loop that feeds their events to the refresher, and the best-effort writes of the
//! GracePolicies' `Valid` condition.
//!
//! Everything that decides something lives in the modules without network (`sync`,
//! `objects`, `policies`, `refresh`); this file only moves objects and events between the
//! API server and them.

use std::pin::pin;

use futures::StreamExt as _;

use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;

use super::ClusterError;
use super::objects::ViewBuilder;
use super::refresh::{Item, Refresher, StatusWrite, Stores};
use super::sync::{Resource, Signal, signal};
use crate::engine::PreStopStyle;
use crate::policy::{self, GracePolicy};
use crate::view::ClusterView;

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
/// [`super::DEBOUNCE`]. Runs until a watch stream ends, which kube's watchers never do on
/// their own (they retry with backoff), so in practice until the future is dropped.
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
    let builder = ViewBuilder::new(file_policies, prestop_style)?;
    // Served from the API server's watch cache rather than a quorum read of etcd: every
    // gracegate replica lists everything at start and after every desync.
    let config = watcher::Config::default().any_semantic();
    let bindings_resource = target_group_binding_resource();
    let policies_resource = grace_policy_resource();

    // managedFields (and a Service's annotations, often a whole kubectl last-applied copy,
    // and status) are never read and are often most of an object: the stores drop them.
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
    let mut refresher = Refresher::new(builder, stores, publish, synced);
    let mut status_writes: JoinSet<(String, Result<(), kube::Error>)> = JoinSet::new();
    loop {
        let wake = tokio::select! {
            item = namespace_events.next() => {
                Wake::Stream(Resource::Namespaces, observe(Resource::Namespaces, item))
            }
            item = service_events.next() => {
                Wake::Stream(Resource::Services, observe(Resource::Services, item))
            }
            item = binding_events.next() => {
                Wake::Stream(
                    Resource::TargetGroupBindings,
                    observe(Resource::TargetGroupBindings, item),
                )
            }
            item = policy_events.next() => {
                Wake::Stream(Resource::GracePolicies, observe(Resource::GracePolicies, item))
            }
            () = tokio::time::sleep_until(refresher.rebuild_at().unwrap_or_else(Instant::now)),
                if refresher.rebuild_at().is_some() => Wake::Rebuild,
            Some(joined) = status_writes.join_next(), if !status_writes.is_empty() => {
                Wake::StatusWritten(joined)
            }
        };
        match wake {
            Wake::Stream(resource, item) => refresher.on_item(resource, item, Instant::now())?,
            Wake::Rebuild => {
                for write in refresher.rebuild(Timestamp::now()) {
                    status_writes.spawn(write_status(policy_api.clone(), write));
                }
            }
            Wake::StatusWritten(Ok((name, Ok(())))) => {
                tracing::debug!(policy = %name, "GracePolicy status written");
            }
            Wake::StatusWritten(Ok((name, Err(error)))) => {
                tracing::warn!(
                    policy = %name,
                    %error,
                    "cannot write the GracePolicy's Valid condition (needs patch on \
                     gracepolicies/status); the verdict stands"
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
    /// The throttle delay is over.
    Rebuild,
    /// A status write finished.
    StatusWritten(Result<(String, Result<(), kube::Error>), JoinError>),
}

/// Writes one `Valid` condition; the caller logs the outcome.
async fn write_status(
    api: Api<DynamicObject>,
    write: StatusWrite,
) -> (String, Result<(), kube::Error>) {
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    let result = api
        .patch_status(&write.name, &params, &Patch::Merge(&write.patch))
        .await
        .map(|_| ());
    (write.name, result)
}

/// Logs a stream item that needs it and reduces it for the sync state.
fn observe<K>(resource: Resource, item: Option<Result<watcher::Event<K>, watcher::Error>>) -> Item {
    let Some(item) = item else {
        return Item::Ended;
    };
    let error = item.as_ref().err().map(ToString::to_string);
    let Some(signal) = signal(item) else {
        return Item::Ignored;
    };
    if let Some(error) = error {
        let resource = resource.name();
        match signal {
            // A missing CRD is retried with the same backoff (up to every 30 s) for as long
            // as gracegate runs; `refresh` says it once, at info.
            Signal::NotFound | Signal::Desynced => {
                tracing::debug!(resource, %error, "watch error; retrying");
            }
            _ => tracing::warn!(resource, %error, "watch error; retrying"),
        }
    }
    Item::Signal(signal)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The server spawns the watch on its runtime: the future must be `Send + 'static`.
    /// Checked by the compiler, never run.
    fn _watch_can_be_spawned(client: Client) {
        fn spawnable<T: Send + 'static>(_: &T) {}
        let future = watch(
            client,
            Vec::new(),
            PreStopStyle::NativeSleep,
            |_| {},
            |_, _| {},
        );
        spawnable(&future);
    }

    #[test]
    fn resources_name_the_crds() {
        let binding = target_group_binding_resource();
        assert_eq!(
            binding,
            ApiResource::from_gvk_with_plural(
                &kube::api::GroupVersionKind::gvk("elbv2.k8s.aws", "v1beta1", "TargetGroupBinding"),
                "targetgroupbindings",
            )
        );
        let policy = grace_policy_resource();
        assert_eq!(
            policy,
            ApiResource::from_gvk_with_plural(
                &kube::api::GroupVersionKind::gvk("gracegate.io", "v1alpha1", "GracePolicy"),
                "gracepolicies",
            )
        );
    }

    #[test]
    fn list_errors_of_a_missing_crd_are_not_failures() {
        let status = kube::core::Status::failure(
            "the server could not find the requested resource",
            "NotFound",
        )
        .with_code(404)
        .boxed();
        let item: Option<Result<watcher::Event<()>, _>> = Some(Err(
            watcher::Error::InitialListFailed(kube::Error::Api(status)),
        ));
        assert_eq!(
            observe(Resource::TargetGroupBindings, item),
            Item::Signal(Signal::NotFound)
        );
        assert_eq!(observe::<()>(Resource::Services, None), Item::Ended);
        assert_eq!(
            observe(Resource::Services, Some(Ok(watcher::Event::InitApply(())))),
            Item::Ignored
        );
    }
}
