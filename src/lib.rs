//! gracegate: a Kubernetes mutating admission webhook that makes every pod rollout-safe.
//!
//! The [`engine`] is pure (pod and context in, patch and warnings out); everything else is a
//! thin shell around it: [`manifests`] for offline use, [`admission`] and [`server`] for the
//! webhook, [`cluster`] for what the webhook learns from the cluster.

pub mod admission;
pub mod certs;
pub mod cli;
pub mod cluster;
pub mod engine;
pub mod manifests;
pub mod metrics;
pub mod patch;
pub mod policy;
pub mod selector;
pub mod server;
pub mod telemetry;
pub mod view;
pub mod yaml;
