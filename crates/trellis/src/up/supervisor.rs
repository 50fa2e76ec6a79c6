//! The children of `trellis up`: spawned with stdout/stderr in a log
//! directory, watched for early exits, and stopped cleanly (SIGTERM, then
//! SIGKILL after a grace period). Owns process lifetimes and nothing else;
//! `kill_on_drop` backs it up so no child outlives an error path.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use futures_util::future::{join_all, select_all};
use tokio::process::{Child, Command};

/// `SIGTERM`.
const SIGTERM: i32 = 15;

// The C library is linked by std anyway; sending a signal touches no memory of ours.
unsafe extern "C" {
    safe fn kill(pid: i32, sig: i32) -> i32;
}

/// The running children and their logs (deleted when this is dropped).
#[derive(Debug)]
pub struct Children {
    list: Vec<Managed>,
    logs: tempfile::TempDir,
}

/// A child that exited on its own.
#[derive(Debug)]
pub struct Exited {
    pub name: String,
    pub status: ExitStatus,
    pub stderr: String,
}

#[derive(Debug)]
struct Managed {
    name: String,
    child: Child,
    stderr_log: PathBuf,
}

impl Children {
    pub fn new() -> anyhow::Result<Children> {
        let logs = tempfile::Builder::new()
            .prefix("trellis-up-")
            .tempdir()
            .context("create a log directory for trellis up")?;
        Ok(Children {
            list: Vec::new(),
            logs,
        })
    }

    /// Starts `program args…` as child `name`.
    pub fn spawn(&mut self, name: &str, program: &Path, args: &[String]) -> anyhow::Result<()> {
        let file_stem = name.replace('/', "-");
        let stdout_log = self.logs.path().join(format!("{file_stem}.stdout.log"));
        let stderr_log = self.logs.path().join(format!("{file_stem}.stderr.log"));
        let stdout = std::fs::File::create(&stdout_log)
            .with_context(|| format!("create {}", stdout_log.display()))?;
        let stderr = std::fs::File::create(&stderr_log)
            .with_context(|| format!("create {}", stderr_log.display()))?;
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "start {name} ({}); build it with `cargo build --workspace --bins`",
                    program.display()
                )
            })?;
        self.list.push(Managed {
            name: name.to_owned(),
            child,
            stderr_log,
        });
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn log_dir(&self) -> &Path {
        self.logs.path()
    }

    /// What child `name` wrote to stderr so far.
    pub fn stderr_of(&self, name: &str) -> String {
        self.list
            .iter()
            .find(|m| m.name == name)
            .map(Managed::stderr)
            .unwrap_or_default()
    }

    /// Resolves when the first child exits (never, if there are none). Cancel-safe.
    pub async fn first_exit(&mut self) -> Exited {
        if self.list.is_empty() {
            return std::future::pending().await;
        }
        let waits = self.list.iter_mut().map(|m| Box::pin(m.child.wait()));
        let (result, index, _) = select_all(waits).await;
        let managed = &self.list[index];
        match result {
            Ok(status) => Exited {
                name: managed.name.clone(),
                status,
                stderr: managed.stderr(),
            },
            Err(err) => {
                eprintln!("trellis up: wait for {}: {err}", managed.name);
                Exited {
                    name: managed.name.clone(),
                    status: std::os::unix::process::ExitStatusExt::from_raw(1 << 8),
                    stderr: managed.stderr(),
                }
            }
        }
    }

    /// SIGTERM to every child still running, then SIGKILL to those that did not
    /// exit within `grace`; every child is reaped before this returns.
    pub async fn stop_all(&mut self, grace: Duration) {
        for managed in &mut self.list {
            if let (Ok(None), Some(pid)) = (managed.child.try_wait(), managed.child.id())
                && let Ok(pid) = i32::try_from(pid)
            {
                kill(pid, SIGTERM);
            }
        }
        let waits = self.list.iter_mut().map(|m| async move {
            if tokio::time::timeout(grace, m.child.wait()).await.is_err() {
                eprintln!(
                    "trellis up: {} ignored SIGTERM for {grace:?}; killing it",
                    m.name
                );
                let _ = m.child.kill().await;
            }
        });
        join_all(waits).await;
    }
}

impl Managed {
    fn stderr(&self) -> String {
        std::fs::read(&self.stderr_log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}
