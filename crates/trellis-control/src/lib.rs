//! `trellis control`: one Istio-style configuration turned into xDS for every proxy.
//!
//! Three parts meet at two seams defined here:
//! - a **store** (directory or etcd) keeps the documents, validates every change, and publishes
//!   the last good configuration as a [`ConfigWatch`];
//! - the **xDS server** watches that channel and compiles per proxy with `trellis-xds`;
//! - the **management API** writes to the store and reports what the xDS server knows through
//!   [`ControlStatus`].

pub mod api;
pub mod ca;
pub mod ratelimit;
pub mod store;
pub mod xds;

use std::sync::Arc;

/// The last good configuration a store serves.
#[derive(Debug, Clone, Default)]
pub struct ConfigState {
    /// Increases with every accepted change (the store's revision).
    pub revision: u64,
    /// The whole configuration, loaded and validated.
    pub loaded: Arc<trellis_config::Loaded>,
}

/// How the xDS server follows the store: the latest accepted configuration wins.
pub type ConfigWatch = tokio::sync::watch::Receiver<Arc<ConfigState>>;

/// What the xDS server reports to the management API.
pub trait ControlStatus: Send + Sync + 'static {
    /// Per connected proxy and per type: sent, ACKed and NACKed versions, NACK errors, and
    /// SYNCED / STALE / NACKED (served as JSON by `GET /api/v1/proxy-status`).
    fn proxy_status(&self) -> serde_json::Value;
    /// Appends the xDS server's metrics in Prometheus text format (served on `GET /metrics`).
    fn encode_metrics(&self, out: &mut String);
}
