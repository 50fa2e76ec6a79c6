//! The management API's bearer token: created at first start (32 random bytes from the OS,
//! hex), kept in a file readable only by its owner (mode 0600), rotated on request. Owns the
//! secret and its comparison; which requests need it is `api`'s decision.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

/// The token writes must present (`Authorization: Bearer <token>`).
pub struct Token {
    /// Where the token is kept; `None` for a token given on the command line.
    path: Option<PathBuf>,
    current: RwLock<String>,
}

impl Token {
    /// Reads the token at `path`, or creates one there (mode 0600) if the file is missing.
    pub fn load_or_create(path: &Path) -> std::io::Result<Token> {
        let current = match std::fs::read_to_string(path) {
            Ok(text) if !text.trim().is_empty() => text.trim().to_owned(),
            Ok(_) => write_new(path)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => write_new(path)?,
            Err(e) => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("read token file {}: {e}", path.display()),
                ));
            }
        };
        Ok(Token {
            path: Some(path.to_owned()),
            current: RwLock::new(current),
        })
    }

    /// A fixed token (given by the operator); rotation keeps it in memory only.
    pub fn fixed(value: &str) -> Token {
        Token {
            path: None,
            current: RwLock::new(value.to_owned()),
        }
    }

    /// Where the token of a store is kept by default: `<dir>/.trellis-token` for a directory
    /// store (hidden, so never loaded as config), `./.trellis-token` for etcd.
    pub fn default_path(store_spec: &str) -> PathBuf {
        if store_spec.starts_with("etcd://") {
            PathBuf::from(".trellis-token")
        } else {
            Path::new(store_spec).join(".trellis-token")
        }
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Whether `presented` is the current token (compared in constant time).
    pub fn check(&self, presented: &str) -> bool {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        let (a, b) = (current.as_bytes(), presented.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    /// Replaces the token with a new random one (written to the file first); the old one
    /// stops working at once.
    pub fn rotate(&self) -> std::io::Result<String> {
        let new = match &self.path {
            Some(path) => write_new(path)?,
            None => random_hex()?,
        };
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = new.clone();
        Ok(new)
    }
}

/// 32 bytes from the OS's random source, hex-encoded.
fn random_hex() -> std::io::Result<String> {
    use std::io::Read as _;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes a new token to `path` (mode 0600, through a temporary file and a rename).
fn write_new(path: &Path) -> std::io::Result<String> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let token = random_hex()?;
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(parent) = parent {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| {
            std::io::Error::new(e.kind(), format!("write token file {}: {e}", tmp.display()))
        })?;
    file.write_all(format!("{token}\n").as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn created_once_private_and_rotatable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store/.trellis-token");
        let token = Token::load_or_create(&path).unwrap();
        let first = std::fs::read_to_string(&path).unwrap().trim().to_owned();
        assert_eq!(first.len(), 64);
        assert!(token.check(&first));
        assert!(!token.check("wrong"));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A second start reads the same token.
        assert!(Token::load_or_create(&path).unwrap().check(&first));
        let second = token.rotate().unwrap();
        assert_ne!(first, second);
        assert!(!token.check(&first));
        assert!(token.check(&second));
        assert_eq!(std::fs::read_to_string(&path).unwrap().trim(), second);
    }
}
