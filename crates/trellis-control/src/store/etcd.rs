//! The etcd store (placeholder until the backend lands).

use std::sync::Arc;

/// etcd v3 as a store.
pub struct EtcdStore;

impl EtcdStore {
    pub async fn open(endpoint: &str) -> anyhow::Result<Arc<crate::store::dir::DirStore>> {
        anyhow::bail!("etcd store {endpoint}: not implemented yet")
    }
}
