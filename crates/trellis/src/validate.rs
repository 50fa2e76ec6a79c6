//! `trellis validate PATH`: a thin wrapper over `trellis_config::load_path`
//! that prints every diagnostic as `file:line:col: severity: …` and turns
//! errors into exit code 1. It owns no validation rules of its own.

use std::path::Path;
use std::process::ExitCode;

/// Loads `path` and reports; exit code 1 when there are errors.
pub fn run(path: &Path) -> anyhow::Result<ExitCode> {
    if !path.exists() {
        anyhow::bail!("{}: no such file or directory", path.display());
    }
    match trellis_config::load_path(path) {
        Ok(loaded) => {
            for warning in &loaded.warnings {
                println!("{warning}");
            }
            let count = loaded.snapshot.len();
            let noun = if count == 1 { "resource" } else { "resources" };
            let warnings = match loaded.warnings.len() {
                0 => String::new(),
                1 => ", 1 warning".to_owned(),
                n => format!(", {n} warnings"),
            };
            println!("{count} {noun} valid{warnings}");
            Ok(ExitCode::SUCCESS)
        }
        Err(diagnostics) => {
            println!("{diagnostics}");
            let errors = diagnostics.iter().filter(|d| d.is_error()).count();
            eprintln!("{}: {errors} error(s); nothing loaded", path.display());
            Ok(ExitCode::FAILURE)
        }
    }
}
