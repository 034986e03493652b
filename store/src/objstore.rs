//! The object-store client of the s3 segment backend: a few S3 calls
//! (PUT, multipart PUT, ranged GET, DELETE, LIST) made synchronous for the
//! store, which is called from plain threads and from inside tokio tasks.
//!
//! The SDK runs on a private runtime. Callers wait for a spawned task with
//! `futures::executor::block_on` on its JoinHandle: `Runtime::block_on` would
//! panic when the caller is itself a tokio worker (the server calls the
//! store from `spawn_blocking`, but the chunk API and tests do not always).
//!
//! Retries are the SDK's standard strategy (exponential backoff with
//! jitter, bounded attempts) plus connect and per-attempt timeouts, so an
//! unreachable store turns into [`StoreError::Unavailable`] within a bounded
//! time instead of hanging an ingest.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use bytes::Bytes;

use super::error::{Result, StoreError};

/// Settings of the s3 segment backend (`[storage]` with `backend = "s3"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Settings {
    /// e.g. `http://127.0.0.1:7480`
    pub endpoint: String,
    pub bucket: String,
    /// Key prefix of everything strato writes (`""` or ending in `/`).
    pub prefix: String,
    pub region: String,
    /// Keys; when unset, `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`.
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
    /// Chunk read cache; `None` = DATA/cache.
    pub cache_dir: Option<PathBuf>,
    /// Bound of the chunk read cache (0 disables it).
    pub cache_bytes: u64,
    /// Segments larger than this are uploaded in parts of this size.
    pub part_size: u64,
    /// Parts of one ingest stream in flight at once.
    pub upload_concurrency: usize,
    /// Attempts per request (the first included) before giving up.
    pub max_attempts: u32,
}

impl Default for S3Settings {
    fn default() -> Self {
        S3Settings {
            endpoint: String::new(),
            bucket: String::new(),
            prefix: String::new(),
            region: "us-east-1".into(),
            access_key: None,
            secret_key: None,
            cache_dir: None,
            cache_bytes: 1 << 30,
            part_size: 16 << 20,
            upload_concurrency: 4,
            max_attempts: 4,
        }
    }
}

impl S3Settings {
    /// Where strato's objects live, for messages: `s3 http://host:port/bucket/prefix`.
    pub fn describe(&self) -> String {
        format!(
            "s3 {}/{}/{}",
            self.endpoint.trim_end_matches('/'),
            self.bucket,
            self.prefix
        )
    }
}

/// What a GET of a segment range found.
pub(crate) enum Got {
    Data(Bytes),
    /// The object does not exist (404).
    Missing,
}

pub(crate) struct ObjectStore {
    rt: Option<tokio::runtime::Runtime>,
    client: Client,
    bucket: String,
    prefix: String,
    part_size: u64,
    concurrency: usize,
    name: String,
}

impl Drop for ObjectStore {
    fn drop(&mut self) {
        // Dropping a runtime from inside another runtime panics; the last
        // store handle may well go away inside a server task.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn normalise_prefix(p: &str) -> String {
    let p = p.trim_matches('/');
    if p.is_empty() {
        String::new()
    } else {
        format!("{p}/")
    }
}

impl ObjectStore {
    pub fn connect(s: &S3Settings) -> Result<ObjectStore> {
        let name = s.describe();
        let bad = |what: &str| StoreError::InvalidArgument(format!("[storage] {what}"));
        if s.endpoint.is_empty() {
            return Err(bad("backend = \"s3\" needs an endpoint"));
        }
        if s.bucket.is_empty() {
            return Err(bad("backend = \"s3\" needs a bucket"));
        }
        if s.part_size < (5 << 20) {
            return Err(bad("part_size must be at least 5 MiB (S3's minimum part)"));
        }
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let (ak, sk) =
            match (&s.access_key, &s.secret_key) {
                (Some(a), Some(k)) => (a.clone(), k.clone()),
                (None, None) => match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
                    (Some(a), Some(k)) => (a, k),
                    _ => return Err(bad(
                        "backend = \"s3\" needs access_key and secret_key, or AWS_ACCESS_KEY_ID \
                         and AWS_SECRET_ACCESS_KEY in the environment",
                    )),
                },
                _ => return Err(bad("set both access_key and secret_key, or neither")),
            };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("strato-s3")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Aborted(format!("cannot start the s3 runtime: {e}")))?;
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(s.region.clone()))
            .endpoint_url(s.endpoint.clone())
            .credentials_provider(Credentials::new(
                ak,
                sk,
                env("AWS_SESSION_TOKEN"),
                None,
                "strato",
            ))
            .force_path_style(true)
            // radosgw 16 rejects the SDK's default streaming uploads with
            // trailing checksums; checksums only where S3 requires them.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(s.max_attempts.max(1))
                    .with_initial_backoff(Duration::from_millis(100))
                    .with_max_backoff(Duration::from_secs(2)),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .operation_attempt_timeout(Duration::from_secs(120))
                    .build(),
            )
            .build();
        let client = {
            let _enter = rt.enter();
            Client::from_conf(conf)
        };
        Ok(ObjectStore {
            rt: Some(rt),
            client,
            bucket: s.bucket.clone(),
            prefix: normalise_prefix(&s.prefix),
            part_size: s.part_size,
            concurrency: s.upload_concurrency.max(1),
            name,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn segment_key(&self, id: u128) -> String {
        format!("{}segments/{id:032x}.seg", self.prefix)
    }

    pub fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    fn unavailable<E>(&self, what: &str, e: &SdkError<E>) -> StoreError
    where
        E: std::error::Error + 'static,
    {
        down(&self.name, format!("{what}: {}", DisplayErrorContext(e)))
    }

    /// Run `f` on the private runtime and wait for it from any thread.
    fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: Future<Output = Result<T>> + Send + 'static,
    {
        let Some(rt) = self.rt.as_ref() else {
            return Err(StoreError::Aborted("the s3 runtime is shut down".into()));
        };
        let handle = rt.spawn(f);
        match futures::executor::block_on(handle) {
            Ok(r) => r,
            Err(e) => Err(StoreError::Aborted(format!(
                "an s3 request task failed: {e}"
            ))),
        }
    }

    /// Is the bucket there and are we allowed in? Checked at open so a
    /// wrong endpoint, bucket or key fails the start, not the first PUT.
    pub fn check_bucket(&self) -> Result<()> {
        let c = self.client.clone();
        let bucket = self.bucket.clone();
        let r = self.run(async move { Ok(c.head_bucket().bucket(bucket).send().await) })?;
        r.map(|_| ()).map_err(|e| match status(&e) {
            Some(404) => StoreError::InvalidArgument(format!(
                "bucket {:?} does not exist at {}",
                self.bucket, self.name
            )),
            Some(403) => StoreError::InvalidArgument(format!(
                "access to bucket {:?} at {} is denied (check the keys)",
                self.bucket, self.name
            )),
            _ => self.unavailable("checking the bucket", &e),
        })
    }

    pub fn get_small(&self, key: &str) -> Result<Option<Bytes>> {
        let (c, bucket, k) = (self.client.clone(), self.bucket.clone(), key.to_string());
        let r = self.run(async move {
            match c.get_object().bucket(bucket).key(k).send().await {
                Ok(out) => Ok(Ok(out
                    .body
                    .collect()
                    .await
                    .map(aws_sdk_s3::primitives::AggregatedBytes::into_bytes))),
                Err(e) => Ok(Err(e)),
            }
        })?;
        match r {
            Ok(Ok(b)) => Ok(Some(b)),
            Ok(Err(e)) => Err(down(&self.name, format!("reading {key}: {e}"))),
            Err(e) if status(&e) == Some(404) => Ok(None),
            Err(e) => Err(self.unavailable(&format!("reading {key}"), &e)),
        }
    }

    pub fn put_small(&self, key: &str, data: Bytes) -> Result<()> {
        let (c, bucket, k) = (self.client.clone(), self.bucket.clone(), key.to_string());
        let r = self.run(async move {
            Ok(c.put_object()
                .bucket(bucket)
                .key(k)
                .content_length(data.len() as i64)
                .body(ByteStream::from(data))
                .send()
                .await)
        })?;
        r.map(|_| ())
            .map_err(|e| self.unavailable(&format!("writing {key}"), &e))
    }

    /// Upload the sealed file at `path` as `key`: one PUT up to the part
    /// size, else a multipart upload with at most `concurrency` parts in
    /// flight, each read from the file (memory: part size x concurrency).
    /// Returns only once the object store has acknowledged the whole object.
    pub fn put_file(&self, key: &str, path: &Path, len: u64) -> Result<()> {
        let (c, bucket, k, p) = (
            self.client.clone(),
            self.bucket.clone(),
            key.to_string(),
            path.to_owned(),
        );
        let _span = tracing::debug_span!("s3_put", key, len).entered();
        if len <= self.part_size {
            let r = self.run(async move {
                let body = ByteStream::from_path(&p)
                    .await
                    .map_err(|e| StoreError::Io {
                        path: p.clone(),
                        source: std::io::Error::other(e),
                    })?;
                Ok(c.put_object()
                    .bucket(bucket)
                    .key(k)
                    .content_length(len as i64)
                    .body(body)
                    .send()
                    .await)
            })?;
            return r
                .map(|_| ())
                .map_err(|e| self.unavailable(&format!("uploading {key}"), &e));
        }
        let (part_size, concurrency, name) = (self.part_size, self.concurrency, self.name.clone());
        self.run(async move { multipart(c, bucket, k, p, len, part_size, concurrency, name).await })
    }

    /// Bytes `offset .. offset + len` of `key`.
    pub fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Got> {
        if len == 0 {
            return Ok(Got::Data(Bytes::new()));
        }
        let (c, bucket, k) = (self.client.clone(), self.bucket.clone(), key.to_string());
        let range = format!("bytes={}-{}", offset, offset + len - 1);
        let r = self.run(async move {
            match c
                .get_object()
                .bucket(bucket)
                .key(k)
                .range(range)
                .send()
                .await
            {
                Ok(out) => Ok(Ok(out
                    .body
                    .collect()
                    .await
                    .map(aws_sdk_s3::primitives::AggregatedBytes::into_bytes))),
                Err(e) => Ok(Err(e)),
            }
        })?;
        match r {
            Ok(Ok(b)) if b.len() as u64 == len => Ok(Got::Data(b)),
            Ok(Ok(b)) => Err(down(
                &self.name,
                format!("{key}: asked for {len} bytes at {offset}, got {}", b.len()),
            )),
            Ok(Err(e)) => Err(down(&self.name, format!("reading {key}: {e}"))),
            Err(e) if status(&e) == Some(404) => Ok(Got::Missing),
            // 416: the object is shorter than the range: it is not the
            // segment the index describes.
            Err(e) if status(&e) == Some(416) => Ok(Got::Missing),
            Err(e) => Err(self.unavailable(&format!("reading {key}"), &e)),
        }
    }

    /// Several ranges at once (one GET each, concurrently): a read batch
    /// touching several segments waits for the slowest, not for the sum.
    pub fn get_ranges(&self, wanted: Vec<(String, u64, u64)>) -> Vec<Result<Got>> {
        if wanted.len() <= 1 {
            return wanted
                .into_iter()
                .map(|(k, o, l)| self.get_range(&k, o, l))
                .collect();
        }
        std::thread::scope(|s| {
            let handles: Vec<_> = wanted
                .iter()
                .map(|(k, o, l)| s.spawn(move || self.get_range(k, *o, *l)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(StoreError::Aborted("an s3 read thread panicked".into()))
                    })
                })
                .collect()
        })
    }

    /// Every key under `PREFIX/rest`, with its size.
    pub fn list(&self, rest: &str) -> Result<Vec<(String, u64)>> {
        Ok(self
            .list_detailed(rest)?
            .into_iter()
            .map(|o| (o.key, o.size))
            .collect())
    }

    /// The objects under `rest`, with their sizes and modification times.
    pub fn list_detailed(&self, rest: &str) -> Result<Vec<Listed>> {
        let (c, bucket, p) = (self.client.clone(), self.bucket.clone(), self.key(rest));
        let name = self.name.clone();
        self.run(async move {
            let mut out = Vec::new();
            let mut token: Option<String> = None;
            // Bounded: 100 k pages of 1000 keys is far beyond any test or
            // bench; a store answering forever with a token is broken.
            for _ in 0..100_000 {
                let resp = c
                    .list_objects_v2()
                    .bucket(&bucket)
                    .prefix(&p)
                    .set_continuation_token(token.take())
                    .send()
                    .await
                    .map_err(|e| {
                        down(&name, format!("listing {p}: {}", DisplayErrorContext(&e)))
                    })?;
                for o in resp.contents() {
                    if let Some(k) = o.key() {
                        out.push(Listed {
                            key: k.to_string(),
                            size: o.size().unwrap_or(0).max(0) as u64,
                            modified_ms: o
                                .last_modified()
                                .and_then(|t| u64::try_from(t.to_millis().ok()?).ok()),
                        });
                    }
                }
                match resp.next_continuation_token() {
                    Some(t) if resp.is_truncated() == Some(true) => token = Some(t.to_string()),
                    _ => return Ok(out),
                }
            }
            Ok(out)
        })
    }

    /// Delete `key`; an object already gone is not an error.
    pub fn delete(&self, key: &str) -> Result<()> {
        let (c, bucket, k) = (self.client.clone(), self.bucket.clone(), key.to_string());
        let r =
            self.run(async move { Ok(c.delete_object().bucket(bucket).key(k).send().await) })?;
        match r {
            Ok(_) => Ok(()),
            Err(e) if status(&e) == Some(404) => Ok(()),
            Err(e) => Err(self.unavailable(&format!("deleting {key}"), &e)),
        }
    }
}

/// One object of a listing.
#[derive(Debug, Clone)]
pub struct Listed {
    pub key: String,
    pub size: u64,
    /// When the object store last wrote it (ms since the epoch), if it said.
    pub modified_ms: Option<u64>,
}

/// The object store failed (unreachable, 5xx, or a reply that makes no
/// sense) after the SDK's retries; `name` says which store.
fn down(name: &str, what: String) -> StoreError {
    StoreError::Unavailable {
        backend: "s3 segment",
        message: format!("{name}: {what}"),
    }
}

fn status<E>(e: &SdkError<E>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

#[allow(clippy::too_many_arguments)]
async fn multipart(
    c: Client,
    bucket: String,
    key: String,
    path: PathBuf,
    len: u64,
    part_size: u64,
    concurrency: usize,
    name: String,
) -> Result<()> {
    use futures::stream::{StreamExt, TryStreamExt};
    let fail = |what: String| down(&name, what);
    let created = c
        .create_multipart_upload()
        .bucket(&bucket)
        .key(&key)
        .send()
        .await
        .map_err(|e| {
            fail(format!(
                "starting upload of {key}: {}",
                DisplayErrorContext(&e)
            ))
        })?;
    let Some(upload_id) = created.upload_id().map(str::to_string) else {
        return Err(fail(format!("starting upload of {key}: no upload id")));
    };
    let parts = len.div_ceil(part_size);
    let uploads = futures::stream::iter(0..parts)
        .map(|i| {
            let (c, bucket, key, path, upload_id) = (
                c.clone(),
                bucket.clone(),
                key.clone(),
                path.clone(),
                upload_id.clone(),
            );
            async move {
                let offset = i * part_size;
                let n = part_size.min(len - offset);
                let body = ByteStream::read_from()
                    .path(&path)
                    .offset(offset)
                    .length(Length::Exact(n))
                    .build()
                    .await
                    .map_err(|e| StoreError::Io {
                        path: path.clone(),
                        source: std::io::Error::other(e),
                    })?;
                let part_number = (i + 1) as i32;
                let out = c
                    .upload_part()
                    .bucket(bucket)
                    .key(&key)
                    .upload_id(upload_id)
                    .part_number(part_number)
                    .content_length(n as i64)
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| {
                        fail(format!(
                            "uploading part {part_number} of {key}: {}",
                            DisplayErrorContext(&e)
                        ))
                    })?;
                Ok::<_, StoreError>(
                    CompletedPart::builder()
                        .part_number(part_number)
                        .set_e_tag(out.e_tag().map(str::to_string))
                        .build(),
                )
            }
        })
        .buffered(concurrency)
        .try_collect::<Vec<_>>()
        .await;
    let done = match uploads {
        Ok(parts) => c
            .complete_multipart_upload()
            .bucket(&bucket)
            .key(&key)
            .upload_id(&upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map(|_| ())
            .map_err(|e| {
                fail(format!(
                    "completing upload of {key}: {}",
                    DisplayErrorContext(&e)
                ))
            }),
        Err(e) => Err(e),
    };
    if done.is_err() {
        // Best effort: an upload left open only costs space until the
        // store's lifecycle rules (or an operator) abort it.
        let _ = c
            .abort_multipart_upload()
            .bucket(&bucket)
            .key(&key)
            .upload_id(&upload_id)
            .send()
            .await;
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_and_keys() {
        assert_eq!(normalise_prefix(""), "");
        assert_eq!(normalise_prefix("/"), "");
        assert_eq!(normalise_prefix("a/b"), "a/b/");
        assert_eq!(normalise_prefix("/a/b/"), "a/b/");
    }

    #[test]
    fn settings_are_checked_before_any_request() {
        let mut s = S3Settings::default();
        assert!(matches!(
            ObjectStore::connect(&s),
            Err(StoreError::InvalidArgument(m)) if m.contains("endpoint")
        ));
        s.endpoint = "http://127.0.0.1:1".into();
        assert!(matches!(
            ObjectStore::connect(&s),
            Err(StoreError::InvalidArgument(m)) if m.contains("bucket")
        ));
        s.bucket = "b".into();
        s.part_size = 1 << 20;
        assert!(matches!(
            ObjectStore::connect(&s),
            Err(StoreError::InvalidArgument(m)) if m.contains("part_size")
        ));
        s.part_size = 8 << 20;
        s.access_key = Some("a".into());
        assert!(matches!(
            ObjectStore::connect(&s),
            Err(StoreError::InvalidArgument(m)) if m.contains("both")
        ));
    }

    #[test]
    fn unreachable_store_is_a_backend_error_in_bounded_time() {
        // Port 1 on loopback: nothing listens, connections are refused.
        let s = S3Settings {
            endpoint: "http://127.0.0.1:1".into(),
            bucket: "b".into(),
            access_key: Some("a".into()),
            secret_key: Some("s".into()),
            max_attempts: 2,
            ..Default::default()
        };
        let os = ObjectStore::connect(&s).unwrap();
        let t = std::time::Instant::now();
        let e = os.get_range("k", 0, 10).err().unwrap();
        assert!(
            matches!(&e, StoreError::Unavailable { message, .. } if message.contains("127.0.0.1:1")),
            "{e}"
        );
        assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
        // Works from inside a tokio runtime too (the server's case).
        let rt = tokio::runtime::Runtime::new().unwrap();
        let e2 = rt.block_on(async { os.get_small("k") });
        assert!(matches!(e2, Err(StoreError::Unavailable { .. })));
    }
}
