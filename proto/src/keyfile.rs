//! A signing key on disk (the origin's segment key, the edge's ticket key):
//! a hex-encoded Ed25519 seed, generated on first start and readable only by
//! its owner.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Why the signing key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing the key file failed.
    #[error("cannot use signing key file {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The file does not hold 64 hex characters.
    #[error("signing key file {path} is not a hex Ed25519 seed (64 hex characters); restore it from backup, or delete it to generate a new key (whoever verifies with it must then be given the new public key)")]
    Malformed {
        /// The key file.
        path: PathBuf,
    },
    /// The system random number generator failed.
    #[error("the operating system's random number generator failed: {0}")]
    Generate(String),
}

/// Loads the 32-byte seed at `path`, generating and saving a new one if it
/// is absent. Returns the seed and whether it was created.
pub fn load_or_create(path: &Path) -> Result<([u8; 32], bool), KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let mut seed = [0u8; 32];
            hex::decode_to_slice(text.trim(), &mut seed).map_err(|_| KeyError::Malformed {
                path: path.to_owned(),
            })?;
            Ok((seed, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed).map_err(|e| KeyError::Generate(e.to_string()))?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let mut f = opts.open(path).map_err(io)?;
            writeln!(f, "{}", hex::encode(seed)).map_err(io)?;
            Ok((seed, true))
        }
        Err(e) => Err(io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_then_reloads_the_same_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/origin.key");
        let (a, created) = load_or_create(&path).expect("created");
        assert!(created);
        let (b, created) = load_or_create(&path).expect("loaded");
        assert!(!created);
        assert_eq!(a, b);
        std::fs::write(&path, "not hex").expect("write");
        assert!(matches!(
            load_or_create(&path),
            Err(KeyError::Malformed { .. })
        ));
    }
}
