//! What a store serves, shared by every backend: the last good configuration (objects,
//! their loaded form, the revision) published on the [`ConfigWatch`], and the errors of a
//! source change that was refused (reported by the API, logged, and counted in metrics).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::watch;
use trellis_config::{Diagnostic, Loaded};

use super::change::{Change, Checked};
use super::object::{ListFilter, Object, ObjectKey};
use super::{StoreError, StoreStatus};
use crate::{ConfigState, ConfigWatch};

/// One accepted configuration.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub revision: u64,
    pub objects: BTreeMap<ObjectKey, Object>,
    pub loaded: Arc<Loaded>,
}

/// The state every backend keeps in memory.
pub struct Served {
    current: RwLock<Arc<Snapshot>>,
    tx: watch::Sender<Arc<ConfigState>>,
    /// Errors of the newest source content, when it was refused.
    rejected: Mutex<Vec<Diagnostic>>,
    rejected_total: AtomicU64,
    accepted_total: AtomicU64,
}

impl Served {
    pub fn new(initial: Snapshot) -> Served {
        let state = ConfigState {
            revision: initial.revision,
            loaded: Arc::clone(&initial.loaded),
        };
        let (tx, _) = watch::channel(Arc::new(state));
        Served {
            current: RwLock::new(Arc::new(initial)),
            tx,
            rejected: Mutex::new(Vec::new()),
            rejected_total: AtomicU64::new(0),
            accepted_total: AtomicU64::new(0),
        }
    }

    pub fn current(&self) -> Arc<Snapshot> {
        match self.current.read() {
            Ok(g) => Arc::clone(&g),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    pub fn watch(&self) -> ConfigWatch {
        self.tx.subscribe()
    }

    /// One object of the configuration being served.
    pub fn get(&self, key: &ObjectKey) -> Option<Object> {
        self.current().objects.get(key).cloned()
    }

    /// The revision being served and the objects `filter` selects, sorted by key.
    pub fn list(&self, filter: &ListFilter) -> (u64, Vec<Object>) {
        let snapshot = self.current();
        let objects = snapshot
            .objects
            .values()
            .filter(|o| filter.matches(o))
            .cloned()
            .collect();
        (snapshot.revision, objects)
    }

    /// Checks `change` against the configuration being served, as its next revision.
    pub fn validate(&self, change: &Change) -> Result<Checked, StoreError> {
        let current = self.current();
        change.check(&current.objects, current.revision + 1)
    }

    /// What the store reports about itself; `backend` names it (`directory ./data`).
    pub fn status(&self, backend: String) -> StoreStatus {
        let current = self.current();
        StoreStatus {
            backend,
            revision: current.revision,
            objects: current.objects.len(),
            errors: self.rejected(),
            warnings: current.loaded.warnings.clone(),
        }
    }

    /// Serves `snapshot` from now on and tells every watcher.
    pub fn publish(&self, snapshot: Snapshot) {
        let state = ConfigState {
            revision: snapshot.revision,
            loaded: Arc::clone(&snapshot.loaded),
        };
        tracing::info!(
            revision = snapshot.revision,
            objects = snapshot.objects.len(),
            "configuration accepted"
        );
        match self.current.write() {
            Ok(mut g) => *g = Arc::new(snapshot),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(snapshot),
        }
        self.accepted_total.fetch_add(1, Ordering::Relaxed);
        self.tx.send_replace(Arc::new(state));
    }

    /// The source holds content that does not load: keep serving, report `errors`
    /// (logged and counted once per distinct set of errors).
    pub fn reject(&self, origin: &str, errors: Vec<Diagnostic>) {
        let mut current = self.rejected.lock().unwrap_or_else(|p| p.into_inner());
        if *current == errors {
            return;
        }
        tracing::error!(
            %origin,
            errors = errors.len(),
            "configuration refused, keeping the last good one"
        );
        for e in &errors {
            tracing::error!("{e}");
        }
        self.rejected_total.fetch_add(1, Ordering::Relaxed);
        *current = errors;
    }

    /// The source loads again.
    pub fn clear_rejection(&self) {
        self.rejected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    pub fn rejected(&self) -> Vec<Diagnostic> {
        self.rejected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Prometheus text for the store's metrics.
    pub fn encode_metrics(&self, backend: &str, out: &mut String) {
        let snapshot = self.current();
        let errors = self.rejected().len();
        let metrics: [(&str, &str, &str, u64); 5] = [
            (
                "trellis_control_config_errors",
                "gauge",
                "Errors in the newest configuration the store refused (0 when it serves the newest).",
                errors as u64,
            ),
            (
                "trellis_control_config_rejected_total",
                "counter",
                "Configuration changes refused because they do not load.",
                self.rejected_total.load(Ordering::Relaxed),
            ),
            (
                "trellis_control_config_accepted_total",
                "counter",
                "Configuration changes accepted and published.",
                self.accepted_total.load(Ordering::Relaxed),
            ),
            (
                "trellis_control_config_revision",
                "gauge",
                "Revision of the configuration being served.",
                snapshot.revision,
            ),
            (
                "trellis_control_config_objects",
                "gauge",
                "Objects in the configuration being served.",
                snapshot.objects.len() as u64,
            ),
        ];
        for (name, kind, help, value) in metrics {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name}{{backend=\"{backend}\"}} {value}");
        }
    }
}
