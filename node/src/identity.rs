//! The node's ed25519 key: its identity in the mesh, made on first start
//! and kept in the data directory (PKCS#8 PEM, readable only by its owner).

use std::io::Write;
use std::path::Path;

use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::SigningKey;

/// Why the key could not be loaded or made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// Reading or writing the key file failed.
    #[error("node key {path}: {source}")]
    Io {
        /// The key file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The key file is not an ed25519 PKCS#8 PEM key.
    #[error("node key {path} is not an ed25519 PKCS#8 PEM key: {why}")]
    Invalid {
        /// The key file.
        path: String,
        /// The decoding error.
        why: String,
    },
}

/// Writes `bytes` to a new file readable only by its owner.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Loads `data_dir/node.key`, generating it if absent.
pub fn load_or_create(data_dir: &Path) -> Result<SigningKey, IdentityError> {
    let path = data_dir.join("node.key");
    let shown = path.display().to_string();
    match std::fs::read_to_string(&path) {
        Ok(pem) => {
            SigningKey::from_pkcs8_pem(&pem).map_err(|e| IdentityError::Invalid { path: shown, why: e.to_string() })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = SigningKey::generate(&mut rand::rngs::OsRng);
            let pem = key
                .to_pkcs8_pem(Default::default())
                .map_err(|e| IdentityError::Invalid { path: shown.clone(), why: e.to_string() })?;
            write_private(&path, pem.as_bytes()).map_err(|source| IdentityError::Io { path: shown, source })?;
            Ok(key)
        }
        Err(source) => Err(IdentityError::Io { path: shown, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_kept_across_starts() {
        let dir = tempfile::tempdir().expect("tmp");
        let a = load_or_create(dir.path()).expect("create");
        let b = load_or_create(dir.path()).expect("load");
        assert_eq!(a.verifying_key(), b.verifying_key());
        std::fs::write(dir.path().join("node.key"), "garbage").expect("write");
        assert!(matches!(load_or_create(dir.path()), Err(IdentityError::Invalid { .. })));
    }
}
