//! The core of the watch loop, without the network: watch items in, sync reports, throttled
//! view rebuilds and the GracePolicy status writes to start out.
//!
//! The loop in `watch` owns the streams and the clock; this owns everything it decides, so
//! that tests drive it with reflector stores filled by hand.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::DynamicObject;
use kube::runtime::reflector::Store;
use serde_json::Value;
use tokio::time::Instant;

use super::ClusterError;
use super::objects::{Bindings, Built, ClusterObjects, ViewBuilder};
use super::policies::{Outcome, Verdict, status_patch};
use super::sync::{Health, Resource, Signal, SyncState};
use crate::view::ClusterView;

/// Longest wait between a change in the cluster and the view that shows it. A rollout or a
/// namespace-wide relabel is a burst of hundreds of events in a second; one rebuild per
/// 200 ms keeps that to a handful of rebuilds, while a single change shows up well within
/// the time the API server takes to create the pods it concerns.
pub const DEBOUNCE: std::time::Duration = std::time::Duration::from_millis(200);

/// A watch stream item, reduced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Item {
    /// The stream ended.
    Ended,
    /// An event of a (re)list in progress, which does not touch the store yet.
    Ignored,
    /// Something the sync state needs to hear.
    Signal(Signal),
}

/// A `Valid` condition to write on a GracePolicy's status subresource.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct StatusWrite {
    /// The policy's name.
    pub name: String,
    /// The JSON merge patch for `gracepolicies/<name>/status`.
    pub patch: Value,
}

/// The readers of the four reflectors.
#[derive(Clone)]
pub(crate) struct Stores {
    /// Namespaces.
    pub namespaces: Store<Namespace>,
    /// Services of all namespaces.
    pub services: Store<Service>,
    /// TargetGroupBindings of all namespaces.
    pub bindings: Store<DynamicObject>,
    /// GracePolicies.
    pub policies: Store<DynamicObject>,
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

/// Turns watch items into sync reports and throttled view rebuilds.
pub(crate) struct Refresher<P, S> {
    builder: ViewBuilder,
    stores: Stores,
    state: SyncState,
    rebuild_at: Option<Instant>,
    published: bool,
    // The last verdict written (or attempted) per policy: a write that fails for want of RBAC
    // is not retried on every rebuild, only when the verdict changes.
    written: HashMap<String, Verdict>,
    publish: P,
    synced: S,
}

impl<P: Fn(ClusterView), S: Fn(&'static str, bool)> Refresher<P, S> {
    /// A refresher over these stores; reports every resource as not synced.
    pub fn new(builder: ViewBuilder, stores: Stores, publish: P, synced: S) -> Self {
        for resource in Resource::ALL {
            synced(resource.name(), false);
        }
        Self {
            builder,
            stores,
            state: SyncState::default(),
            rebuild_at: None,
            published: false,
            written: HashMap::new(),
            publish,
            synced,
        }
    }

    /// When the next rebuild is due, if one is.
    pub fn rebuild_at(&self) -> Option<Instant> {
        self.rebuild_at
    }

    /// Takes in an item of `resource`'s stream, seen at `now`.
    pub fn on_item(
        &mut self,
        resource: Resource,
        item: Item,
        now: Instant,
    ) -> Result<(), ClusterError> {
        let signal = match item {
            Item::Ended => {
                return Err(ClusterError::WatchEnded {
                    resource: resource.name(),
                });
            }
            Item::Ignored => return Ok(()),
            Item::Signal(signal) => signal,
        };
        let transition = self.state.apply(resource, signal);
        if let Some(synced) = transition.synced {
            tracing::info!(resource = resource.name(), synced, "cache sync changed");
            (self.synced)(resource.name(), synced);
        }
        if let Some(health) = &transition.health {
            log_health(resource, health);
        }
        // Throttle rather than debounce: a steady trickle of events must not put the rebuild
        // off forever.
        if transition.rebuild && self.state.ready() && self.rebuild_at.is_none() {
            self.rebuild_at = Some(now + DEBOUNCE);
        }
        Ok(())
    }

    /// Rebuilds and publishes the view, and returns the status writes to start (`now` is
    /// their transition time).
    pub fn rebuild(&mut self, now: Timestamp) -> Vec<StatusWrite> {
        self.rebuild_at = None;
        let built = self.builder.build(&self.stores.objects(&self.state));
        log_policies(&built);
        let writes = if *self.state.health(Resource::GracePolicies) == Health::Listed {
            self.status_writes(&built, now)
        } else {
            Vec::new()
        };
        let view = built.view;
        if self.published {
            tracing::debug!(
                namespaces = view.namespaces.len(),
                alb_namespaces = view.alb.len(),
                policies = view.policies.policies().len(),
                "cluster view updated"
            );
        } else {
            self.published = true;
            tracing::info!(
                namespaces = view.namespaces.len(),
                alb_namespaces = view.alb.len(),
                policies = view.policies.policies().len(),
                alb_unavailable = view.alb_unavailable.as_deref(),
                "cluster view ready"
            );
        }
        (self.publish)(view);
        writes
    }

    /// A status write for every policy whose `Valid` condition does not say its verdict.
    fn status_writes(&mut self, built: &Built, now: Timestamp) -> Vec<StatusWrite> {
        let objects = self.stores.policies.state();
        let statuses: HashMap<String, Option<&Value>> = objects
            .iter()
            .map(|object| (object.name_any(), object.data.get("status")))
            .collect();
        self.written.retain(|name, _| statuses.contains_key(name));
        let mut writes = Vec::new();
        for verdict in &built.policies.verdicts {
            if self.written.get(&verdict.name) == Some(verdict) {
                continue;
            }
            let current = statuses.get(&verdict.name).copied().flatten();
            if let Some(patch) = status_patch(verdict, current, now) {
                self.written.insert(verdict.name.clone(), verdict.clone());
                writes.push(StatusWrite {
                    name: verdict.name.clone(),
                    patch,
                });
            }
        }
        writes
    }
}

fn log_health(resource: Resource, health: &Health) {
    let name = resource.name();
    match health {
        Health::Listed => tracing::info!(resource = name, "listed"),
        Health::Absent => tracing::info!(
            resource = name,
            "the CRD is not installed: no objects of this kind; retrying in the background"
        ),
        Health::Failed(reason) if resource == Resource::TargetGroupBindings => tracing::warn!(
            resource = name,
            %reason,
            "ALB readiness gates are off until the watch recovers"
        ),
        Health::Failed(reason) => tracing::warn!(resource = name, %reason, "cannot list"),
        Health::Pending => {}
    }
}

fn log_policies(built: &Built) {
    for verdict in &built.policies.changed {
        let policy = verdict.name.as_str();
        let generation = verdict.generation;
        match &verdict.outcome {
            Outcome::Accepted { overrides_file } => {
                tracing::info!(policy, generation, overrides_file, "GracePolicy accepted");
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use kube::runtime::reflector::{self, store::Writer};
    use kube::runtime::watcher::Event;
    use serde_json::json;

    use super::*;
    use crate::cluster::{grace_policy_resource, target_group_binding_resource};
    use crate::engine::PreStopStyle;

    struct Harness {
        namespaces: Writer<Namespace>,
        services: Writer<Service>,
        bindings: Writer<DynamicObject>,
        policies: Writer<DynamicObject>,
        published: Arc<Mutex<Vec<ClusterView>>>,
        synced: Arc<Mutex<Vec<(&'static str, bool)>>>,
    }

    type TestRefresher = Refresher<Box<dyn Fn(ClusterView)>, Box<dyn Fn(&'static str, bool)>>;

    fn harness() -> (Harness, TestRefresher) {
        let (namespace_store, namespaces) = reflector::store::<Namespace>();
        let (service_store, services) = reflector::store::<Service>();
        let bindings = Writer::new(target_group_binding_resource());
        let policies = Writer::new(grace_policy_resource());
        let stores = Stores {
            namespaces: namespace_store,
            services: service_store,
            bindings: bindings.as_reader(),
            policies: policies.as_reader(),
        };
        let published = Arc::new(Mutex::new(Vec::new()));
        let synced = Arc::new(Mutex::new(Vec::new()));
        let (into_published, into_synced) = (published.clone(), synced.clone());
        let refresher = Refresher::new(
            ViewBuilder::new(Vec::new(), PreStopStyle::NativeSleep).unwrap(),
            stores,
            Box::new(move |view| into_published.lock().unwrap().push(view)) as Box<dyn Fn(_)>,
            Box::new(move |resource, synced| into_synced.lock().unwrap().push((resource, synced)))
                as Box<dyn Fn(_, _)>,
        );
        let harness = Harness {
            namespaces,
            services,
            bindings,
            policies,
            published,
            synced,
        };
        (harness, refresher)
    }

    /// A full list of `objects` through a writer, as the reflector applies it.
    fn list<K>(writer: &mut Writer<K>, objects: Vec<K>)
    where
        K: kube::Resource + Clone + 'static,
        K::DynamicType: Eq + std::hash::Hash + Clone,
    {
        writer.apply_watcher_event(&Event::Init);
        for object in objects {
            writer.apply_watcher_event(&Event::InitApply(object));
        }
        writer.apply_watcher_event(&Event::InitDone);
    }

    fn object<K: serde::de::DeserializeOwned>(value: Value) -> K {
        serde_json::from_value(value).unwrap()
    }

    fn policy(name: &str, generation: i64, seconds: i64, status: Option<Value>) -> DynamicObject {
        let mut value = json!({
            "apiVersion": "gracegate.io/v1alpha1", "kind": "GracePolicy",
            "metadata": {"name": name, "generation": generation},
            "spec": {"preStop": {"seconds": seconds}},
        });
        if let Some(status) = status {
            value["status"] = status;
        }
        object(value)
    }

    fn listed() -> Item {
        Item::Signal(Signal::Listed)
    }

    fn now() -> Timestamp {
        "2025-03-04T05:06:07Z".parse().unwrap()
    }

    #[test]
    fn first_view_once_everything_is_known_then_throttled_rebuilds() {
        let (mut cluster, mut refresher) = harness();
        assert_eq!(
            *cluster.synced.lock().unwrap(),
            [
                ("namespaces", false),
                ("services", false),
                ("targetgroupbindings", false),
                ("gracepolicies", false)
            ]
        );
        list(
            &mut cluster.namespaces,
            vec![object(json!({
                "metadata": {"name": "shop", "labels": {"gracegate.io/inject": "enabled"}}
            }))],
        );
        list(&mut cluster.services, Vec::new());
        list(&mut cluster.policies, vec![policy("shop", 1, 12, None)]);
        let start = Instant::now();
        refresher
            .on_item(Resource::Namespaces, listed(), start)
            .unwrap();
        refresher
            .on_item(Resource::Services, listed(), start)
            .unwrap();
        refresher
            .on_item(Resource::GracePolicies, listed(), start)
            .unwrap();
        assert_eq!(refresher.rebuild_at(), None, "bindings not known yet");

        let t1 = start + Duration::from_millis(30);
        refresher
            .on_item(
                Resource::TargetGroupBindings,
                Item::Signal(Signal::NotFound),
                t1,
            )
            .unwrap();
        assert_eq!(refresher.rebuild_at(), Some(t1 + DEBOUNCE));
        // More events inside the window do not move the rebuild.
        for step in 1..50 {
            let at = t1 + Duration::from_millis(step);
            refresher
                .on_item(Resource::Services, Item::Signal(Signal::Changed), at)
                .unwrap();
            refresher
                .on_item(Resource::Namespaces, Item::Ignored, at)
                .unwrap();
        }
        assert_eq!(refresher.rebuild_at(), Some(t1 + DEBOUNCE));
        assert!(cluster.published.lock().unwrap().is_empty());

        let writes = refresher.rebuild(now());
        assert_eq!(refresher.rebuild_at(), None);
        {
            let published = cluster.published.lock().unwrap();
            assert_eq!(published.len(), 1);
            let view = &published[0];
            assert!(view.namespaces["shop"].opted_in());
            assert_eq!(
                view.alb_unavailable, None,
                "no CRD, no bindings, no failure"
            );
            assert_eq!(view.policies.policies()[0].spec.pre_stop.seconds, 12);
        }
        assert_eq!(writes.len(), 1, "an accepted policy gets Valid=True");
        assert_eq!(writes[0].name, "shop");
        assert_eq!(writes[0].patch["status"]["conditions"][0]["status"], "True");
        assert!(
            cluster
                .synced
                .lock()
                .unwrap()
                .ends_with(&[("targetgroupbindings", true)])
        );
    }

    fn started() -> (Harness, TestRefresher) {
        let (mut cluster, mut refresher) = harness();
        list(&mut cluster.namespaces, Vec::new());
        list(&mut cluster.services, Vec::new());
        list(&mut cluster.bindings, Vec::new());
        list(&mut cluster.policies, Vec::new());
        let at = Instant::now();
        for resource in Resource::ALL {
            refresher.on_item(resource, listed(), at).unwrap();
        }
        refresher.rebuild(now());
        (cluster, refresher)
    }

    #[test]
    fn a_rejected_policy_gets_one_status_write_and_the_last_good_version_stays() {
        let (mut cluster, mut refresher) = started();
        let good = policy("web", 1, 15, None);
        cluster.policies.apply_watcher_event(&Event::Apply(good));
        refresher
            .on_item(
                Resource::GracePolicies,
                Item::Signal(Signal::Changed),
                Instant::now(),
            )
            .unwrap();
        let writes = refresher.rebuild(now());
        assert_eq!(writes.len(), 1);
        // The write lands: the watch brings the policy back with its status.
        let accepted = policy("web", 1, 15, Some(writes[0].patch["status"].clone()));
        cluster
            .policies
            .apply_watcher_event(&Event::Apply(accepted));
        assert!(refresher.rebuild(now()).is_empty());

        let bad = policy("web", 2, -1, None);
        cluster.policies.apply_watcher_event(&Event::Apply(bad));
        let writes = refresher.rebuild(now());
        assert_eq!(writes.len(), 1);
        let condition = &writes[0].patch["status"]["conditions"][0];
        assert_eq!(condition["status"], "False");
        assert_eq!(condition["observedGeneration"], 2);
        assert!(
            condition["message"]
                .as_str()
                .unwrap()
                .ends_with("the last valid version stays in force"),
            "{condition}"
        );
        let published = cluster.published.lock().unwrap();
        let view = published.last().unwrap();
        assert_eq!(view.policies.policies()[0].spec.pre_stop.seconds, 15);
        drop(published);
        // The write failed (no RBAC, say): it is not retried on every rebuild.
        assert!(refresher.rebuild(now()).is_empty());
    }

    #[test]
    fn a_status_that_already_says_the_verdict_is_not_rewritten() {
        let (mut cluster, mut refresher) = harness();
        let status = json!({"conditions": [{
            "type": "Valid", "status": "True", "reason": "Accepted",
            "message": "the policy is in force", "observedGeneration": 3,
            "lastTransitionTime": "2024-01-01T00:00:00Z",
        }]});
        list(&mut cluster.namespaces, Vec::new());
        list(&mut cluster.services, Vec::new());
        list(&mut cluster.bindings, Vec::new());
        list(
            &mut cluster.policies,
            vec![
                policy("current", 3, 5, Some(status.clone())),
                policy("edited", 4, 5, Some(status)),
            ],
        );
        for resource in Resource::ALL {
            refresher
                .on_item(resource, listed(), Instant::now())
                .unwrap();
        }
        let writes = refresher.rebuild(now());
        let names: Vec<_> = writes.iter().map(|write| write.name.as_str()).collect();
        assert_eq!(names, ["edited"], "generation 4 was not observed yet");
        let condition = &writes[0].patch["status"]["conditions"][0];
        assert_eq!(condition["observedGeneration"], 4);
        assert_eq!(condition["lastTransitionTime"], "2024-01-01T00:00:00Z");
    }

    #[test]
    fn failing_bindings_make_the_view_say_why() {
        let (mut cluster, mut refresher) = started();
        cluster
            .bindings
            .apply_watcher_event(&Event::Apply(object(json!({
                "apiVersion": "elbv2.k8s.aws/v1beta1", "kind": "TargetGroupBinding",
                "metadata": {"namespace": "shop", "name": "tgb"},
                "spec": {"serviceRef": {"name": "web", "port": 80}, "targetType": "ip"},
            }))));
        let at = Instant::now();
        refresher
            .on_item(
                Resource::TargetGroupBindings,
                Item::Signal(Signal::Changed),
                at,
            )
            .unwrap();
        refresher.rebuild(now());
        refresher
            .on_item(
                Resource::TargetGroupBindings,
                Item::Signal(Signal::Failed(
                    "API server answered 403 Forbidden".to_owned(),
                )),
                at,
            )
            .unwrap();
        assert!(refresher.rebuild_at().is_some());
        refresher.rebuild(now());
        let published = cluster.published.lock().unwrap();
        assert_eq!(published[1].alb["shop"].bindings[0].name, "tgb");
        assert_eq!(
            published[2].alb_unavailable.as_deref(),
            Some("TargetGroupBinding watch: API server answered 403 Forbidden")
        );
        assert!(published[2].alb.is_empty());
        assert!(
            cluster
                .synced
                .lock()
                .unwrap()
                .ends_with(&[("targetgroupbindings", false)])
        );
    }

    #[test]
    fn a_deleted_crd_empties_what_the_store_kept() {
        let (mut cluster, mut refresher) = started();
        cluster
            .policies
            .apply_watcher_event(&Event::Apply(policy("web", 1, 15, None)));
        refresher.rebuild(now());
        refresher
            .on_item(
                Resource::GracePolicies,
                Item::Signal(Signal::NotFound),
                Instant::now(),
            )
            .unwrap();
        let writes = refresher.rebuild(now());
        assert!(
            writes.is_empty(),
            "no status to write on a CRD that is gone"
        );
        let published = cluster.published.lock().unwrap();
        assert_eq!(published[1].policies.policies().len(), 1);
        assert!(published[2].policies.policies().is_empty());
    }

    #[test]
    fn an_ended_stream_is_an_error() {
        let (_cluster, mut refresher) = harness();
        let error = refresher
            .on_item(Resource::Services, Item::Ended, Instant::now())
            .unwrap_err();
        assert_eq!(error.to_string(), "the watch of services ended");
    }
}
