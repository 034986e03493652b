//! Hypervisor-node commands: `strato overlay create`, `strato vm prepare`,
//! `strato nbd serve` and `strato mount` (pseudo images over NBD and as a
//! file).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use strato::image::fuse::{self, MountedView, ViewOptions};
use strato::image::nbd::{self, Exports};
use strato::image::pseudo::PseudoImage;
use strato::image::qcow2::{self, BackingFormat, OverlaySpec};

use super::common::{open_cache, pull_image, runtime, s3_url, Remote, RemoteCache};
use super::Ctx;

#[derive(Subcommand, Debug)]
pub enum OverlayCmd {
    /// Create an empty qcow2 v3 overlay over a backing file or NBD URL
    Create(OverlayArgs),
}

#[derive(Args, Debug)]
pub struct OverlayArgs {
    /// Backing file: a path (made absolute) or a URL such as nbd+unix:///NAME?socket=PATH
    #[arg(long)]
    pub backing: String,
    /// raw or qcow2 (default: detected for files, raw for URLs)
    #[arg(long)]
    pub backing_format: Option<BackingFormat>,
    /// Virtual size in bytes (default: the backing file's; required for URLs)
    #[arg(long)]
    pub size: Option<u64>,
    /// The overlay to create (never replaces an existing file)
    pub out: PathBuf,
}

pub fn overlay(ctx: &Ctx, cmd: OverlayCmd) -> Result<ExitCode> {
    match cmd {
        OverlayCmd::Create(a) => {
            let t = Instant::now();
            let info = qcow2::create_overlay(
                &a.out,
                &OverlaySpec {
                    backing: a.backing.clone(),
                    format: a.backing_format,
                    size: a.size,
                },
            )
            .with_context(|| format!("creating overlay {}", a.out.display()))?;
            ctx.emit(&info, || {
                println!(
                    "created {} ({} bytes) over {} ({}) in {:.1} ms",
                    info.path.display(),
                    info.size,
                    info.backing,
                    info.backing_format,
                    t.elapsed().as_secs_f64() * 1000.0
                );
            })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum VmCmd {
    /// Pull an image once and create COUNT overlays over it
    Prepare(PrepareArgs),
    /// Store a guest's RAM (QEMU mapped-ram file) as a deduplicated object
    Save(super::vmsave::SaveArgs),
    /// Pull a saved guest onto this host and load it into a waiting QEMU
    Restore(super::vmsave::RestoreArgs),
    /// Load a restored memory file into a QEMU started with -incoming defer
    Load(super::vmsave::LoadArgs),
}

#[derive(Args, Debug)]
pub struct PrepareArgs {
    /// s3://BUCKET/KEY
    #[arg(long)]
    pub image: String,
    #[command(flatten)]
    pub remote: Remote,
    /// Node-local chunk cache (default: DIR/cache)
    #[arg(long)]
    pub cache: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    pub count: usize,
    /// Where the backing file (base.img) and overlays (vm-N.qcow2) go
    #[arg(long)]
    pub dir: PathBuf,
    /// Format of the pulled image
    #[arg(long, default_value = "raw")]
    pub format: BackingFormat,
}

#[derive(serde::Serialize)]
struct PrepareReport {
    pull: strato::distribute::PullReport,
    backing: PathBuf,
    overlays: Vec<PathBuf>,
    overlay_ms_max: f64,
    overlay_ms_total: f64,
}

pub fn vm(ctx: &Ctx, cmd: VmCmd) -> Result<ExitCode> {
    let a = match cmd {
        VmCmd::Prepare(a) => a,
        VmCmd::Save(a) => return super::vmsave::save(ctx, a),
        VmCmd::Restore(a) => return super::vmsave::restore(ctx, a),
        VmCmd::Load(a) => return super::vmsave::load(ctx, a),
    };
    let (bucket, key) = s3_url(&a.image)?;
    std::fs::create_dir_all(&a.dir).with_context(|| format!("creating {}", a.dir.display()))?;
    let cache = open_cache(&a.cache.clone().unwrap_or_else(|| a.dir.join("cache")))?;
    let client = a.remote.client()?;
    let base = a.dir.join("base.img");
    let pull = pull_image(&client, &cache, (&bucket, &key), Some(&base), 8)?;
    let (backing, format, size) = qcow2::resolve_backing(&OverlaySpec {
        backing: base.to_string_lossy().into_owned(),
        format: Some(a.format),
        size: None,
    })?;
    let mut overlays = Vec::with_capacity(a.count);
    let (mut max, mut total) = (0f64, 0f64);
    for i in 0..a.count {
        let out = a.dir.join(format!("vm-{i}.qcow2"));
        let t = Instant::now();
        qcow2::write_overlay(&out, &backing, format, size)
            .with_context(|| format!("creating {}", out.display()))?;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        max = max.max(ms);
        total += ms;
        overlays.push(out);
    }
    let report = PrepareReport {
        pull,
        backing: base,
        overlays,
        overlay_ms_max: max,
        overlay_ms_total: total,
    };
    ctx.emit(&report, || {
        println!(
            "pulled {} bytes (fetched {}) into {}; {} overlays in {:.1} ms (max {:.2} ms each)",
            report.pull.size,
            report.pull.fetched_bytes,
            report.backing.display(),
            report.overlays.len(),
            total,
            max
        );
    })?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Subcommand, Debug)]
pub enum NbdCmd {
    /// Export s3://BUCKET/KEY over NBD as an on-demand pseudo image
    Serve(NbdArgs),
}

#[derive(Args, Debug)]
pub struct NbdArgs {
    /// s3://BUCKET/KEY
    #[arg(long)]
    pub image: String,
    #[command(flatten)]
    pub from: RemoteCache,
    /// Unix socket to listen on
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// TCP address to listen on (e.g. 127.0.0.1:10809)
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// Also show the image as this read-only file (FUSE, as `strato mount`),
    /// served by the same pseudo image: NBD and file readers share fetches
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Export name (default: the object key)
    #[arg(long)]
    pub name: Option<String>,
    /// Fetch the whole image in the background, this many chunks at once (0: only on demand)
    #[arg(long, default_value_t = 0)]
    pub prefetch: usize,
    /// Also serve the chunk API on this address (same keys), fetching what
    /// the cache lacks from upstream: other pseudo images can use it as
    /// their --endpoint (a rack-level image feeding node-level ones)
    #[arg(long)]
    pub serve_chunks: Option<std::net::SocketAddr>,
    /// Log export statistics this often (seconds; 0: only at exit)
    #[arg(long, default_value_t = 60)]
    pub stats_interval: u64,
    /// NBD connections served at once; more are closed at once
    #[arg(long, default_value_t = 256)]
    pub max_connections: usize,
    /// A client must finish the NBD negotiation within this (milliseconds)
    #[arg(long, default_value_t = 10_000)]
    pub handshake_timeout_ms: u64,
    /// Close a connection that sends no request for this long (seconds;
    /// 0: never, the default, as qemu stays silent while its VM is idle)
    #[arg(long, default_value_t = 0)]
    pub idle_timeout: u64,
}

pub fn nbd(ctx: &Ctx, cmd: NbdCmd) -> Result<ExitCode> {
    let NbdCmd::Serve(a) = cmd;
    if a.socket.is_none() && a.listen.is_none() && a.file.is_none() {
        anyhow::bail!("give --socket PATH, --listen ADDR and/or --file PATH");
    }
    let (bucket, key) = s3_url(&a.image)?;
    let name = a.name.clone().unwrap_or_else(|| key.clone());
    let (client, cache) = a.from.open()?;
    let keys = a.from.remote.keys()?;
    let rt = runtime()?;
    let json = ctx.json;
    rt.block_on(async move {
        let mut stop = StopSignals::new()?;
        let point = a.file.as_deref().map(ViewFile::prepare).transpose()?;
        let img = PseudoImage::open(&name, client, cache.clone(), &bucket, &key)
            .await
            .with_context(|| format!("opening s3://{bucket}/{key}"))?;
        let mut exports = Exports::default();
        exports.add(&name, img.clone());
        // One gate for both listeners: the connection bound is per export.
        let gate = nbd::NbdGate::new(
            exports.clone(),
            nbd::NbdLimits {
                max_connections: a.max_connections,
                handshake_timeout: Duration::from_millis(a.handshake_timeout_ms),
                idle_timeout: (a.idle_timeout > 0).then(|| Duration::from_secs(a.idle_timeout)),
            },
        );
        let mut urls = Vec::new();
        if let Some(path) = &a.socket {
            remove_stale_socket(path)?;
            let l = tokio::net::UnixListener::bind(path)
                .with_context(|| format!("cannot listen on {}", path.display()))?;
            urls.push(format!("nbd+unix:///{name}?socket={}", path.display()));
            let l = std::sync::Arc::new(l);
            spawn_accept_loop(
                move || {
                    let l = l.clone();
                    async move { l.accept().await.map(|(s, _)| s) }
                },
                gate.clone(),
            );
        }
        if let Some(addr) = a.listen {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            urls.push(format!("nbd://{}/{name}", l.local_addr()?));
            let l = std::sync::Arc::new(l);
            spawn_accept_loop(
                move || {
                    let l = l.clone();
                    async move {
                        let (s, _) = l.accept().await?;
                        let _ = s.set_nodelay(true);
                        Ok(s)
                    }
                },
                gate.clone(),
            );
        }
        if let Some(addr) = a.serve_chunks {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            urls.push(format!("chunks at http://{}", l.local_addr()?));
            spawn_chunk_server(l, cache.clone(), img.clone(), &keys);
        }
        let view = match &point {
            Some(p) => {
                urls.push(format!("file {}", p.path().display()));
                Some(mount_view(&img, p, false)?)
            }
            None => None,
        };
        if a.prefetch > 0 {
            tokio::spawn(img.clone().prefetch(a.prefetch));
        }
        spawn_stats_log(&img, a.stats_interval);
        {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            for u in &urls {
                writeln!(out, "strato nbd serving {u}")?;
            }
            out.flush()?;
        }
        stop.wait().await;
        if let Some(view) = view {
            tokio::task::spawn_blocking(move || view.unmount())
                .await
                .context("unmount task")??;
        }
        drop(point);
        print_final_stats(&img, json)?;
        if let Some(path) = &a.socket {
            let _ = std::fs::remove_file(path);
        }
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Logs the export's statistics every `secs` seconds (0: never).
fn spawn_stats_log(img: &std::sync::Arc<PseudoImage>, secs: u64) {
    if secs == 0 {
        return;
    }
    let img = img.clone();
    let every = Duration::from_secs(secs);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            tracing::info!(stats = ?img.stats(), "export statistics");
        }
    });
}

/// At exit: seal the cache, print the statistics (one JSON line with --json).
fn print_final_stats(img: &PseudoImage, json: bool) -> Result<()> {
    if let Err(e) = img.close() {
        tracing::warn!("closing the cache: {e}");
    }
    let stats = img.stats();
    if json {
        println!("{}", serde_json::to_string(&stats)?);
    } else {
        println!(
            "export {}: {} reads ({} failed), {} cache hits, {} misses, fetched {} bytes in {} chunks, complete: {}",
            stats.name, stats.reads, stats.read_errors, stats.cache_hits, stats.cache_misses,
            stats.fetched_bytes, stats.fetched_chunks, stats.complete
        );
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct MountArgs {
    /// s3://BUCKET/KEY
    pub image: String,
    /// The file the image appears as (created, and removed at unmount, if
    /// absent; an existing one must be an empty regular file)
    pub path: PathBuf,
    #[command(flatten)]
    pub from: RemoteCache,
    /// Fetch the whole image in the background, this many chunks at once (0: only on demand)
    #[arg(long, default_value_t = 0)]
    pub prefetch: usize,
    /// Let every user read the file (default: only the user who mounts it)
    #[arg(long)]
    pub allow_other: bool,
    /// Log export statistics this often (seconds; 0: only at exit)
    #[arg(long, default_value_t = 60)]
    pub stats_interval: u64,
}

/// `strato mount`: the pseudo image as a read-only file until SIGTERM or
/// SIGINT, then unmounted and its statistics printed.
pub fn mount(ctx: &Ctx, a: MountArgs) -> Result<ExitCode> {
    let (bucket, key) = s3_url(&a.image)?;
    let (client, cache) = a.from.open()?;
    let rt = runtime()?;
    let json = ctx.json;
    rt.block_on(async move {
        // Signal handlers first: a SIGTERM from here on unmounts.
        let mut stop = StopSignals::new()?;
        let point = ViewFile::prepare(&a.path)?;
        let img = PseudoImage::open(&key, client, cache, &bucket, &key)
            .await
            .with_context(|| format!("opening s3://{bucket}/{key}"))?;
        let view = mount_view(&img, &point, a.allow_other)?;
        if a.prefetch > 0 {
            tokio::spawn(img.clone().prefetch(a.prefetch));
        }
        spawn_stats_log(&img, a.stats_interval);
        {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "strato mount serving {} ({} bytes of s3://{bucket}/{key})",
                view.path().display(),
                img.size()
            )?;
            out.flush()?;
        }
        stop.wait().await;
        tokio::task::spawn_blocking(move || view.unmount())
            .await
            .context("unmount task")??;
        drop(point);
        print_final_stats(&img, json)
    })?;
    Ok(ExitCode::SUCCESS)
}

/// SIGTERM and SIGINT, listened to from creation on (so none is lost
/// between mounting and waiting).
pub(super) struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    pub(super) fn new() -> Result<StopSignals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    pub(super) async fn wait(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {},
            _ = self.int.recv() => {},
        }
    }
}

/// The mountpoint of a file view: an absent path is created (empty, 0444)
/// and removed again on drop; an existing one must be an empty regular
/// file, so a mount never hides someone's data.
pub(super) struct ViewFile {
    path: PathBuf,
    created: bool,
}

impl ViewFile {
    pub(super) fn prepare(path: &Path) -> Result<ViewFile> {
        let path =
            std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))?;
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() && m.len() == 0 => Ok(ViewFile {
                path,
                created: false,
            }),
            Ok(m) if m.is_file() => anyhow::bail!(
                "{} exists and is not empty; a file view mounts on an absent path or an empty file",
                path.display()
            ),
            Ok(_) => anyhow::bail!("{} exists and is not a regular file", path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o444)
                    .open(&path)
                    .with_context(|| format!("creating the mountpoint {}", path.display()))?;
                Ok(ViewFile {
                    path,
                    created: true,
                })
            }
            Err(e) => Err(anyhow::Error::new(e).context(format!(
                "{} (a stale mount of a killed `strato mount`? `umount -l` it)",
                path.display()
            ))),
        }
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ViewFile {
    fn drop(&mut self) {
        if self.created {
            if let Err(e) = std::fs::remove_file(&self.path) {
                tracing::warn!("removing the mountpoint {}: {e}", self.path.display());
            }
        }
    }
}

/// Mounts `img` on `point`, its reads served by the current runtime.
pub(super) fn mount_view(
    img: &std::sync::Arc<PseudoImage>,
    point: &ViewFile,
    allow_other: bool,
) -> Result<MountedView> {
    let opts = ViewOptions { allow_other };
    Ok(fuse::mount(
        img.clone(),
        point.path(),
        tokio::runtime::Handle::current(),
        &opts,
    )?)
}

/// The chunk API over the cache, SigV4-checked with the export's keys,
/// falling back to the pseudo image (and so to its upstream) on a miss.
fn spawn_chunk_server(
    l: tokio::net::TcpListener,
    cache: strato::store::Store,
    img: std::sync::Arc<PseudoImage>,
    keys: &strato::chunk_api::Keys,
) {
    use strato::server::chunks::ChunkRoute;
    let creds = s3_compat::StaticCredentials::new().with_user(
        strato::store::FIRST_USER,
        &keys.access_key,
        &keys.secret_key,
    );
    let s3 = s3_compat::S3Service::builder(
        std::sync::Arc::new(strato::server::StoreBackend::new(cache.clone())),
        std::sync::Arc::new(creds),
        s3_compat::S3Config::default(),
    )
    .extra_route(std::sync::Arc::new(
        ChunkRoute::new(cache).with_fallback(img),
    ))
    .build();
    // The same accept loop as `strato serve`: connection bound, header
    // timeout, drain on SIGTERM.
    tokio::spawn(strato::server::serve_on(
        l,
        None,
        strato::server::Limits::default(),
        move |req| {
            let s3 = s3.clone();
            async move { s3.handle(req).await }
        },
        strato::server::shutdown_signal(),
    ));
}

/// Serves NBD on every connection `accept` yields, until the process ends,
/// within the gate's bounds. A failed accept (out of file descriptors, say)
/// is retried after a pause instead of ending the loop.
fn spawn_accept_loop<S, F, Fut>(mut accept: F, gate: std::sync::Arc<nbd::NbdGate>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = std::io::Result<S>> + Send,
{
    tokio::spawn(async move {
        loop {
            match accept().await {
                Ok(s) => gate.admit(s),
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
}

/// A socket file left by a killed export would make bind fail; anything
/// that is not a socket is someone else's file and stays.
fn remove_stale_socket(path: &Path) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                anyhow::bail!("{} is in use by a running server", path.display());
            }
            std::fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))
        }
        Ok(_) => anyhow::bail!("{} exists and is not a socket", path.display()),
        Err(_) => Ok(()),
    }
}
