//! Users and their keys. On first start with no keys configured, strato
//! generates an access key pair for user `admin` and keeps it in the data
//! directory (mode 0600), so the embedded default needs no setup.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{Context, Result};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::config::{FileConfig, UserConfig};

pub use crate::store::FIRST_USER;
const FILE: &str = "credentials.toml";

#[derive(Debug, Clone)]
pub struct Users {
    pub list: Vec<UserConfig>,
    /// True when the first user's keys were generated just now.
    pub generated: bool,
}

#[derive(Serialize, Deserialize)]
struct Persisted {
    users: Vec<PersistedUser>,
}

#[derive(Serialize, Deserialize)]
struct PersistedUser {
    name: String,
    access_key: String,
    secret_key: String,
}

fn random_string(len: usize, alphabet: &[u8]) -> String {
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| alphabet[rng.gen_range(0..alphabet.len())] as char)
        .collect()
}

fn generate() -> UserConfig {
    UserConfig {
        name: FIRST_USER.into(),
        access_key: format!(
            "STR{}",
            random_string(17, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
        ),
        secret_key: random_string(
            40,
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
        ),
    }
}

/// First user: `STRATO_ACCESS_KEY`/`STRATO_SECRET_KEY` if set, else the keys
/// kept in the data directory, else new ones (then kept). Config-file users
/// follow; a config user named like the first one replaces it.
pub fn load_or_create_users(
    data_dir: &Path,
    env_keys: Option<(String, String)>,
    file: &FileConfig,
) -> Result<Users> {
    let path = data_dir.join(FILE);
    let mut generated = false;
    let first = if let Some((ak, sk)) = env_keys {
        UserConfig {
            name: FIRST_USER.into(),
            access_key: ak,
            secret_key: sk,
        }
    } else if path.exists() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let p: Persisted =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let u = p
            .users
            .into_iter()
            .next()
            .with_context(|| format!("{} lists no user", path.display()))?;
        UserConfig {
            name: u.name,
            access_key: u.access_key,
            secret_key: u.secret_key,
        }
    } else {
        let u = generate();
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let text = toml::to_string(&Persisted {
            users: vec![PersistedUser {
                name: u.name.clone(),
                access_key: u.access_key.clone(),
                secret_key: u.secret_key.clone(),
            }],
        })?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        generated = true;
        u
    };
    let mut list = vec![first];
    for u in &file.users {
        if let Some(existing) = list.iter_mut().find(|e| e.name == u.name) {
            *existing = u.clone();
        } else {
            list.push(u.clone());
        }
    }
    let mut seen = std::collections::HashSet::new();
    for u in &list {
        anyhow::ensure!(
            seen.insert(&u.access_key),
            "access key of user {} is used twice",
            u.name
        );
        anyhow::ensure!(
            !u.secret_key.is_empty(),
            "user {} has an empty secret key",
            u.name
        );
    }
    Ok(Users { list, generated })
}
