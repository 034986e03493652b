//! The QMP side of a disk + memory migration, as libvirt drives it for
//! non-shared storage, with `migrate disk-send|disk-recv` in the middle:
//!
//! 1. destination: `nbd-server-start` + writable `block-export-add` of the
//!    new disk ([`export_destination`]); the caller starts disk-recv on it
//!    and disk-send on the source;
//! 2. source: `blockdev-add` an nbd node on disk-send's port,
//!    `blockdev-mirror` the guest's drive into it ([`start_mirror`]), wait
//!    for the job to be READY ([`wait_ready`]);
//! 3. memory migration (through the memory agents or any URI), then
//!    `block-job-cancel` of the READY mirror, which completes it with the
//!    target consistent, `blockdev-del` of the nbd node (disk-send then ends
//!    its stream), destination `block-export-del` + `nbd-server-stop`,
//!    `cont` ([`finish`]).
//!
//! The destination QEMU must be started with `-S` (and `-incoming`): with
//! autostart it would resume the guest as soon as the memory arrived, before
//! the mirror wrote its last dirty blocks. One disk per migration here; more
//! disks need one NBD export, disk-send/disk-recv pair and job each.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::qmp::{MigrationInfo, QmpClient, QmpError};

#[derive(Debug, thiserror::Error)]
pub enum DiskMirrorError {
    #[error(transparent)]
    Qmp(#[from] QmpError),
    #[error("mirror job {job} failed: {why}")]
    JobFailed { job: String, why: String },
    #[error("timed out waiting for {0}")]
    Timeout(String),
}

pub type Result<T, E = DiskMirrorError> = std::result::Result<T, E>;

/// What `blockdev-mirror` copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MirrorSync {
    /// The whole disk (the destination has nothing).
    Full,
    /// Only the top overlay (the destination's disk is an overlay over the
    /// same backing image).
    Top,
}

/// The source side: which drive, and where disk-send listens.
#[derive(Debug, Clone)]
pub struct MirrorPlan {
    /// Drive (device or node name) whose writes are mirrored, e.g. "virtio0".
    pub device: String,
    pub nbd_host: String,
    pub nbd_port: u16,
    /// disk-send's export name.
    pub export: String,
    pub sync: MirrorSync,
    /// Bytes per second limit of the bulk copy (None: unlimited).
    pub speed: Option<u64>,
    /// Names of the job and of the nbd node on the source.
    pub job: String,
    pub node: String,
}

impl MirrorPlan {
    pub fn new(device: &str, nbd_host: &str, nbd_port: u16, export: &str) -> MirrorPlan {
        MirrorPlan {
            device: device.to_string(),
            nbd_host: nbd_host.to_string(),
            nbd_port,
            export: export.to_string(),
            sync: MirrorSync::Full,
            speed: None,
            job: "strato-mirror".into(),
            node: "strato-mirror-target".into(),
        }
    }
}

/// The destination side: which drive to export, where, under what name.
#[derive(Debug, Clone)]
pub struct DestExport {
    /// Drive (device or node name) receiving the disk, e.g. "virtio0".
    pub device: String,
    pub host: String,
    pub port: u16,
    pub export: String,
    pub id: String,
}

/// The node name behind a drive (`query-block`), or `device` itself when
/// it already is a node name.
pub async fn node_of(qmp: &mut QmpClient, device: &str) -> Result<String> {
    let blocks = qmp.execute("query-block", None).await?;
    let found = blocks.as_array().and_then(|a| {
        a.iter().find_map(|b| {
            (b["device"] == device || b["qdev"] == device)
                .then(|| b["inserted"]["node-name"].as_str().map(str::to_string))
                .flatten()
        })
    });
    Ok(found.unwrap_or_else(|| device.to_string()))
}

/// Destination: serve the new disk writable over NBD.
pub async fn export_destination(dst: &mut QmpClient, e: &DestExport) -> Result<()> {
    let node = node_of(dst, &e.device).await?;
    dst.execute(
        "nbd-server-start",
        Some(
            json!({"addr": {"type": "inet", "data": {"host": e.host, "port": e.port.to_string()}}}),
        ),
    )
    .await?;
    dst.execute(
        "block-export-add",
        Some(json!({
            "type": "nbd", "id": e.id, "node-name": node,
            "name": e.export, "writable": true,
        })),
    )
    .await?;
    Ok(())
}

/// Source: attach disk-send's export and start mirroring into it.
pub async fn start_mirror(src: &mut QmpClient, p: &MirrorPlan) -> Result<()> {
    src.execute(
        "blockdev-add",
        Some(json!({
            "driver": "nbd", "node-name": p.node,
            "server": {"type": "inet", "host": p.nbd_host, "port": p.nbd_port.to_string()},
            "export": p.export,
        })),
    )
    .await?;
    let mut args = json!({
        "job-id": p.job, "device": p.device, "target": p.node,
        "sync": match p.sync { MirrorSync::Full => "full", MirrorSync::Top => "top" },
    });
    if let Some(s) = p.speed {
        args["speed"] = json!(s);
    }
    if let Err(e) = src.execute("blockdev-mirror", Some(args)).await {
        let _ = src
            .execute("blockdev-del", Some(json!({"node-name": p.node})))
            .await;
        return Err(e.into());
    }
    Ok(())
}

/// The job's entry in `query-block-jobs`, if it still runs.
async fn job_info(src: &mut QmpClient, job: &str) -> Result<Option<Value>> {
    let jobs = src.execute("query-block-jobs", None).await?;
    Ok(jobs
        .as_array()
        .and_then(|a| a.iter().find(|j| j["device"] == job).cloned()))
}

/// Why a job that vanished ended (its BLOCK_JOB_COMPLETED / _ERROR events).
fn job_end_error(src: &mut QmpClient, job: &str) -> Option<String> {
    src.take_events().into_iter().find_map(|e| {
        let d = &e["data"];
        if d["device"] != job {
            return None;
        }
        match e["event"].as_str() {
            Some("BLOCK_JOB_COMPLETED") => d["error"].as_str().map(str::to_string),
            Some("BLOCK_JOB_ERROR") => Some(format!(
                "I/O error ({} operation)",
                d["operation"].as_str().unwrap_or("?")
            )),
            _ => None,
        }
    })
}

/// Wait (bounded) for the mirror to be READY: the bulk copy is done and
/// new writes are mirrored as they come. A job that ends instead failed.
pub async fn wait_ready(src: &mut QmpClient, job: &str, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        match job_info(src, job).await? {
            Some(j) if j["ready"] == true => return Ok(()),
            Some(j) if j["status"] == "concluded" || j["status"] == "aborting" => {
                return Err(DiskMirrorError::JobFailed {
                    job: job.to_string(),
                    why: j["error"].as_str().unwrap_or("aborted").to_string(),
                })
            }
            Some(_) => {}
            None => {
                let why = job_end_error(src, job).unwrap_or_else(|| "job vanished".into());
                return Err(DiskMirrorError::JobFailed {
                    job: job.to_string(),
                    why,
                });
            }
        }
        if Instant::now() >= deadline {
            return Err(DiskMirrorError::Timeout(format!(
                "mirror job {job} to be ready"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Wait (bounded) for the job to end; an error it ended with is returned.
pub async fn wait_job_gone(src: &mut QmpClient, job: &str, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    while job_info(src, job).await?.is_some() {
        if Instant::now() >= deadline {
            return Err(DiskMirrorError::Timeout(format!("mirror job {job} to end")));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    match job_end_error(src, job) {
        Some(why) => Err(DiskMirrorError::JobFailed {
            job: job.to_string(),
            why,
        }),
        None => Ok(()),
    }
}

/// With the mirror READY: migrate memory to `memory_uri`, complete the
/// mirror (cancel in READY state: target consistent, no pivot), detach
/// disk-send, stop the destination's export and resume the guest there.
pub async fn finish(
    src: &mut QmpClient,
    dst: &mut QmpClient,
    p: &MirrorPlan,
    e: &DestExport,
    memory_uri: &str,
    within: Duration,
) -> Result<MigrationInfo> {
    src.migrate(memory_uri).await?;
    let info = src
        .wait_migration(Duration::from_millis(100), within)
        .await?;
    src.execute("block-job-cancel", Some(json!({"device": p.job})))
        .await?;
    wait_job_gone(src, &p.job, within).await?;
    src.execute("blockdev-del", Some(json!({"node-name": p.node})))
        .await?;

    // The destination finished loading once it leaves "inmigrate".
    let deadline = Instant::now() + within;
    loop {
        let s = dst.status().await?;
        if s != "inmigrate" {
            break;
        }
        if Instant::now() >= deadline {
            return Err(DiskMirrorError::Timeout(
                "the destination to load the migration".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // disk-recv disconnects once it wrote and flushed everything; a safe
    // export removal fails while it is still connected.
    let deadline = Instant::now() + within;
    loop {
        match dst
            .execute("block-export-del", Some(json!({"id": e.id})))
            .await
        {
            Ok(_) => break,
            Err(err) if Instant::now() < deadline => {
                tracing::debug!("block-export-del: {err}; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => return Err(err.into()),
        }
    }
    // Removal completes asynchronously; the server stops regardless.
    dst.execute("nbd-server-stop", None).await?;
    if dst.status().await? != "running" {
        dst.execute("cont", None).await?;
    }
    Ok(info)
}
