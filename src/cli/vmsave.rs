//! `strato vm save` (a guest's RAM into the store, deduplicated page by
//! page) and `strato vm restore` (pull it onto a host, sparse, and load it
//! into a QEMU waiting with `-incoming defer`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;

use strato::qemu::qmp::QmpClient;
use strato::qemu::vmsave::{self, VmFileReport};
use strato::store::ProfileChoice;

use super::common::{open_cache, pull_image, runtime, s3_url, Credentials, RemoteCache};
use super::{progress_bar, split_path, Ctx};

const QMP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Args, Debug)]
pub struct SaveArgs {
    /// QMP socket of the guest's QEMU (-qmp unix:PATH,server=on,wait=off)
    #[arg(long)]
    pub qmp: PathBuf,
    /// Destination BUCKET/KEY in the local data directory
    pub dest: String,
    /// Chunking of the saved file; the default makes every page a chunk
    #[arg(long, default_value = "fixed:4096")]
    pub chunking: ProfileChoice,
    /// Let the guest continue after the save (a snapshot); by default it
    /// stays stopped, as a suspend leaves it
    #[arg(long)]
    pub resume: bool,
    /// Directory for QEMU's file while it is stored (default: DATA_DIR/tmp)
    #[arg(long)]
    pub tmp_dir: Option<PathBuf>,
    /// Give up on QEMU after this many seconds
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
}

#[derive(serde::Serialize)]
struct SaveReport {
    bucket: String,
    key: String,
    size: u64,
    etag: String,
    profile: String,
    chunks: usize,
    /// Bytes this save added to the store (after dedup).
    new_bytes: u64,
    qemu: VmFileReport,
    save_ms: u64,
    store_ms: u64,
}

/// Removes QEMU's temporary file however the save ends.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub fn save(ctx: &Ctx, a: SaveArgs) -> Result<ExitCode> {
    let (bucket, key) = split_path(&a.dest)?;
    // Open (and so validate) the store before touching the guest.
    let store = ctx.open_store()?;
    store
        .bucket(bucket)
        .with_context(|| format!("bucket {bucket:?} (create it with `strato mb {bucket}`)"))?;
    let tmp_dir = a
        .tmp_dir
        .clone()
        .unwrap_or_else(|| ctx.data_dir.join("tmp"));
    std::fs::create_dir_all(&tmp_dir).with_context(|| format!("creating {}", tmp_dir.display()))?;
    let tmp_dir = std::path::absolute(&tmp_dir)
        .with_context(|| format!("resolving {}", tmp_dir.display()))?;
    let file = TempFile(tmp_dir.join(format!("vm-save-{}.ram", std::process::id())));
    let within = Duration::from_secs(a.timeout);

    let rt = runtime()?;
    let t = Instant::now();
    let qemu = rt
        .block_on(async {
            let mut qmp = QmpClient::connect(&a.qmp, QMP_TIMEOUT).await?;
            vmsave::save_to_file(&mut qmp, &file.0, a.resume, within).await
        })
        .with_context(|| format!("saving the guest at {}", a.qmp.display()))?;
    let save_ms = t.elapsed().as_millis() as u64;

    let t = Instant::now();
    let f = std::fs::File::open(&file.0)
        .with_context(|| format!("reading QEMU's file {}", file.0.display()))?;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let pb = progress_bar(ctx, len, &format!("store {bucket}/{key}"));
    let c = store
        .put_reader(bucket, key, f, a.chunking, Vec::new(), |n| pb.inc(n))
        .with_context(|| format!("storing {bucket}/{key}"))?;
    pb.finish_and_clear();
    let report = SaveReport {
        bucket: bucket.to_string(),
        key: key.to_string(),
        size: c.size,
        etag: c.etag,
        profile: c.profile,
        chunks: c.chunks,
        new_bytes: c.new_bytes,
        qemu,
        save_ms,
        store_ms: t.elapsed().as_millis() as u64,
    };
    ctx.emit(&report, || {
        println!(
            "saved the guest ({}, {} RAM bytes) as {bucket}/{key}: {} bytes, {} chunks ({}), {} new bytes stored; QEMU {} ms, store {} ms",
            report.qemu.vm_status,
            report.qemu.ram_bytes.unwrap_or(0),
            report.size,
            report.chunks,
            report.profile,
            report.new_bytes,
            report.save_ms,
            report.store_ms
        );
        if !a.resume {
            println!("the guest stays stopped; restore it with `strato vm restore`");
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// s3://BUCKET/KEY of a saved guest
    pub image: String,
    #[command(flatten)]
    pub from: RemoteCache,
    /// Where the guest's memory file goes (sparse; must not exist)
    #[arg(long)]
    pub out: PathBuf,
    /// QMP socket of a QEMU started with `-incoming defer` and the saved
    /// guest's configuration: the guest is loaded into it and runs
    #[arg(long)]
    pub qmp: Option<PathBuf>,
    /// Leave the loaded guest paused (default: it runs)
    #[arg(long)]
    pub paused: bool,
    /// Chunks fetched in parallel
    #[arg(long, default_value_t = 8)]
    pub parallel: usize,
    /// Give up on QEMU after this many seconds
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
}

#[derive(serde::Serialize)]
struct RestoreReport {
    pull: strato::distribute::PullReport,
    out: PathBuf,
    qemu: Option<VmFileReport>,
}

pub fn restore(ctx: &Ctx, a: RestoreArgs) -> Result<ExitCode> {
    let (bucket, key) = s3_url(&a.image)?;
    if a.out.exists() {
        anyhow::bail!("{} exists; restore writes a new file", a.out.display());
    }
    let out = absolute(&a.out)?;
    let (client, cache) = a.from.open()?;
    let pull = pull_image(&client, &cache, (&bucket, &key), Some(&out), a.parallel)?;
    let rt = runtime()?;
    let qemu = match &a.qmp {
        Some(sock) => Some(load_into_qemu(&rt, sock, &out, !a.paused, a.timeout)?),
        None => None,
    };
    let report = RestoreReport { pull, out, qemu };
    if ctx.json {
        ctx.print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "pulled s3://{bucket}/{key}: {} bytes, fetched {} bytes in {} of {} chunks ({} already cached) in {} ms into {}",
        report.pull.size,
        report.pull.fetched_bytes,
        report.pull.fetched_chunks,
        report.pull.unique_chunks,
        report.pull.cached_chunks,
        report.pull.elapsed_ms,
        report.out.display()
    );
    match &report.qemu {
        Some(q) => println!(
            "restored the guest: {} (loaded in {} ms)",
            q.vm_status,
            q.total_time_ms.unwrap_or(0)
        ),
        None => println!(
            "load it into a QEMU started with the saved guest's configuration and -incoming defer: strato vm load --qmp SOCK {}",
            report.out.display()
        ),
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct LoadArgs {
    /// QMP socket of a QEMU started with `-incoming defer` and the saved
    /// guest's configuration
    #[arg(long)]
    pub qmp: PathBuf,
    /// A memory file made by `strato vm restore` (or a `strato mount` of a
    /// saved guest); with --lazy, the s3://BUCKET/KEY of a saved guest
    pub file: PathBuf,
    /// Fetch the saved guest on demand: QEMU loads it from a file view
    /// (FUSE) of its pseudo image instead of a pulled copy
    #[arg(long, requires = "cache")]
    pub lazy: bool,
    #[command(flatten)]
    pub lazy_from: LazyFrom,
    /// Leave the loaded guest paused (default: it runs)
    #[arg(long)]
    pub paused: bool,
    /// Give up on QEMU after this many seconds
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
}

/// Where `vm load --lazy` fetches from (the flags of `strato mount`).
#[derive(Args, Debug)]
pub struct LazyFrom {
    /// With --lazy: the repository's endpoint URL
    #[arg(long, env = "STRATO_ENDPOINT")]
    pub endpoint: Option<String>,
    #[command(flatten)]
    pub creds: Credentials,
    /// With --lazy: the node-local chunk cache
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// With --lazy: where the file view is mounted while QEMU loads
    /// (default: a new file in the system's temporary directory)
    #[arg(long)]
    pub view: Option<PathBuf>,
    /// With --lazy: also fetch the save in file order, this many chunks at
    /// once, ahead of QEMU's reads (QEMU's load reads every non-zero page,
    /// so this only changes when they arrive; 0: only what QEMU asks for)
    #[arg(long, default_value_t = 0)]
    pub prefetch: usize,
}

/// What a lazy load reports: how much was fetched by the time the guest
/// ran, against the size of the saved guest.
#[derive(serde::Serialize)]
struct LazyLoadReport {
    qemu: VmFileReport,
    /// The saved guest's object size (zero pages included).
    size: u64,
    /// Bytes fetched from upstream before the guest ran.
    fetched_bytes_before_running: u64,
    /// Bytes QEMU read from the file view before the guest ran.
    read_bytes_before_running: u64,
    /// Milliseconds from the start of the command until the guest ran.
    time_to_running_ms: u64,
    /// The view's statistics at unmount (QEMU closes the file once loaded).
    stats: strato::image::pseudo::ExportStats,
}

pub fn load(ctx: &Ctx, a: LoadArgs) -> Result<ExitCode> {
    if a.lazy {
        return lazy_load(ctx, a);
    }
    if !a.file.is_file() {
        anyhow::bail!("{} is not a file", a.file.display());
    }
    let file = absolute(&a.file)?;
    let report = load_into_qemu(&runtime()?, &a.qmp, &file, !a.paused, a.timeout)?;
    ctx.emit(&report, || {
        println!(
            "restored the guest: {} (loaded in {} ms)",
            report.vm_status,
            report.total_time_ms.unwrap_or(0)
        );
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `vm load --lazy`: mount the saved guest's pseudo image as a file, point
/// QEMU's mapped-ram load at it, report what was fetched by the time the
/// guest runs, unmount.
fn lazy_load(ctx: &Ctx, a: LoadArgs) -> Result<ExitCode> {
    use strato::image::pseudo::PseudoImage;
    let t0 = Instant::now();
    let url = a
        .file
        .to_str()
        .context("with --lazy, give the saved guest as s3://BUCKET/KEY")?;
    let (bucket, key) = s3_url(url)?;
    let endpoint = a
        .lazy_from
        .endpoint
        .as_deref()
        .context("--lazy needs --endpoint (or STRATO_ENDPOINT)")?;
    let cache_dir = a
        .lazy_from
        .cache
        .as_deref()
        .context("--lazy needs --cache")?;
    let client = a.lazy_from.creds.client(endpoint)?;
    let cache = open_cache(cache_dir)?;
    let view_path = match &a.lazy_from.view {
        Some(p) => p.clone(),
        None => std::env::temp_dir().join(format!("strato-lazy-{}.ram", std::process::id())),
    };
    let rt = runtime()?;
    let report = rt.block_on(async {
        let point = super::image::ViewFile::prepare(&view_path)?;
        let img = PseudoImage::open(&key, client, cache, &bucket, &key)
            .await
            .with_context(|| format!("opening s3://{bucket}/{key}"))?;
        let view = super::image::mount_view(&img, &point, false)?;
        if a.lazy_from.prefetch > 0 {
            tokio::spawn(img.clone().prefetch(a.lazy_from.prefetch));
        }
        let loaded = async {
            let mut qmp = QmpClient::connect(&a.qmp, QMP_TIMEOUT).await?;
            vmsave::restore_from_file(
                &mut qmp,
                view.path(),
                !a.paused,
                Duration::from_secs(a.timeout),
            )
            .await
        }
        .await
        .with_context(|| {
            format!(
                "loading s3://{bucket}/{key} into the QEMU at {}",
                a.qmp.display()
            )
        });
        let at_running = img.stats();
        let time_to_running_ms = t0.elapsed().as_millis() as u64;
        tokio::task::spawn_blocking(move || view.unmount())
            .await
            .context("unmount task")??;
        drop(point);
        if let Err(e) = img.close() {
            tracing::warn!("closing the cache: {e}");
        }
        Ok::<_, anyhow::Error>(LazyLoadReport {
            qemu: loaded?,
            size: img.size(),
            fetched_bytes_before_running: at_running.fetched_bytes,
            read_bytes_before_running: at_running.read_bytes,
            time_to_running_ms,
            stats: img.stats(),
        })
    })?;
    ctx.emit(&report, || {
        println!(
            "restored the guest lazily: {} after {} ms; fetched {} of {} bytes before it ran (QEMU read {})",
            report.qemu.vm_status,
            report.time_to_running_ms,
            report.fetched_bytes_before_running,
            report.size,
            report.read_bytes_before_running
        );
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The absolute form of a path (QEMU resolves relative paths against its
/// own working directory, not ours).
fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("resolving {}", p.display()))
}

/// Loads the saved guest in `file` into the QEMU (started with `-incoming
/// defer`) behind the QMP socket `sock`.
fn load_into_qemu(
    rt: &tokio::runtime::Runtime,
    sock: &Path,
    file: &Path,
    resume: bool,
    timeout_secs: u64,
) -> Result<vmsave::VmFileReport> {
    rt.block_on(async {
        let mut qmp = QmpClient::connect(sock, QMP_TIMEOUT).await?;
        vmsave::restore_from_file(&mut qmp, file, resume, Duration::from_secs(timeout_secs)).await
    })
    .with_context(|| {
        format!(
            "loading {} into the QEMU at {}",
            file.display(),
            sock.display()
        )
    })
}
