//! What `gracegate serve` learns from the cluster: the Namespaces, Services,
//! TargetGroupBindings and GracePolicies it watches, turned into the
//! [`ClusterView`](crate::view::ClusterView) the engine consults, and the API server's version.
//!
//! - `objects`: the watched objects to a view (pure);
//! - `policies`: file and cluster GracePolicies, the last valid version of each, and their
//!   `Valid` status condition (pure);
//! - `sync`: what watch events and errors mean for readiness and ALB gates (pure);
//! - `refresh`: watch items to sync reports, throttled rebuilds and status writes (no
//!   network, driven by tests through hand-filled reflector stores);
//! - `version`: `/version` to the preStop style;
//! - `watch`: the reflectors and the loop around `refresh`.
//!
//! Decisions, for operators:
//! - a cluster GracePolicy with the name of a `--policy-file` policy takes its place while it
//!   exists and is valid (or was valid since gracegate started);
//! - a CRD that is not installed (a 404 on the list) means no objects of that kind: a cluster
//!   without the AWS Load Balancer Controller gets no ALB gates and no warning about them;
//! - any other TargetGroupBinding watch failure sets the view's `alb_unavailable`, so pods get
//!   everything but ALB gates, with a warning, until the watch recovers.

mod objects;
mod policies;
mod refresh;
mod sync;
mod version;
mod watch;

pub use objects::{Bindings, Built, ClusterObjects, ViewBuilder};
pub use policies::{InForce, Outcome, PolicyReport, VALID_CONDITION, Verdict, status_patch};
pub use refresh::DEBOUNCE;
pub use sync::Resource;
pub use version::{prestop_style, version_of};
pub use watch::{grace_policy_resource, target_group_binding_resource, watch};

use crate::policy::PolicyError;

/// Why the cluster cannot be watched or its version read.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The API server's `/version` could not be read.
    #[error("cannot read the API server's version: {0}")]
    Version(#[source] kube::Error),
    /// `/version` answered with no `major.minor` gracegate can read.
    #[error(
        "cannot read the API server's version: major {major:?}, minor {minor:?}, gitVersion {git_version:?}"
    )]
    UnknownVersion {
        /// The answer's `major`.
        major: String,
        /// The answer's `minor`.
        minor: String,
        /// The answer's `gitVersion`.
        git_version: String,
    },
    /// The `--policy-file` policies cannot be used together (two share a name).
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// A watch stream ended; kube's watchers retry forever, so this is not expected.
    #[error("the watch of {resource} ended")]
    WatchEnded {
        /// The resource ([`Resource::name`]).
        resource: &'static str,
    },
}
