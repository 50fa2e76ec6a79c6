//! Config stores: where the documents live, versioned, validated, watched.
//!
//! Every backend keeps Istio/Kubernetes objects identified by (group, kind, namespace, name),
//! each with a `resourceVersion`; checks every change by loading the whole resulting
//! configuration with `trellis-config` ([`Change::check`]), and publishes the last good
//! configuration on a [`ConfigWatch`]. A source change that does not load (a broken edit of a
//! file, a bad value written straight into etcd) is refused as a whole: the last good
//! configuration keeps being served and the errors are reported ([`Store::status`], the log,
//! the `trellis_control_config_errors` metric).
//!
//! Backends: [`dir`] (a directory of YAML, the default) and [`etcd`] (etcd v3 over its JSON
//! gateway). [`open`] picks one from a spec. This module must not know about HTTP routes.

pub mod change;
pub mod dir;
pub mod etcd;
pub mod object;
mod served;
pub mod yaml;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use trellis_config::{Diagnostic, Diagnostics};

pub use change::{Change, Delete, Outcome, Put};
pub use object::{
    KINDS, KindInfo, LabelSelector, ListFilter, Object, ObjectKey, kind_info, kind_info_for,
};

use crate::ConfigWatch;

/// A boxed future, for the async methods of the object-safe [`Store`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a store refused a request.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The configuration the change leads to does not load: every error, with its location.
    #[error("the configuration would be invalid:\n{0}")]
    Invalid(Diagnostics),
    #[error("{0}")]
    BadRequest(String),
    /// Optimistic concurrency: a `resourceVersion` that is no longer current.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    /// The backend failed (disk, etcd unreachable).
    #[error("{0}")]
    Backend(String),
}

/// What a successful apply did.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The store revision after the change.
    pub revision: u64,
    /// Per object: what happened and its resourceVersion now (0 once deleted).
    pub objects: Vec<(ObjectKey, Outcome, u64)>,
    pub warnings: Vec<Diagnostic>,
}

/// What a store reports about itself.
#[derive(Debug, Clone)]
pub struct StoreStatus {
    /// `directory ./trellis-data` or `etcd http://127.0.0.1:2379`.
    pub backend: String,
    pub revision: u64,
    pub objects: usize,
    /// Errors of the newest source content when it was refused (empty when serving it).
    pub errors: Vec<Diagnostic>,
    /// Analysis warnings of the configuration being served.
    pub warnings: Vec<Diagnostic>,
}

/// One store interface for every backend.
pub trait Store: Send + Sync + 'static {
    /// The last good configuration, and every later one.
    fn watch(&self) -> ConfigWatch;
    /// One object of the configuration being served.
    fn get(&self, key: &ObjectKey) -> Option<Object>;
    /// The revision being served and the objects `filter` selects, sorted by key.
    fn list(&self, filter: &ListFilter) -> (u64, Vec<Object>);
    /// Checks `change` against the configuration being served without writing anything.
    fn validate(&self, change: &Change) -> Result<change::Checked, StoreError>;
    /// Checks and writes `change`, all or nothing; once this returns, `get`, `list` and the
    /// watch show it.
    fn apply(&self, change: Change) -> BoxFuture<'_, Result<Applied, StoreError>>;
    fn status(&self) -> StoreStatus;
    /// Appends the store's metrics in Prometheus text format.
    fn encode_metrics(&self, out: &mut String);
}

/// Opens a store: `etcd://host:port` (or `etcd+http://`), else a directory path (created if
/// missing). Must be called inside a tokio runtime: the store watches its source in a task.
pub async fn open(spec: &str) -> anyhow::Result<Arc<dyn Store>> {
    if let Some(endpoint) = spec.strip_prefix("etcd://") {
        let store = etcd::EtcdStore::open(&format!("http://{endpoint}")).await?;
        return Ok(store);
    }
    let store = dir::DirStore::open(std::path::Path::new(spec)).await?;
    Ok(store)
}

/// Builds what [`Store::apply`] returns from a successful check.
pub(crate) fn applied(checked: &change::Checked, revision: u64) -> Applied {
    let objects = checked
        .outcomes
        .iter()
        .map(|(key, outcome)| {
            let rv = checked.objects.get(key).map_or(0, |o| o.resource_version);
            (key.clone(), *outcome, rv)
        })
        .collect();
    Applied {
        revision,
        objects,
        warnings: checked.loaded.warnings.clone(),
    }
}
