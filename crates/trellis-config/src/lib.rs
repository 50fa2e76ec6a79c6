//! Trellis configuration model: loads Istio (`networking.istio.io`) and Kubernetes
//! (Service, EndpointSlice) YAML into a typed, validated [`Snapshot`] plus the derived
//! service [`Registry`]. Errors name file, line, column and field path, all of them at
//! once, and nothing half-loads. Pure: no sockets, no async runtime.
//!
//! ```no_run
//! let loaded = trellis_config::load_path(std::path::Path::new("config/")).unwrap();
//! for w in &loaded.warnings { eprintln!("{w}"); }
//! ```

mod analyze;
mod de;
pub mod diag;
pub mod load;
pub mod registry;
pub mod types;
mod validate;
pub mod yaml;

pub use diag::{Diagnostic, Diagnostics, Severity};
pub use load::Loader;
pub use registry::{
    Endpoint, Protocol, Registry, Resolution, Service, ServiceLocation, ServicePort,
};
pub use types::*;
pub use validate::{
    ACTIONS, DRY_RUN_ANNOTATION, MIN_FILL_INTERVAL, RETRY_NON_IDEMPOTENT, RETRY_ON, bracketed,
    validate_snapshot,
};

use std::path::Path;

/// A successful load: the snapshot, its registry, and analysis warnings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Loaded {
    pub snapshot: Snapshot,
    pub registry: Registry,
    pub warnings: Vec<Diagnostic>,
}

/// Loads a file, or a directory recursively (`*.yaml`, `*.yml`, in sorted order).
/// Any error fails the whole load and all errors are returned.
pub fn load_path(path: &Path) -> Result<Loaded, Diagnostics> {
    let mut loader = load::Loader::default();
    loader.load_path(path);
    loader.finish()
}

/// Loads one multi-document YAML string; `file_name` is used in diagnostics.
pub fn load_str(file_name: &str, yaml: &str) -> Result<Loaded, Diagnostics> {
    let mut loader = load::Loader::default();
    loader.load_str(file_name, yaml);
    loader.finish()
}

/// Istio's short-name rule: `reviews` in namespace `default` becomes
/// `reviews.default.svc.cluster.local`; names containing a dot and wildcards stay as written.
pub fn resolve_host(host: &str, namespace: &str) -> String {
    if host.contains('.') || host.contains('*') {
        host.to_string()
    } else {
        format!("{host}.{namespace}.svc.cluster.local")
    }
}
