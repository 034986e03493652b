//! The repository's signing keys, and the public keys nodes trust.
//!
//! On disk (`DIR` is the repository's `DATA_DIR/trust`):
//!
//! ```text
//! DIR/keyring.json        {"version":1,"current":"<id>","keys":[{"id","public","retired_at","accept_until"}]}
//! DIR/signing-<id>.key    the 32-byte Ed25519 seed, hex, mode 0600
//! ```
//!
//! A key id is the first 8 bytes of BLAKE3(public key), hex. Rotation makes
//! a new current key and keeps the old one *accepted* (published at the
//! chunk API's key route, so nodes that fetch keys keep verifying tickets it
//! signed) until `accept_until`; new tickets are always signed with the
//! current key. Nodes given keys by hand (`--trust-key`, one per flag, or a
//! file with one per line) list old and new during a rotation.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

const PREFIX: &str = "ed25519:";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("keyring {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("not a public key {0:?}: expected ed25519:BASE64 (32 bytes)")]
    BadPublicKey(String),
    #[error("no trusted key given")]
    NoKeys,
}

/// A public key as nodes are given it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(pub VerifyingKey);

impl PublicKey {
    /// `ed25519:` + standard base64 of the 32 key bytes.
    pub fn to_text(&self) -> String {
        format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(self.0.as_bytes())
        )
    }

    pub fn parse(text: &str) -> Result<PublicKey, KeyError> {
        let bad = || KeyError::BadPublicKey(text.chars().take(80).collect());
        let b64 = text.trim().strip_prefix(PREFIX).ok_or_else(bad)?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| bad())?;
        let arr: [u8; 32] = bytes.try_into().map_err(|_| bad())?;
        VerifyingKey::from_bytes(&arr)
            .map(PublicKey)
            .map_err(|_| bad())
    }

    /// First 8 bytes of BLAKE3(public key): names the key in tickets.
    pub fn id(&self) -> [u8; 8] {
        key_id(&self.0)
    }
}

fn key_id(k: &VerifyingKey) -> [u8; 8] {
    let h = blake3::hash(k.as_bytes());
    let mut id = [0u8; 8];
    id.copy_from_slice(&h.as_bytes()[..8]);
    id
}

/// The keys a node accepts tickets from.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    keys: Vec<PublicKey>,
}

impl TrustedKeys {
    pub fn new(keys: Vec<PublicKey>) -> Result<TrustedKeys, KeyError> {
        if keys.is_empty() {
            return Err(KeyError::NoKeys);
        }
        Ok(TrustedKeys { keys })
    }

    /// Keys from `--trust-key` values and `--trust-key-file` contents (one
    /// key per line; blank lines and `#` comments skipped).
    pub fn from_texts<'a>(
        texts: impl IntoIterator<Item = &'a str>,
    ) -> Result<TrustedKeys, KeyError> {
        let mut keys = Vec::new();
        for t in texts {
            for line in t.lines() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                keys.push(PublicKey::parse(line)?);
            }
        }
        TrustedKeys::new(keys)
    }

    pub fn by_id(&self, id: &[u8; 8]) -> Option<&PublicKey> {
        self.keys.iter().find(|k| &k.id() == id)
    }

    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct KeyringFile {
    version: u32,
    current: String,
    keys: Vec<KeyEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct KeyEntry {
    id: String,
    public: String,
    /// Unix seconds when it stopped being current (None: current).
    retired_at: Option<u64>,
    /// Unix seconds until which tickets it signed are still accepted.
    accept_until: Option<u64>,
}

/// The repository's keys, loaded from (or created in) its directory.
pub struct Keyring {
    dir: PathBuf,
    file: KeyringFile,
    current: SigningKey,
}

impl Keyring {
    /// Open the keyring in `dir`, making a first key if there is none.
    /// Returns the keyring and whether a key was made now.
    pub fn open_or_create(dir: &Path) -> Result<(Keyring, bool), KeyError> {
        let path = dir.join("keyring.json");
        match std::fs::read(&path) {
            Ok(bytes) => {
                let file: KeyringFile =
                    serde_json::from_slice(&bytes).map_err(|e| KeyError::Corrupt {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                if file.version != 1 {
                    return Err(KeyError::Corrupt {
                        path,
                        reason: format!("format version {} (this strato reads 1)", file.version),
                    });
                }
                let current = load_seed(dir, &file.current)?;
                Ok((
                    Keyring {
                        dir: dir.to_path_buf(),
                        file,
                        current,
                    },
                    false,
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir).map_err(|source| KeyError::Io {
                    what: "creating",
                    path: dir.to_path_buf(),
                    source,
                })?;
                let key = SigningKey::generate(&mut rand::rngs::OsRng);
                let id = hex::encode(key_id(&key.verifying_key()));
                save_seed(dir, &id, &key)?;
                let file = KeyringFile {
                    version: 1,
                    current: id.clone(),
                    keys: vec![KeyEntry {
                        id,
                        public: PublicKey(key.verifying_key()).to_text(),
                        retired_at: None,
                        accept_until: None,
                    }],
                };
                let ring = Keyring {
                    dir: dir.to_path_buf(),
                    file,
                    current: key,
                };
                ring.save()?;
                Ok((ring, true))
            }
            Err(source) => Err(KeyError::Io {
                what: "reading",
                path,
                source,
            }),
        }
    }

    /// Make a new current key; the old one stays accepted for `keep_secs`.
    pub fn rotate(&mut self, now: u64, keep_secs: u64) -> Result<PublicKey, KeyError> {
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        let id = hex::encode(key_id(&key.verifying_key()));
        save_seed(&self.dir, &id, &key)?;
        for e in &mut self.file.keys {
            if e.retired_at.is_none() {
                e.retired_at = Some(now);
                e.accept_until = Some(now.saturating_add(keep_secs));
            }
        }
        self.file.keys.push(KeyEntry {
            id: id.clone(),
            public: PublicKey(key.verifying_key()).to_text(),
            retired_at: None,
            accept_until: None,
        });
        self.file.current = id;
        self.current = key;
        self.save()?;
        Ok(self.public())
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.current.verifying_key())
    }

    /// The current key and the retired keys still accepted at `now`.
    pub fn accepted(&self, now: u64) -> Vec<PublicKey> {
        self.file
            .keys
            .iter()
            .filter(|e| e.accept_until.is_none_or(|t| t > now))
            .filter_map(|e| PublicKey::parse(&e.public).ok())
            .collect()
    }

    pub(crate) fn sign(&self, msg: &[u8]) -> ([u8; 8], [u8; 64]) {
        (
            key_id(&self.current.verifying_key()),
            self.current.sign(msg).to_bytes(),
        )
    }

    fn save(&self) -> Result<(), KeyError> {
        let path = self.dir.join("keyring.json");
        let tmp = self.dir.join("keyring.json.tmp");
        let text = serde_json::to_vec_pretty(&self.file).map_err(|e| KeyError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        write_private(&tmp, &text)?;
        std::fs::rename(&tmp, &path).map_err(|source| KeyError::Io {
            what: "replacing",
            path,
            source,
        })
    }
}

fn seed_path(dir: &Path, id: &str) -> PathBuf {
    // `id` is always our own hex encoding, never user input.
    dir.join(format!("signing-{id}.key"))
}

fn save_seed(dir: &Path, id: &str, key: &SigningKey) -> Result<(), KeyError> {
    write_private(&seed_path(dir, id), hex::encode(key.to_bytes()).as_bytes())
}

fn load_seed(dir: &Path, id: &str) -> Result<SigningKey, KeyError> {
    let path = seed_path(dir, id);
    let text = std::fs::read_to_string(&path).map_err(|source| KeyError::Io {
        what: "reading",
        path: path.clone(),
        source,
    })?;
    let bytes = hex::decode(text.trim()).map_err(|e| KeyError::Corrupt {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let seed: [u8; 32] = bytes.try_into().map_err(|_| KeyError::Corrupt {
        path: path.clone(),
        reason: "not 32 bytes".into(),
    })?;
    let key = SigningKey::from_bytes(&seed);
    if hex::encode(key_id(&key.verifying_key())) != id {
        return Err(KeyError::Corrupt {
            path,
            reason: "the key does not match its id".into(),
        });
    }
    Ok(key)
}

/// Write a secret: created 0600 before any byte is in it, then synced.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| KeyError::Io {
        what: "writing",
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyring_is_made_once_kept_private_and_rotates_with_the_old_key_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let (ring, made) = Keyring::open_or_create(dir.path()).unwrap();
        assert!(made);
        let first = ring.public();
        let (again, made) = Keyring::open_or_create(dir.path()).unwrap();
        assert!(!made);
        assert_eq!(again.public(), first);
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let meta = entry.unwrap().metadata().unwrap();
            let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions());
            assert_eq!(mode & 0o077, 0, "keyring files are private");
        }
        let mut ring = again;
        let second = ring.rotate(1000, 3600).unwrap();
        assert_ne!(first, second);
        assert_eq!(ring.accepted(2000), vec![first, second]);
        assert_eq!(ring.accepted(5000), vec![second], "old key expires");
        let (reopened, _) = Keyring::open_or_create(dir.path()).unwrap();
        assert_eq!(reopened.public(), second);
    }

    #[test]
    fn public_key_text_round_trips_and_garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (ring, _) = Keyring::open_or_create(dir.path()).unwrap();
        let text = ring.public().to_text();
        assert!(text.starts_with("ed25519:"));
        assert_eq!(PublicKey::parse(&text).unwrap(), ring.public());
        for bad in ["", "ed25519:", "rsa:AAAA", "ed25519:!!!!", "ed25519:AAAA"] {
            assert!(PublicKey::parse(bad).is_err(), "{bad:?}");
        }
        let keys = TrustedKeys::from_texts([format!("# repo\n{text}\n").as_str()]).unwrap();
        assert!(keys.by_id(&ring.public().id()).is_some());
        assert!(TrustedKeys::from_texts(["# nothing\n"]).is_err());
    }
}
