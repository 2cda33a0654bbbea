//! Watches of the cluster that keep gracegate's [`crate::view::ClusterView`] current (being written).
