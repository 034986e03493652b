//! Suspend to a file and resume from one (Jump-Start §3.1): QEMU's
//! `mapped-ram` migration format puts every guest page at a fixed,
//! page-aligned offset of the file and leaves zero pages as holes, so the
//! file chunked at 4 KiB deduplicates page by page in the store, and N
//! clones of one saved guest share all of it.
//!
//! Both directions talk to QEMU over QMP; storing and fetching the file is
//! the caller's (the CLI puts it into the store and restores with a pull).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::qmp::{MigrationInfo, QmpClient, QmpError};

/// The capability that makes QEMU write (and read) the fixed-offset format.
const MAPPED_RAM: &str = "mapped-ram";
const POLL: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum VmSaveError {
    #[error(transparent)]
    Qmp(#[from] QmpError),
    #[error("{0}: QEMU needs an absolute path")]
    NotAbsolute(PathBuf),
    #[error("{0}: not valid UTF-8, which QMP cannot carry")]
    NotUtf8(PathBuf),
    #[error(
        "QEMU is {status:?}, not waiting for an incoming migration: start it with -incoming defer"
    )]
    NotIncoming { status: String },
    #[error("QEMU is {status:?}: only a running or paused guest can be saved")]
    NotSavable { status: String },
    #[error("QEMU went away during the load ({0}); it exits when the saved guest does not match its configuration (memory size, devices and machine type must be the saved guest's): see its log")]
    QemuExitedDuringLoad(QmpError),
}

/// What a save or restore reports: QEMU's own figures where it has them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VmFileReport {
    /// Guest state before the save ("running", "paused"), or after the
    /// restore.
    pub vm_status: String,
    /// The save as QEMU timed it, or the load as timed here (the incoming
    /// side of QEMU keeps no figures).
    pub total_time_ms: Option<u64>,
    /// Time the guest was stopped by the migration itself (a save of a
    /// running guest stops it first, so this is QEMU's view only).
    pub downtime_ms: Option<u64>,
    /// RAM bytes QEMU wrote (zero pages excluded); saves only.
    pub ram_bytes: Option<u64>,
    pub ram_total: Option<u64>,
}

fn file_channel(file: &Path) -> Result<Value, VmSaveError> {
    if !file.is_absolute() {
        return Err(VmSaveError::NotAbsolute(file.to_path_buf()));
    }
    let name = file
        .to_str()
        .ok_or_else(|| VmSaveError::NotUtf8(file.to_path_buf()))?;
    // A channel, not a "file:" URI: a URI would misread commas in the path.
    Ok(json!([{
        "channel-type": "main",
        "addr": { "transport": "file", "filename": name, "offset": 0 }
    }]))
}

/// Save the guest behind `qmp` to `file` (absolute; QEMU creates it). A
/// running guest is stopped first; with `resume` it continues afterwards
/// (a snapshot), otherwise it stays stopped, as a suspend leaves it.
pub async fn save_to_file(
    qmp: &mut QmpClient,
    file: &Path,
    resume: bool,
    within: Duration,
) -> Result<VmFileReport, VmSaveError> {
    let channels = file_channel(file)?;
    let status = qmp.status().await?;
    if status != "running" && status != "paused" {
        return Err(VmSaveError::NotSavable { status });
    }
    if status == "running" {
        qmp.execute("stop", None).await?;
    }
    let saved = save_stopped(qmp, channels, within).await;
    // mapped-ram only works with file transports: leave the capability off
    // so a later live migration of this guest is unaffected.
    let reset = qmp.set_capabilities(&[(MAPPED_RAM, false)]).await;
    if resume && status == "running" {
        qmp.execute("cont", None).await?;
    }
    let info = saved?;
    reset?;
    let ram = info.ram.clone().unwrap_or_default();
    Ok(VmFileReport {
        vm_status: status,
        total_time_ms: info.total_time,
        downtime_ms: info.downtime,
        ram_bytes: Some(ram.normal_bytes),
        ram_total: Some(ram.total),
    })
}

async fn save_stopped(
    qmp: &mut QmpClient,
    channels: Value,
    within: Duration,
) -> Result<MigrationInfo, VmSaveError> {
    qmp.set_capabilities(&[(MAPPED_RAM, true)]).await?;
    qmp.execute("migrate", Some(json!({ "channels": channels })))
        .await?;
    Ok(qmp.wait_migration(POLL, within).await?)
}

/// Load `file` into a QEMU started with `-incoming defer` (and the same
/// machine configuration as the saved guest). A saved guest was stopped for
/// the save and QEMU carries that state over, so it stays paused unless
/// `resume` (then it runs when this returns).
pub async fn restore_from_file(
    qmp: &mut QmpClient,
    file: &Path,
    resume: bool,
    within: Duration,
) -> Result<VmFileReport, VmSaveError> {
    let channels = file_channel(file)?;
    let status = qmp.status().await?;
    if status != "inmigrate" {
        return Err(VmSaveError::NotIncoming { status });
    }
    let started = Instant::now();
    qmp.set_capabilities(&[(MAPPED_RAM, true)]).await?;
    let load = async {
        qmp.execute("migrate-incoming", Some(json!({ "channels": channels })))
            .await?;
        qmp.wait_migration(POLL, within).await
    };
    match load.await {
        Ok(_) => {}
        Err(e) if e.is_disconnect() => return Err(VmSaveError::QemuExitedDuringLoad(e)),
        Err(e) => return Err(e.into()),
    }
    let loaded_ms = started.elapsed().as_millis() as u64;
    // The run state is switched right after the load completes.
    let mut now = qmp.status().await?;
    for _ in 0..50 {
        if now != "inmigrate" {
            break;
        }
        tokio::time::sleep(POLL).await;
        now = qmp.status().await?;
    }
    if resume && now == "paused" {
        qmp.execute("cont", None).await?;
        now = qmp.status().await?;
    }
    Ok(VmFileReport {
        vm_status: now,
        total_time_ms: Some(loaded_ms),
        downtime_ms: None,
        ram_bytes: None,
        ram_total: None,
    })
}
