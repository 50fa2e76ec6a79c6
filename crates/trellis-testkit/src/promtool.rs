//! `promtool check metrics` on a Prometheus exposition text, when promtool is installed (CI
//! installs it; a developer machine may not have it, and then the check is skipped with a note).

use std::io::Write as _;
use std::process::{Command, ExitStatus, Stdio};

/// What `promtool check metrics` said about a text.
pub struct PromtoolReport {
    pub status: ExitStatus,
    /// Its stdout followed by its stderr.
    pub output: String,
}

/// Runs `promtool check metrics` with `text` on stdin; `None` (after printing a note) when
/// promtool is not installed.
pub fn promtool_run(text: &str) -> Option<PromtoolReport> {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("note: promtool not installed; skipping `promtool check metrics`");
            return None;
        }
        other => other.expect("run promtool"),
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write metrics to promtool");
    let out = child.wait_with_output().expect("promtool output");
    Some(PromtoolReport {
        status: out.status,
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    })
}

/// Asserts that `promtool check metrics` accepts `text` (skipped when promtool is not installed).
pub fn promtool_check(text: &str) {
    if let Some(report) = promtool_run(text) {
        assert!(
            report.status.success(),
            "promtool check metrics:\n{}\n{text}",
            report.output
        );
    }
}
