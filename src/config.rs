//! Configuration: command-line flags win, then `STRATO_*` environment
//! variables (both handled by clap), then the TOML file, then defaults.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::store::{Engine, StoreConfig};

/// The TOML file. Every field is optional.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
    /// The metadata engine; `[meta] engine` says the same and wins.
    pub engine: Option<Engine>,
    #[serde(default)]
    pub meta: MetaConfig,
    pub verify_reads: Option<bool>,
    pub segment_size: Option<u64>,
    #[serde(default)]
    pub gc: GcConfig,
    #[serde(default)]
    pub s3: S3FileConfig,
    #[serde(default)]
    pub users: Vec<UserConfig>,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default)]
    pub migration: MigrationConfig,
    #[serde(default)]
    pub storage: StorageConfig,
}

/// `[storage]`: where segments live. `local` (the default) keeps them in
/// DATA_DIR/segments; `s3` in an S3-compatible object store, with the chunk
/// index in the metadata store, so several frontends can share them.
#[derive(Debug, Default, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    pub backend: Option<StorageBackend>,
    /// e.g. "http://127.0.0.1:7480"
    pub endpoint: Option<String>,
    pub bucket: Option<String>,
    /// Key prefix of everything strato writes in the bucket.
    pub prefix: Option<String>,
    pub region: Option<String>,
    /// When unset: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
    /// The local chunk read cache (default DATA_DIR/cache).
    pub cache_dir: Option<PathBuf>,
    /// Its bound in bytes (default 1 GiB; 0 turns it off).
    pub cache_bytes: Option<u64>,
    /// Segments are uploaded in parts of this size above it (default 16 MiB).
    pub part_size: Option<u64>,
    /// Parts one ingest stream uploads at once (default 4).
    pub upload_concurrency: Option<usize>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    Local,
    S3,
}

impl StorageConfig {
    /// Settings given (flags, environment) win field by field over `self`.
    pub fn overridden_by(&self, over: &StorageConfig) -> StorageConfig {
        macro_rules! pick {
            ($($f:ident),*) => { StorageConfig { $($f: over.$f.clone().or_else(|| self.$f.clone())),* } };
        }
        pick!(
            backend,
            endpoint,
            bucket,
            prefix,
            region,
            access_key,
            secret_key,
            cache_dir,
            cache_bytes,
            part_size,
            upload_concurrency
        )
    }

    pub fn storage(&self) -> crate::store::Storage {
        if self.backend != Some(StorageBackend::S3) {
            return crate::store::Storage::Local;
        }
        let d = crate::store::S3Settings::default();
        crate::store::Storage::S3(Box::new(crate::store::S3Settings {
            endpoint: self.endpoint.clone().unwrap_or_default(),
            bucket: self.bucket.clone().unwrap_or_default(),
            prefix: self.prefix.clone().unwrap_or_default(),
            region: self.region.clone().unwrap_or(d.region),
            access_key: self.access_key.clone(),
            secret_key: self.secret_key.clone(),
            cache_dir: self.cache_dir.clone(),
            cache_bytes: self.cache_bytes.unwrap_or(d.cache_bytes),
            part_size: self.part_size.unwrap_or(d.part_size),
            upload_concurrency: self.upload_concurrency.unwrap_or(d.upload_concurrency),
            max_attempts: d.max_attempts,
        }))
    }
}

/// `[meta]`: where the metadata lives. The embedded engines keep it in the
/// data directory; `postgres` in the database at `url`, which several
/// frontends can share. A url with a password belongs in this file (mode
/// 0600) or STRATO_META_URL rather than on a command line other users can read.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetaConfig {
    pub engine: Option<Engine>,
    pub url: Option<String>,
}

/// `[migration]`: the claim table this site keeps for migration groups
/// sending into it (memory is bounded; idle groups expire).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationConfig {
    /// Migration groups tracked at once (default 1024).
    pub max_groups: Option<usize>,
    /// Page ids held over all groups, about 80 bytes each (default 16 Mi).
    pub max_claimed_ids: Option<usize>,
    /// Seconds after which a group nobody claimed in is dropped (default 3600).
    pub group_idle_secs: Option<u64>,
}

/// `[tls]`: HTTPS on the S3 / chunk API port.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain (leaf first) and key; reloaded on SIGHUP.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Make a private CA and a certificate in DATA_DIR/tls on first start.
    #[serde(default)]
    pub self_signed: bool,
    /// Bound on connections open at once (default 4096).
    pub max_connections: Option<usize>,
    /// Seconds a new connection may stay silent before its first request
    /// (default 20).
    pub header_timeout_secs: Option<u64>,
    /// Seconds a client may take to send a request's headers, and may stay
    /// idle between requests on a kept-alive connection (default 100).
    pub idle_timeout_secs: Option<u64>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcConfig {
    pub grace_secs: Option<u64>,
    pub dead_ratio: Option<f64>,
    pub upload_expiry_secs: Option<u64>,
    /// seconds between background GC runs in `serve` (0 = never)
    pub interval_secs: Option<u64>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3FileConfig {
    pub region: Option<String>,
    pub virtual_host_domain: Option<String>,
    #[serde(default)]
    pub anonymous_read: Vec<String>,
    pub max_object_size: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    pub access_key: String,
    pub secret_key: String,
}

impl FileConfig {
    pub fn load(path: &Path) -> anyhow::Result<FileConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading config file {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))
    }

    /// `engine_flag` and `url_flag` come from the command line or the
    /// environment and win over the file. A url with no engine named
    /// anywhere means postgres.
    pub fn store_config(&self, engine_flag: Option<Engine>, url_flag: Option<&str>) -> StoreConfig {
        let d = StoreConfig::default();
        let meta_url = url_flag
            .map(str::to_string)
            .or_else(|| self.meta.url.clone())
            .filter(|u| !u.is_empty());
        let engine =
            engine_flag
                .or(self.meta.engine)
                .or(self.engine)
                .unwrap_or(if meta_url.is_some() {
                    Engine::Postgres
                } else {
                    d.engine
                });
        StoreConfig {
            engine,
            meta_url,
            segment_size: self.segment_size.unwrap_or(d.segment_size),
            verify_reads: self.verify_reads.unwrap_or(d.verify_reads),
            storage: self.storage.storage(),
            ..d
        }
    }

    pub fn claim_limits(&self) -> crate::chunk_api::claims::ClaimLimits {
        let d = crate::chunk_api::claims::ClaimLimits::default();
        let m = &self.migration;
        crate::chunk_api::claims::ClaimLimits {
            max_groups: m.max_groups.unwrap_or(d.max_groups).max(1),
            max_ids: m.max_claimed_ids.unwrap_or(d.max_ids).max(1),
            idle: m.group_idle_secs.map(Duration::from_secs).unwrap_or(d.idle),
        }
    }

    pub fn gc_options(&self) -> crate::store::GcOptions {
        let d = crate::store::GcOptions::default();
        crate::store::GcOptions {
            grace: self
                .gc
                .grace_secs
                .map(Duration::from_secs)
                .unwrap_or(d.grace),
            dead_ratio: self.gc.dead_ratio.unwrap_or(d.dead_ratio),
            upload_expiry: self
                .gc
                .upload_expiry_secs
                .map(Duration::from_secs)
                .unwrap_or(d.upload_expiry),
        }
    }
}

/// `$XDG_DATA_HOME/strato`, else `~/.local/share/strato`, else `./strato-data`.
pub fn default_data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("strato");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h).join(".local/share/strato");
    }
    PathBuf::from("strato-data")
}

/// Parse "90s", "15m", "2h", "7d" or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mul) = match s.char_indices().last() {
        Some((i, 's')) => (&s[..i], 1),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 'h')) => (&s[..i], 3600),
        Some((i, 'd')) => (&s[..i], 86400),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .map(|n| Duration::from_secs(n * mul))
        .map_err(|_| format!("invalid duration {s:?} (e.g. 0, 90s, 15m, 2h, 7d)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86400)
        );
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn toml_users_and_unknown_fields() {
        let c: FileConfig = toml::from_str(
            r#"engine = "sled"
               [[users]]
               name = "alice"
               access_key = "AK"
               secret_key = "SK"
               [gc]
               grace_secs = 5"#,
        )
        .unwrap();
        assert_eq!(c.engine, Some(Engine::Sled));
        assert_eq!(c.users.len(), 1);
        assert_eq!(c.gc_options().grace, Duration::from_secs(5));
        assert!(toml::from_str::<FileConfig>("bogus = 1").is_err());
    }

    #[test]
    fn storage_section_and_overrides() {
        use crate::store::Storage;
        let c: FileConfig = toml::from_str(
            r#"[storage]
               backend = "s3"
               endpoint = "http://127.0.0.1:7480"
               bucket = "images"
               cache_bytes = 0"#,
        )
        .unwrap();
        let Storage::S3(s) = c.storage.storage() else {
            panic!("not s3")
        };
        assert_eq!(
            (s.endpoint.as_str(), s.bucket.as_str(), s.cache_bytes),
            ("http://127.0.0.1:7480", "images", 0)
        );
        assert_eq!(s.part_size, 16 << 20);
        let flags = StorageConfig {
            bucket: Some("other".into()),
            ..Default::default()
        };
        let Storage::S3(s) = c.storage.overridden_by(&flags).storage() else {
            panic!("not s3")
        };
        assert_eq!((s.bucket.as_str(), s.cache_bytes), ("other", 0));
        assert_eq!(FileConfig::default().storage.storage(), Storage::Local);
        assert!(toml::from_str::<FileConfig>("[storage]\nbackend = \"nfs\"").is_err());
        assert!(toml::from_str::<FileConfig>("[storage]\nhost = \"x\"").is_err());
    }

    #[test]
    fn meta_section_and_its_precedence() {
        let c: FileConfig = toml::from_str(
            r#"engine = "sled"
               [meta]
               engine = "postgres"
               url = "postgres://u:pw@127.0.0.1:5432/strato""#,
        )
        .unwrap();
        let s = c.store_config(None, None);
        assert_eq!(s.engine, Engine::Postgres, "[meta] engine wins over engine");
        assert_eq!(
            s.meta_url.as_deref(),
            Some("postgres://u:pw@127.0.0.1:5432/strato")
        );
        let s = c.store_config(Some(Engine::Redb), Some("postgres://other/db"));
        assert_eq!(s.engine, Engine::Redb, "the flag wins");
        assert_eq!(s.meta_url.as_deref(), Some("postgres://other/db"));
        // A url alone means postgres; nothing at all means redb.
        let only_url: FileConfig = toml::from_str("[meta]\nurl = \"postgres://h/d\"").unwrap();
        assert_eq!(only_url.store_config(None, None).engine, Engine::Postgres);
        let none = FileConfig::default().store_config(None, None);
        assert_eq!((none.engine, none.meta_url), (Engine::Redb, None));
        assert!(toml::from_str::<FileConfig>("[meta]\nengine = \"mysql\"").is_err());
        assert!(toml::from_str::<FileConfig>("[meta]\nhost = \"x\"").is_err());
    }
}
