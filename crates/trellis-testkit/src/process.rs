//! Child processes for tests: locate a workspace binary, spawn it in its own
//! process group with stdout/stderr captured to files, signal it, wait for it
//! with a deadline, and kill the whole group on drop (no orphans).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// `SIGINT` (Ctrl-C).
pub const SIGINT: i32 = 2;
/// `SIGKILL`.
pub const SIGKILL: i32 = 9;
/// `SIGTERM`.
pub const SIGTERM: i32 = 15;

// The C library is linked by std anyway; sending a signal touches no memory of ours.
unsafe extern "C" {
    safe fn kill(pid: i32, sig: i32) -> i32;
}

/// A spawned binary. Dropping it kills its whole process group and reaps it.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    status: Option<ExitStatus>,
    logs: TempDir,
}

/// Path of a workspace binary (`trellis`, `trellis-proxy`) next to the running
/// test executable: `target/<profile>/deps/<test>-<hash>` → `target/<profile>/<name>`.
///
/// Panics with what to do when the binary has not been built.
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current test executable path");
    let mut dir = exe
        .parent()
        .expect("test executable has a directory")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "binary {} not found; build it first with `cargo build --workspace --bins` \
         (same profile and CARGO_TARGET_DIR as the tests)",
        path.display()
    );
    path
}

impl Process {
    /// Spawns `program` with `args` and extra environment `env`.
    pub fn spawn<I, S>(program: impl AsRef<Path>, args: I, env: &[(&str, &str)]) -> Process
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut command = Command::new(program.as_ref());
        command.args(args);
        for (key, value) in env {
            command.env(key, value);
        }
        Process::spawn_command(command)
    }

    /// Spawns a prepared command; stdin is closed and stdout/stderr go to files.
    pub fn spawn_command(mut command: Command) -> Process {
        use std::os::unix::process::CommandExt as _;
        let name = Path::new(command.get_program())
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let logs = tempfile::Builder::new()
            .prefix(&format!("testkit-{name}-"))
            .tempdir()
            .expect("create a temp dir for process logs");
        let stdout = std::fs::File::create(logs.path().join("stdout")).expect("create stdout log");
        let stderr = std::fs::File::create(logs.path().join("stderr")).expect("create stderr log");
        command
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {:?}: {e}", command.get_program()));
        Process {
            name,
            child,
            status: None,
            logs,
        }
    }

    /// OS process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process wrote to stdout so far.
    pub fn stdout_text(&self) -> String {
        self.read_log("stdout")
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        self.read_log("stderr")
    }

    /// Sends `signal` to the process itself (not its group).
    pub fn signal(&self, signal: i32) {
        if self.status.is_none() {
            kill(self.pid() as i32, signal);
        }
    }

    /// Whether the process has not exited yet.
    pub fn is_running(&mut self) -> bool {
        self.try_wait().is_none()
    }

    /// The exit status if the process has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("poll child status");
        }
        self.status
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A summary for assertion messages: name, pid, status and both logs.
    pub fn describe(&mut self) -> String {
        let status = self.try_wait();
        format!(
            "{} (pid {}, status {:?})\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.name,
            self.pid(),
            status,
            self.stdout_text(),
            self.stderr_text()
        )
    }

    fn read_log(&self, which: &str) -> String {
        std::fs::read(self.logs.path().join(which))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // The group outlives its leader while any member lives: kill it either way.
        kill(-(self.pid() as i32), SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
