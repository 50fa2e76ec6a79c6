//! Config source for standalone mode: a directory of YAML loaded with `trellis_config` and
//! compiled with `trellis_xds` for this proxy's identity, re-read when its content changes
//! (polling: a fingerprint of the YAML files' paths, mtimes and sizes every 500 ms). Produces
//! `Resources`; it never touches the runtime itself (`app` applies what it yields).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use trellis_xds::{ProxyIdentity, Resources};

pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// A directory of configuration compiled for one proxy.
#[derive(Debug, Clone)]
pub struct DirSource {
    pub dir: PathBuf,
    pub identity: ProxyIdentity,
}

impl DirSource {
    /// Load and compile; on failure every error is returned, one per line.
    pub fn load(&self) -> Result<Resources, Vec<String>> {
        let loaded = trellis_config::load_path(&self.dir)
            .map_err(|d| d.iter().map(|e| e.to_string()).collect::<Vec<_>>())?;
        for w in &loaded.warnings {
            tracing::warn!("{w}");
        }
        Ok(trellis_xds::compile_owned(
            loaded.snapshot,
            loaded.registry,
            &self.identity,
        ))
    }

    /// Fingerprint of everything under the directory (paths, modification times, sizes).
    pub fn fingerprint(&self) -> u64 {
        let mut h = DefaultHasher::new();
        walk(&self.dir, &mut h);
        h.finish()
    }

    /// Poll for changes forever; `apply` gets each successfully compiled new config and reports
    /// whether it was applied. Errors are logged, one per line, and the last good config stays.
    pub async fn watch(
        self,
        mut last: u64,
        mut apply: impl FnMut(Resources) -> Result<(), String>,
    ) {
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let me = self.clone();
            let Ok((fp, loaded)) = tokio::task::spawn_blocking(move || {
                let fp = me.fingerprint();
                if fp == last {
                    (fp, None)
                } else {
                    (fp, Some(me.load()))
                }
            })
            .await
            else {
                continue;
            };
            last = fp;
            match loaded {
                None => {}
                Some(Ok(res)) => {
                    let version = res.version.clone();
                    match apply(res) {
                        Ok(()) => tracing::info!(%version, "applied new configuration"),
                        Err(e) => eprintln!("config rejected, keeping the last good one: {e}"),
                    }
                }
                Some(Err(errors)) => {
                    for e in errors {
                        eprintln!("{e}");
                    }
                    eprintln!(
                        "config {} has errors; keeping the last good one",
                        self.dir.display()
                    );
                }
            }
        }
    }
}

fn walk(path: &Path, h: &mut DefaultHasher) {
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    path.hash(h);
    if !meta.is_dir() {
        meta.len().hash(h);
        if let Ok(m) = meta.modified() {
            m.hash(h);
        }
        return;
    }
    let Ok(entries) = std::fs::read_dir(path) else {
        return;
    };
    // Only what the loader reads: no hidden entries, only `*.yaml`/`*.yml` files (a log file
    // written into the directory must not trigger a reload).
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let hidden = p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'));
            let yaml = p
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| e == "yaml" || e == "yml");
            !hidden && (yaml || p.is_dir())
        })
        .collect();
    paths.sort();
    for p in paths {
        walk(&p, h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_changes_with_content() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let src = DirSource {
            dir: dir.path().to_path_buf(),
            identity: ProxyIdentity::default(),
        };
        let a = src.fingerprint();
        std::fs::write(dir.path().join("a.yaml"), "x: 1\n")?;
        let b = src.fingerprint();
        assert_ne!(a, b);
        assert_eq!(b, src.fingerprint());
        std::fs::write(dir.path().join("a.yaml"), "x: 12\n")?;
        assert_ne!(b, src.fingerprint());
        Ok(())
    }

    #[test]
    fn fingerprint_ignores_files_the_loader_does_not_read() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("a.yaml"), "x: 1\n")?;
        let src = DirSource {
            dir: dir.path().to_path_buf(),
            identity: ProxyIdentity::default(),
        };
        let a = src.fingerprint();
        std::fs::write(dir.path().join("proxy.log"), "listening\n")?;
        std::fs::write(dir.path().join(".a.yaml.tmp"), "x: 2\n")?;
        assert_eq!(a, src.fingerprint());
        std::fs::create_dir(dir.path().join("more"))?;
        std::fs::write(dir.path().join("more").join("b.yml"), "y: 1\n")?;
        assert_ne!(a, src.fingerprint());
        Ok(())
    }
}
