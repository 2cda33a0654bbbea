//! Whether each watched resource is synced, and what its watch stream's events and errors
//! mean for the view: when a view may first be published, and when ALB objects cannot be
//! trusted.
//!
//! Pure: the watch loop reduces each stream item to a [`Signal`] and feeds it here.

use kube::runtime::watcher;

/// A resource gracegate watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Resource {
    /// `v1` Namespaces: labels choose policies and turn gracegate and ALB gates on.
    Namespaces,
    /// `v1` Services, in all namespaces: their selectors tie pods to TargetGroupBindings.
    Services,
    /// `elbv2.k8s.aws/v1beta1` TargetGroupBindings of the AWS Load Balancer Controller.
    TargetGroupBindings,
    /// `gracegate.io/v1alpha1` GracePolicies.
    GracePolicies,
}

impl Resource {
    /// Every watched resource.
    pub const ALL: [Self; 4] = [
        Self::Namespaces,
        Self::Services,
        Self::TargetGroupBindings,
        Self::GracePolicies,
    ];

    /// The name used in logs, the `gracegate_cache_synced{resource}` metric and the
    /// `synced` callback: the resource's plural.
    pub fn name(self) -> &'static str {
        match self {
            Self::Namespaces => "namespaces",
            Self::Services => "services",
            Self::TargetGroupBindings => "targetgroupbindings",
            Self::GracePolicies => "gracepolicies",
        }
    }

    /// Whether the resource comes from a CustomResourceDefinition, which may not be
    /// installed: a 404 then means "none exist", not a failure.
    fn is_custom(self) -> bool {
        matches!(self, Self::TargetGroupBindings | Self::GracePolicies)
    }

    fn index(self) -> usize {
        match self {
            Self::Namespaces => 0,
            Self::Services => 1,
            Self::TargetGroupBindings => 2,
            Self::GracePolicies => 3,
        }
    }
}

/// One watch stream item, reduced to what the view cares about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Signal {
    /// An object was added, changed or deleted.
    Changed,
    /// A (re)list finished: the store now holds every object.
    Listed,
    /// The API server says the resource does not exist (its CRD is not installed).
    NotFound,
    /// The watch desynced (410 Gone); the watcher re-lists at once and the store stays valid.
    Desynced,
    /// Listing or watching failed, with a short reason.
    Failed(String),
}

/// Reduces a watch stream item to a [`Signal`]; `None` for the events of a (re)list in
/// progress, which do not touch the store until the list is done.
pub(crate) fn signal<K>(item: Result<watcher::Event<K>, watcher::Error>) -> Option<Signal> {
    match item {
        Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => Some(Signal::Changed),
        Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => None,
        Ok(watcher::Event::InitDone) => Some(Signal::Listed),
        Err(error) => Some(error_signal(&error)),
    }
}

fn error_signal(error: &watcher::Error) -> Signal {
    let status = match error {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status))
        | watcher::Error::WatchError(status) => Some(status),
        _ => None,
    };
    match status {
        Some(status) if status.code == 404 => Signal::NotFound,
        Some(status) if status.code == 410 => Signal::Desynced,
        // The reason ends up in pod warnings (at most 120 characters), so it is the short
        // "403 Forbidden" rather than the API server's full sentence, which is logged.
        Some(status) if !status.reason.is_empty() => Signal::Failed(format!(
            "API server answered {} {}",
            status.code, status.reason
        )),
        Some(status) => Signal::Failed(format!("API server answered {}", status.code)),
        None => Signal::Failed(match error {
            watcher::Error::NoResourceVersion => "the list has no resourceVersion".to_owned(),
            _ => "the API server cannot be reached".to_owned(),
        }),
    }
}

/// What is known of one resource.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) enum Health {
    /// Not listed yet.
    #[default]
    Pending,
    /// Listed; the store holds every object.
    Listed,
    /// The CRD is not installed: no object of the kind exists.
    Absent,
    /// Listing or watching failed, with the reason.
    Failed(String),
}

impl Health {
    fn synced(&self) -> bool {
        matches!(self, Self::Listed | Self::Absent)
    }
}

/// What a signal changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Transition {
    /// The resource's new synced state, when it changed.
    pub synced: Option<bool>,
    /// The resource's new health, when it changed.
    pub health: Option<Health>,
    /// Whether the view must be rebuilt.
    pub rebuild: bool,
}

/// The health of every watched resource.
#[derive(Clone, Debug, Default)]
pub(crate) struct SyncState {
    health: [Health; 4],
}

impl SyncState {
    /// The health of `resource`.
    pub fn health(&self, resource: Resource) -> &Health {
        &self.health[resource.index()]
    }

    /// Applies a signal of `resource`'s stream.
    pub fn apply(&mut self, resource: Resource, signal: Signal) -> Transition {
        let current = &self.health[resource.index()];
        let next = match (&signal, current) {
            (Signal::Listed, _) => Health::Listed,
            // An event after a failure means the watch resumed where it stopped, with no gap.
            (Signal::Changed, Health::Failed(_)) => Health::Listed,
            (Signal::Changed | Signal::Desynced, health) => health.clone(),
            (Signal::NotFound, _) if resource.is_custom() => Health::Absent,
            (Signal::NotFound, _) => Health::Failed("API server answered 404 NotFound".to_owned()),
            // TargetGroupBindings are the one resource the view can do without: the engine
            // injects everything else and warns. The others keep their last listed state when
            // the watch fails, as any informer cache does; refusing pods would be worse.
            (Signal::Failed(reason), _) if resource == Resource::TargetGroupBindings => {
                Health::Failed(reason.clone())
            }
            (Signal::Failed(reason), Health::Pending | Health::Failed(_)) => {
                Health::Failed(reason.clone())
            }
            (Signal::Failed(_), health) => health.clone(),
        };
        let mut transition = Transition {
            rebuild: signal == Signal::Changed,
            ..Transition::default()
        };
        if next != *current {
            if next.synced() != current.synced() {
                transition.synced = Some(next.synced());
            }
            transition.health = Some(next.clone());
            transition.rebuild = true;
            self.health[resource.index()] = next;
        } else if signal == Signal::Listed {
            // A re-list swaps the store's content.
            transition.rebuild = true;
        }
        transition
    }

    /// Whether a view may be published: Namespaces, Services and GracePolicies are known,
    /// and TargetGroupBindings are known or known to be unavailable.
    pub fn ready(&self) -> bool {
        [
            Resource::Namespaces,
            Resource::Services,
            Resource::GracePolicies,
        ]
        .into_iter()
        .all(|resource| self.health(resource).synced())
            && *self.health(Resource::TargetGroupBindings) != Health::Pending
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use kube::core::Status;

    fn api_error(code: u16, reason: &str) -> kube::Error {
        kube::Error::Api(
            Status::failure("long sentence from the API server", reason)
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn events_become_signals() {
        assert_eq!(signal(Ok(watcher::Event::Apply(()))), Some(Signal::Changed));
        assert_eq!(
            signal(Ok(watcher::Event::Delete(()))),
            Some(Signal::Changed)
        );
        assert_eq!(signal::<()>(Ok(watcher::Event::Init)), None);
        assert_eq!(signal(Ok(watcher::Event::InitApply(()))), None);
        assert_eq!(
            signal::<()>(Ok(watcher::Event::InitDone)),
            Some(Signal::Listed)
        );
    }

    #[test]
    fn errors_become_signals() {
        let table = [
            (
                watcher::Error::InitialListFailed(api_error(404, "NotFound")),
                Signal::NotFound,
            ),
            (
                watcher::Error::WatchStartFailed(api_error(404, "NotFound")),
                Signal::NotFound,
            ),
            (
                watcher::Error::WatchError(
                    Status::failure("gone", "Expired").with_code(410).boxed(),
                ),
                Signal::Desynced,
            ),
            (
                watcher::Error::InitialListFailed(api_error(403, "Forbidden")),
                Signal::Failed("API server answered 403 Forbidden".to_owned()),
            ),
            (
                watcher::Error::WatchFailed(api_error(500, "")),
                Signal::Failed("API server answered 500".to_owned()),
            ),
            (
                watcher::Error::WatchFailed(kube::Error::LinesCodecMaxLineLengthExceeded),
                Signal::Failed("the API server cannot be reached".to_owned()),
            ),
            (
                watcher::Error::NoResourceVersion,
                Signal::Failed("the list has no resourceVersion".to_owned()),
            ),
        ];
        for (error, expected) in table {
            let text = error.to_string();
            assert_eq!(signal::<()>(Err(error)), Some(expected), "{text}");
        }
    }

    fn listed_all() -> SyncState {
        let mut state = SyncState::default();
        for resource in Resource::ALL {
            state.apply(resource, Signal::Listed);
        }
        state
    }

    #[test]
    fn publishes_once_every_resource_is_known() {
        let mut state = SyncState::default();
        assert!(!state.ready());
        for resource in [Resource::Namespaces, Resource::Services] {
            let transition = state.apply(resource, Signal::Listed);
            assert_eq!(transition.synced, Some(true));
            assert!(transition.rebuild);
        }
        let transition = state.apply(Resource::TargetGroupBindings, Signal::NotFound);
        assert_eq!(
            transition.synced,
            Some(true),
            "a missing CRD means no bindings"
        );
        assert_eq!(transition.health, Some(Health::Absent));
        assert!(!state.ready(), "GracePolicies are not listed yet");
        state.apply(Resource::GracePolicies, Signal::Listed);
        assert!(state.ready());
    }

    #[test]
    fn failing_bindings_do_not_hold_back_the_view() {
        let mut state = SyncState::default();
        for resource in [
            Resource::Namespaces,
            Resource::Services,
            Resource::GracePolicies,
        ] {
            state.apply(resource, Signal::Listed);
        }
        assert!(!state.ready(), "bindings still pending");
        let failed = Signal::Failed("API server answered 403 Forbidden".to_owned());
        let transition = state.apply(Resource::TargetGroupBindings, failed.clone());
        assert_eq!(transition.synced, None, "was never synced");
        assert_eq!(
            transition.health,
            Some(Health::Failed(
                "API server answered 403 Forbidden".to_owned()
            ))
        );
        assert!(transition.rebuild);
        assert!(state.ready());
        // The same failure again (the watcher retrying) changes nothing.
        assert_eq!(
            state.apply(Resource::TargetGroupBindings, failed),
            Transition::default()
        );
    }

    #[test]
    fn binding_failures_after_a_sync_make_alb_objects_unavailable_until_the_watch_recovers() {
        let mut state = listed_all();
        let transition = state.apply(
            Resource::TargetGroupBindings,
            Signal::Failed("the API server cannot be reached".to_owned()),
        );
        assert_eq!(transition.synced, Some(false));
        assert!(transition.rebuild);
        assert!(
            state.ready(),
            "the view is still published, without ALB objects"
        );
        let transition = state.apply(Resource::TargetGroupBindings, Signal::Changed);
        assert_eq!(transition.synced, Some(true));
        assert_eq!(transition.health, Some(Health::Listed));
    }

    #[test]
    fn other_failures_after_a_sync_keep_the_cache() {
        let mut state = listed_all();
        for resource in [
            Resource::Namespaces,
            Resource::Services,
            Resource::GracePolicies,
        ] {
            let transition = state.apply(resource, Signal::Failed("x".to_owned()));
            assert_eq!(transition, Transition::default(), "{resource:?}");
            assert_eq!(*state.health(resource), Health::Listed);
        }
    }

    #[test]
    fn failures_before_the_first_list_keep_the_view_back() {
        let mut state = SyncState::default();
        state.apply(Resource::Services, Signal::Listed);
        state.apply(Resource::GracePolicies, Signal::NotFound);
        state.apply(Resource::TargetGroupBindings, Signal::Listed);
        let transition = state.apply(Resource::Namespaces, Signal::Failed("403".to_owned()));
        assert_eq!(transition.synced, None);
        assert_eq!(
            *state.health(Resource::Namespaces),
            Health::Failed("403".to_owned())
        );
        assert!(!state.ready());
        // Namespaces are not a CRD: a 404 is a failure, not "none exist".
        let transition = state.apply(Resource::Namespaces, Signal::NotFound);
        assert!(matches!(transition.health, Some(Health::Failed(_))));
        assert!(!state.ready());
        state.apply(Resource::Namespaces, Signal::Listed);
        assert!(state.ready());
    }

    #[test]
    fn events_and_relists_rebuild_desyncs_do_not() {
        let mut state = listed_all();
        assert_eq!(
            state.apply(Resource::Services, Signal::Changed),
            Transition {
                rebuild: true,
                ..Transition::default()
            }
        );
        assert_eq!(
            state.apply(Resource::Services, Signal::Listed),
            Transition {
                rebuild: true,
                ..Transition::default()
            }
        );
        assert_eq!(
            state.apply(Resource::Services, Signal::Desynced),
            Transition::default()
        );
        // A CRD installed after start: the retried list succeeds.
        let mut state = SyncState::default();
        state.apply(Resource::TargetGroupBindings, Signal::NotFound);
        let transition = state.apply(Resource::TargetGroupBindings, Signal::Listed);
        assert_eq!(transition.health, Some(Health::Listed));
        assert_eq!(transition.synced, None, "absent already counted as synced");
        assert!(transition.rebuild);
    }

    #[test]
    fn names_are_the_metric_labels() {
        let names: Vec<_> = Resource::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(
            names,
            [
                "namespaces",
                "services",
                "targetgroupbindings",
                "gracepolicies"
            ]
        );
    }
}
