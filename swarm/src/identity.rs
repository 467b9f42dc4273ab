//! The node's ed25519 identity, kept at `<store dir>/identity.key` (protobuf encoding, mode 0600) so
//! the peer id survives restarts and provider records stay valid.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use libp2p::identity::Keypair;

use crate::Error;

/// File name of the identity inside the store directory.
pub const IDENTITY_FILE: &str = "identity.key";

/// Loads the identity from `dir`, creating it (atomically, mode 0600) when missing.
pub fn load_or_create(dir: &Path) -> Result<Keypair, Error> {
    let path = dir.join(IDENTITY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes)
            .map_err(|source| Error::IdentityDecode { path, source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = Keypair::generate_ed25519();
            let bytes = key
                .to_protobuf_encoding()
                .map_err(|source| Error::IdentityDecode {
                    path: path.clone(),
                    source,
                })?;
            let tmp = dir.join(format!("{IDENTITY_FILE}.tmp"));
            let write = || -> std::io::Result<()> {
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)?;
                f.write_all(&bytes)?;
                f.sync_all()?;
                std::fs::rename(&tmp, &path)
            };
            write().map_err(|source| Error::Identity {
                path: path.clone(),
                source,
            })?;
            Ok(key)
        }
        Err(source) => Err(Error::Identity { path, source }),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn identity_is_created_private_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(IDENTITY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = load_or_create(dir.path()).unwrap();
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
    }

    #[test]
    fn garbage_identity_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(IDENTITY_FILE), b"nope").unwrap();
        assert!(matches!(
            load_or_create(dir.path()),
            Err(Error::IdentityDecode { .. })
        ));
    }
}
