//! Reading and writing the CA's files: keys are written owner-only (mode 0600) through a
//! temporary file and a rename, so a crash never leaves half a key behind.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use super::CaError;

/// Writes `bytes` to `path` with `mode`, creating the parent directory (mode 0700).
pub(super) fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CaError> {
    use std::os::unix::fs::DirBuilderExt as _;
    let fail = |e: std::io::Error| CaError::file(path, format!("write: {e}"));
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(fail)?;
    }
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(fail)?;
    file.write_all(bytes).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}

/// A private key file (mode 0600).
pub(super) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), CaError> {
    write(path, bytes, 0o600)
}

/// A public file (certificates, mode 0644).
pub(super) fn write_public(path: &Path, text: &str) -> Result<(), CaError> {
    write(path, text.as_bytes(), 0o644)
}

/// The file at `path`, or `None` if it does not exist.
pub(super) fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, CaError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CaError::file(path, format!("read: {e}"))),
    }
}

/// The text file at `path`, which must exist.
pub(super) fn read_text(path: &Path) -> Result<String, CaError> {
    std::fs::read_to_string(path).map_err(|e| CaError::file(path, format!("read: {e}")))
}

/// Every certificate of a PEM text, each re-encoded as its own PEM block.
pub(super) fn split_pem_certs(path: &Path, text: &str) -> Result<Vec<String>, CaError> {
    let blocks = pem_blocks(text);
    if blocks.is_empty() {
        return Err(CaError::file(path, "holds no PEM CERTIFICATE block"));
    }
    Ok(blocks)
}

/// The `-----BEGIN CERTIFICATE-----` blocks of `text`, in order.
pub fn pem_blocks(text: &str) -> Vec<String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let Some(len) = rest[start..].find(END) else {
            break;
        };
        let end = start + len + END.len();
        out.push(format!("{}\n", &rest[start..end]));
        rest = &rest[end..];
    }
    out
}
