//! The store directory `trellis up` hands to `trellis control`: a fresh temporary directory
//! seeded with a copy of the YAML being run, so that API writes (`trellis apply`) never touch
//! the user's files and every `trellis up` starts from them again. Deleted when dropped.

use std::path::Path;

use anyhow::Context as _;

/// A fresh store directory holding a copy of every `*.yaml`/`*.yml` file under `from`
/// (sub-directories kept, hidden entries skipped, as the directory store reads them).
pub fn seeded_store(from: &Path) -> anyhow::Result<tempfile::TempDir> {
    let store = tempfile::Builder::new()
        .prefix("trellis-up-store-")
        .tempdir()
        .context("create a store directory for trellis control")?;
    copy_yaml(from, store.path())?;
    Ok(store)
}

fn copy_yaml(from: &Path, to: &Path) -> anyhow::Result<()> {
    let entries = std::fs::read_dir(from).with_context(|| format!("read {}", from.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("read {}", from.display()))?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        let target = to.join(&name);
        if path.is_dir() {
            std::fs::create_dir_all(&target)
                .with_context(|| format!("create {}", target.display()))?;
            copy_yaml(&path, &target)?;
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            std::fs::copy(&path, &target)
                .with_context(|| format!("copy {} to {}", path.display(), target.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_yaml_recursively_and_skips_the_rest() {
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("a.yaml"), "a").unwrap();
        std::fs::write(src.path().join("README.md"), "r").unwrap();
        std::fs::write(src.path().join(".hidden.yaml"), "h").unwrap();
        std::fs::create_dir(src.path().join("sub")).unwrap();
        std::fs::write(src.path().join("sub/b.yml"), "b").unwrap();

        let store = seeded_store(src.path()).unwrap();
        let read = |p: &str| std::fs::read_to_string(store.path().join(p)).ok();
        assert_eq!(read("a.yaml").as_deref(), Some("a"));
        assert_eq!(read("sub/b.yml").as_deref(), Some("b"));
        assert_eq!(read("README.md"), None);
        assert_eq!(read(".hidden.yaml"), None);
        let path = store.path().to_path_buf();
        drop(store);
        assert!(!path.exists(), "the store is removed when dropped");
    }
}
