//! Istio `security.istio.io` `PeerAuthentication` (v1 / v1beta1): which mTLS mode a workload's
//! sidecar accepts inbound. Scope by placement: in the root namespace (`istio-system`) without a
//! selector it is mesh-wide, elsewhere without a selector namespace-wide, with a selector it
//! applies to the matching workloads (`portLevelMtls` only there).
//!
//! ```yaml
//! apiVersion: security.istio.io/v1
//! kind: PeerAuthentication
//! metadata: {name: default, namespace: foo}
//! spec:
//!   selector: {matchLabels: {app: httpbin}}
//!   mtls: {mode: STRICT}            # UNSET | DISABLE | PERMISSIVE | STRICT
//!   portLevelMtls:
//!     "8080": {mode: DISABLE}       # keyed by the workload's (target) port
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::WorkloadSelector;
use super::istio::config_struct;

/// Istio's default root namespace: a PeerAuthentication there without a selector is mesh-wide.
pub const ROOT_NAMESPACE: &str = "istio-system";

config_struct! {
    /// `PeerAuthentication.spec`.
    pub struct PeerAuthentication {
        pub selector: Option<WorkloadSelector>,
        pub mtls: Option<MutualTls>,
        /// Keyed by port number (as a string, as in YAML maps).
        pub port_level_mtls: BTreeMap<String, MutualTls>,
    }
}

config_struct! {
    /// `PeerAuthentication.MutualTLS`.
    pub struct MutualTls {
        pub mode: MtlsMode,
    }
}

/// `PeerAuthentication.MutualTLS.Mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum MtlsMode {
    /// Inherit from the parent scope (PERMISSIVE when nothing is set).
    #[default]
    #[serde(rename = "UNSET")]
    Unset,
    #[serde(rename = "DISABLE")]
    Disable,
    #[serde(rename = "PERMISSIVE")]
    Permissive,
    #[serde(rename = "STRICT")]
    Strict,
}
