//! The directory store: every `*.yaml`/`*.yml` file under a directory (hidden files and
//! folders skipped), in any layout; the directory stays the truth and stays git-friendly.
//!
//! External edits are picked up by polling a fingerprint (paths, mtimes, sizes) every 500 ms;
//! an edit that does not load is refused as a whole and reported, and the last good
//! configuration keeps serving. API writes land as files written atomically (temporary file +
//! rename): an object is rewritten in the file it came from, a new object goes to
//! `<Kind>/<namespace>/<name>.yaml`. A file holding several objects is re-emitted whole
//! when one of them changes (its comments are lost); files with one object keep nothing else.
//!
//! Revisions start at the store's start time in milliseconds and grow by one per accepted
//! change, so resourceVersions from before a restart are never mistaken for current ones.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use trellis_config::{Diagnostic, Loader};

use super::object::{Object, ObjectKey, list_items, normalize};
use super::served::{Served, Snapshot};
use super::{Applied, BoxFuture, Change, ListFilter, Store, StoreError, StoreStatus, yaml};
use crate::ConfigWatch;

/// How often the directory is checked for external edits.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// A directory of YAML as a store.
pub struct DirStore {
    dir: PathBuf,
    served: Served,
    /// Held while reading or writing the directory, so a scan never sees half a write.
    files: Mutex<Files>,
}

/// Where each served object lives, and the directory's fingerprint at the last scan.
#[derive(Default)]
struct Files {
    fingerprint: u64,
    paths: HashMap<ObjectKey, PathBuf>,
}

/// A successful scan of the directory.
struct Scan {
    objects: Vec<(ObjectKey, Value, PathBuf)>,
    loaded: trellis_config::Loaded,
}

impl DirStore {
    /// Opens (creating it if missing) and scans `dir`, then watches it in a task that ends
    /// when the store is dropped. A directory that does not load is served as empty.
    pub async fn open(dir: &Path) -> anyhow::Result<Arc<DirStore>> {
        std::fs::create_dir_all(dir).map_err(|e| {
            anyhow::anyhow!(
                "create store directory {}: {e}; check the path and permissions",
                dir.display()
            )
        })?;
        let base = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as u64);
        let store = Arc::new(DirStore {
            dir: dir.to_owned(),
            served: Served::new(Snapshot {
                revision: base,
                ..Snapshot::default()
            }),
            files: Mutex::new(Files::default()),
        });
        let first = Arc::clone(&store);
        tokio::task::spawn_blocking(move || first.poll()).await?;
        let weak = Arc::downgrade(&store);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(POLL_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(store) = weak.upgrade() else { break };
                if tokio::task::spawn_blocking(move || store.poll())
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        Ok(store)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Files> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Re-reads the directory if anything in it changed.
    fn poll(&self) {
        let mut files = self.lock();
        self.refresh(&mut files);
    }

    /// Re-reads the directory if anything in it changed since `files` was read.
    fn refresh(&self, files: &mut Files) {
        let fingerprint = fingerprint(&self.dir);
        if fingerprint == files.fingerprint {
            return;
        }
        files.fingerprint = fingerprint;
        match scan(&self.dir) {
            Err(errors) => self.served.reject(&self.dir.display().to_string(), errors),
            Ok(scan) => {
                self.served.clear_rejection();
                let current = self.served.current();
                let revision = current.revision + 1;
                let mut objects = BTreeMap::new();
                let mut paths = HashMap::new();
                for (key, value, path) in scan.objects {
                    let resource_version = match current.objects.get(&key) {
                        Some(o) if o.value == value => o.resource_version,
                        _ => revision,
                    };
                    paths.insert(key.clone(), path);
                    let object = Object {
                        key: key.clone(),
                        value,
                        resource_version,
                    };
                    objects.insert(key, object);
                }
                files.paths = paths;
                if objects != current.objects {
                    self.served.publish(Snapshot {
                        revision,
                        objects,
                        loaded: Arc::new(scan.loaded),
                    });
                }
            }
        }
    }

    fn apply_blocking(&self, change: &Change) -> Result<Applied, StoreError> {
        let mut files = self.lock();
        // An external edit not polled yet must not be overwritten by a write built without it.
        self.refresh(&mut files);
        let current = self.served.current();
        let revision = current.revision + 1;
        let checked = change.check(&current.objects, revision)?;
        if !checked.changed {
            return Ok(super::applied(&checked, current.revision));
        }
        // Which files change: where each touched object lives now, or its own new file.
        let mut paths = files.paths.clone();
        let mut touched = BTreeSet::new();
        for d in &change.deletes {
            if let Some(p) = paths.remove(&d.key) {
                touched.insert(p);
            }
        }
        for p in &change.puts {
            let path = paths
                .entry(p.key.clone())
                .or_insert_with(|| PathBuf::from(p.key.file_name()));
            touched.insert(path.clone());
        }
        for file in &touched {
            let values: Vec<&Value> = checked
                .objects
                .values()
                .filter(|o| paths.get(&o.key) == Some(file))
                .map(|o| &o.value)
                .collect();
            let full = self.dir.join(file);
            let result = if values.is_empty() {
                remove_file(&self.dir, &full)
            } else {
                write_atomic(&full, &yaml::to_yaml_stream(values))
            };
            result.map_err(|e| {
                StoreError::Backend(format!(
                    "write {}: {e}; check the disk and permissions",
                    full.display()
                ))
            })?;
        }
        files.paths = paths;
        let applied = super::applied(&checked, revision);
        self.served.publish(Snapshot {
            revision,
            objects: checked.objects,
            loaded: checked.loaded,
        });
        Ok(applied)
    }
}

impl Store for DirStore {
    fn watch(&self) -> ConfigWatch {
        self.served.watch()
    }

    fn get(&self, key: &ObjectKey) -> Option<Object> {
        self.served.get(key)
    }

    fn list(&self, filter: &ListFilter) -> (u64, Vec<Object>) {
        self.served.list(filter)
    }

    fn validate(&self, change: &Change) -> Result<super::change::Checked, StoreError> {
        self.served.validate(change)
    }

    fn apply(&self, change: Change) -> BoxFuture<'_, Result<Applied, StoreError>> {
        // A few small files: written inline, like the API's other short disk work.
        Box::pin(async move { self.apply_blocking(&change) })
    }

    fn status(&self) -> StoreStatus {
        self.served
            .status(format!("directory {}", self.dir.display()))
    }

    fn encode_metrics(&self, out: &mut String) {
        self.served.encode_metrics("directory", out);
    }
}

/// Loads every YAML file under `dir`; all errors when it does not load.
fn scan(dir: &Path) -> Result<Scan, Vec<Diagnostic>> {
    let mut paths = Vec::new();
    let mut errors = Vec::new();
    if let Err(e) = yaml_files(dir, dir, &mut paths) {
        errors.push(Diagnostic::error(
            &dir.display().to_string(),
            0,
            0,
            format!("cannot read directory: {e}"),
        ));
    }
    paths.sort();
    let mut loader = Loader::default();
    let mut objects = Vec::new();
    for rel in paths {
        let full = dir.join(&rel);
        let display = full.display().to_string();
        let text = match std::fs::read_to_string(&full) {
            Ok(text) => text,
            Err(e) => {
                errors.push(Diagnostic::error(
                    &display,
                    0,
                    0,
                    format!("cannot read file: {e}"),
                ));
                continue;
            }
        };
        loader.load_str(&display, &text);
        // Syntax errors are reported by the loader.
        let Ok(docs) = yaml::parse(&text) else {
            continue;
        };
        for doc in docs {
            for mut value in list_items(doc.value) {
                // Objects without a key are reported by the loader.
                if let Ok(key) = ObjectKey::of(&value) {
                    normalize(&mut value, &key.namespace);
                    objects.push((key, value, rel.clone()));
                }
            }
        }
    }
    let loaded = loader.finish();
    match loaded {
        Ok(loaded) if errors.is_empty() => Ok(Scan { objects, loaded }),
        Ok(_) => Err(errors),
        Err(diagnostics) => {
            errors.extend(diagnostics);
            Err(errors)
        }
    }
}

/// Relative paths of the YAML files under `dir`, skipping hidden entries.
fn yaml_files(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if path.is_dir() {
            yaml_files(root, &path, out)?;
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e == "yaml" || e == "yml")
            && let Ok(rel) = path.strip_prefix(root)
        {
            out.push(rel.to_owned());
        }
    }
    Ok(())
}

/// Hash of the YAML files' paths, modification times and sizes.
fn fingerprint(dir: &Path) -> u64 {
    let mut paths = Vec::new();
    let _ = yaml_files(dir, dir, &mut paths);
    paths.sort();
    let mut h = DefaultHasher::new();
    for rel in paths {
        rel.hash(&mut h);
        if let Ok(meta) = std::fs::metadata(dir.join(&rel)) {
            meta.len().hash(&mut h);
            meta.modified().ok().hash(&mut h);
        }
    }
    h.finish()
}

/// Writes `text` to `path` through a hidden temporary file in the same folder and a rename,
/// so a reader sees the old content or the new, never a mix.
pub fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("object");
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    std::fs::write(&tmp, text)?;
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(())
}

/// Removes `path`, then the folders above it that became empty (never `root` itself).
fn remove_file(root: &Path, path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut dir = path.parent();
    while let Some(d) = dir {
        if d == root || !d.starts_with(root) || std::fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
    Ok(())
}
