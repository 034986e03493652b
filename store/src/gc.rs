//! Garbage collection, as plan then execute.
//!
//! A chunk is reclaimable when no manifest references it, nobody has it
//! pinned (a writer in flight depends on it), and it became unreferenced
//! before `cutoff` = min(now, oldest write in flight) - grace. Chunks with no
//! metadata at all (left by a crashed or abandoned write) count as
//! unreferenced since the store was opened. Reclaiming drops them from the
//! index; compaction then copies the live records of mostly-dead segments into
//! a new segment and deletes the old file once the copy is durable. (Readers
//! that already hold the old segment keep reading it: an unlinked file stays
//! readable through open descriptors, which is our delayed delete.)
//!
//! The reference-count audit (mark and sweep over all manifests) runs with
//! manifest commits paused, so it sees one consistent state.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use super::error::{IoContext, Result};
use super::id::ChunkId;
use super::index::Loc;
use super::meta::Table;
use super::model::{self, ChunkState};
use super::segment::{self, SegmentAppender, RECORD_HEADER_LEN};
use super::{now_ms, Store};

#[derive(Debug, Clone)]
pub struct GcOptions {
    pub grace: Duration,
    /// Compact a sealed segment once this fraction of its bytes is dead.
    pub dead_ratio: f64,
    /// Abort multipart uploads idle for longer than this.
    pub upload_expiry: Duration,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            grace: super::default_grace(),
            dead_ratio: 0.25,
            upload_expiry: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RefFix {
    pub chunk: String,
    pub recorded: u64,
    pub actual: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SegmentPlan {
    pub segment: u32,
    pub live_bytes: u64,
    pub dead_bytes: u64,
    /// true: nothing live, the file is simply deleted
    pub delete: bool,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct GcPlan {
    pub cutoff_ms: u64,
    pub expired_uploads: Vec<String>,
    pub ref_fixes: Vec<RefFix>,
    pub reclaim_chunks: usize,
    pub reclaim_bytes: u64,
    /// unreferenced but still inside the grace period or pinned by a writer
    pub waiting_chunks: usize,
    pub segments: Vec<SegmentPlan>,
    #[serde(skip)]
    reclaim: Vec<(ChunkId, Loc)>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct GcReport {
    pub plan: GcPlan,
    pub aborted_uploads: usize,
    pub fixed_refs: usize,
    pub reclaimed_chunks: usize,
    pub reclaimed_bytes: u64,
    pub segments_compacted: usize,
    pub segments_deleted: usize,
    pub bytes_freed_on_disk: u64,
    /// Block index entries dropped because their chunk was reclaimed.
    pub block_entries_dropped: u64,
    /// Shared mode: what happened to segment objects (shared_gc.rs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared: Option<super::shared_gc::SharedGcReport>,
}

impl Store {
    /// Work out what GC would do. Changes nothing.
    pub fn gc_plan(&self, opts: &GcOptions) -> Result<GcPlan> {
        self.refuse_in_shared_mode("gc")?;
        let now = now_ms();
        let mut plan = GcPlan::default();
        let expiry_ms = opts.upload_expiry.as_millis() as u64;
        super::meta::for_each(&*self.inner().meta, Table::Uploads, b"", |k, v| {
            let u: model::UploadRecord = model::decode(v)?;
            if now.saturating_sub(u.initiated_ms) > expiry_ms {
                plan.expired_uploads
                    .push(String::from_utf8_lossy(k).into_owned());
            }
            Ok(())
        })?;
        let oldest = self.oldest_inflight_ms().unwrap_or(now).min(now);
        plan.cutoff_ms = oldest.saturating_sub(opts.grace.as_millis() as u64);

        let _paused = self.inner().commit_lock.write();
        let audit = self.audit_refs()?;
        plan.ref_fixes = audit
            .mismatches
            .iter()
            .map(|m| RefFix {
                chunk: m.id.to_hex(),
                recorded: m.recorded_refs(),
                actual: m.actual,
            })
            .collect();
        let (actual, recorded) = (&audit.actual, &audit.recorded);
        let snapshot = self.inner().index.snapshot();
        let mut live_per_segment: HashMap<u32, u64> = HashMap::new();
        for (id, loc) in &snapshot {
            let referenced = actual.get(id).copied().unwrap_or(0) > 0;
            let since = match recorded.get(id) {
                Some(ChunkState { zero_since_ms, .. }) if *zero_since_ms > 0 => *zero_since_ms,
                _ => self.inner().opened_ms,
            };
            let record = RECORD_HEADER_LEN + loc.len as u64;
            if referenced {
                *live_per_segment.entry(loc.segment).or_insert(0) += record;
            } else if since <= plan.cutoff_ms && !self.inner().index.is_pinned(id) {
                plan.reclaim.push((*id, *loc));
                plan.reclaim_chunks += 1;
                plan.reclaim_bytes += loc.len as u64;
            } else {
                plan.waiting_chunks += 1;
                *live_per_segment.entry(loc.segment).or_insert(0) += record;
            }
        }
        drop(_paused);

        let segments: BTreeMap<u32, _> = self
            .inner()
            .segments
            .read()
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        for (id, seg) in segments {
            if !seg.is_sealed() {
                continue;
            }
            let total = seg.record_bytes();
            let live = live_per_segment.get(&id).copied().unwrap_or(0).min(total);
            let dead = total - live;
            if live == 0 || (dead > 0 && dead as f64 >= opts.dead_ratio * total as f64) {
                plan.segments.push(SegmentPlan {
                    segment: id,
                    live_bytes: live,
                    dead_bytes: dead,
                    delete: live == 0,
                });
            }
        }
        Ok(plan)
    }

    /// Carry out a plan. Every step re-checks its premise, so a plan that has
    /// gone stale (writes continued meanwhile) never removes a live chunk.
    pub fn gc_execute(&self, plan: GcPlan) -> Result<GcReport> {
        self.refuse_in_shared_mode("gc")?;
        let mut report = GcReport::default();
        for upload in &plan.expired_uploads {
            if self.abort_upload(upload).is_ok() {
                report.aborted_uploads += 1;
            }
        }
        let now = now_ms();
        {
            let _paused = self.inner().commit_lock.write();
            let audit = self.audit_refs()?;
            let actual = &audit.actual;
            let mut fixes: Vec<(ChunkId, ChunkState)> = Vec::new();
            for m in &audit.mismatches {
                let fixed = match m.recorded {
                    Some(state) => Some(ChunkState {
                        refs: m.actual,
                        zero_since_ms: if m.actual == 0 { now } else { 0 },
                        ..state
                    }),
                    None => self.inner().index.get(&m.id).map(|loc| ChunkState {
                        refs: m.actual,
                        len: loc.len,
                        zero_since_ms: 0,
                    }),
                };
                fixes.extend(fixed.map(|f| (m.id, f)));
            }
            let mut removed: Vec<ChunkId> = Vec::new();
            for (id, loc) in &plan.reclaim {
                let still_unreferenced = actual.get(id).copied().unwrap_or(0) == 0;
                if still_unreferenced && self.inner().index.remove_unpinned(id, *loc) {
                    removed.push(*id);
                    report.reclaimed_chunks += 1;
                    report.reclaimed_bytes += loc.len as u64;
                }
            }
            report.fixed_refs = fixes.len();
            self.inner().meta.write(&mut |tx| {
                for (id, state) in &fixes {
                    tx.put(Table::Chunks, &id.0, &model::encode(state)?)?;
                }
                for id in &removed {
                    tx.delete(Table::Chunks, &id.0)?;
                }
                Ok(())
            })?;
        }
        if report.reclaimed_chunks > 0 {
            report.block_entries_dropped = self.sweep_block_index()?;
        }
        for sp in &plan.segments {
            let freed = self.compact_segment(sp.segment)?;
            if let Some((deleted, bytes)) = freed {
                if deleted {
                    report.segments_deleted += 1;
                } else {
                    report.segments_compacted += 1;
                }
                report.bytes_freed_on_disk += bytes;
            }
        }
        report.plan = plan;
        Ok(report)
    }

    pub fn gc(&self, opts: &GcOptions) -> Result<GcReport> {
        let report = if self.shared().is_some() {
            self.shared_gc(opts)?
        } else {
            self.seal_idle_segments()?;
            let plan = self.gc_plan(opts)?;
            self.gc_execute(plan)?
        };
        // For the web console's repository page; a failure to note it does
        // not undo the collection, so it is only logged.
        if let Err(e) = self.record_gc(&super::history::GcRecord::of(&report)) {
            tracing::warn!("recording the GC run failed: {e}");
        }
        Ok(report)
    }

    /// Copy the live records of a sealed segment into a new one and delete
    /// the old file. Returns (deleted-without-copy, bytes freed).
    fn compact_segment(&self, seg_id: u32) -> Result<Option<(bool, u64)>> {
        let Some(seg) = self.inner().segments.read().get(&seg_id).cloned() else {
            return Ok(None);
        };
        if !seg.is_sealed() {
            return Ok(None);
        }
        let old_size = std::fs::metadata(&seg.path).map(|m| m.len()).unwrap_or(0);
        let mut copier: Option<SegmentAppender> = None;
        let mut moved: Vec<(ChunkId, Loc, super::segment::RecordRef)> = Vec::new();
        for r in seg.records()? {
            let here = Loc {
                segment: seg_id,
                len: r.len,
                offset: r.offset,
            };
            if self.inner().index.get(&r.id) != Some(here) {
                continue; // dead, or a duplicate of a copy kept elsewhere
            }
            let data = seg.read_record(r.offset, &r.id, r.len)?;
            if copier.is_none() {
                let id = self
                    .inner()
                    .next_segment
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let app = SegmentAppender::create(&self.inner().seg_dir, id)?;
                self.inner()
                    .segments
                    .write()
                    .insert(id, app.segment().clone());
                copier = Some(app);
            }
            if let Some(app) = copier.as_mut() {
                let rec = app.append(&r.id, &data);
                moved.push((r.id, here, rec));
                if app.buffered() >= segment::APPEND_BUFFER {
                    app.flush()?;
                }
            }
        }
        let deleted = copier.is_none();
        if let Some(app) = copier {
            let new_id = app.segment().id;
            // Durable before the index (and later the old file) let go of the original.
            let new_seg = app.seal()?;
            for (id, from, rec) in &moved {
                let to = Loc {
                    segment: new_id,
                    len: rec.len,
                    offset: rec.offset,
                };
                self.inner().index.relocate(id, *from, to);
            }
            let _ = new_seg;
        }
        // A chunk may have been revived (or re-pointed) into this segment while
        // we copied: keep the file if anything in the index still points here.
        let still_used = self
            .inner()
            .index
            .snapshot()
            .iter()
            .any(|(_, l)| l.segment == seg_id);
        if still_used {
            return Ok(None);
        }
        self.inner().segments.write().remove(&seg_id);
        std::fs::remove_file(&seg.path).at(&seg.path)?;
        segment::sync_dir(&self.inner().seg_dir)?;
        Ok(Some((deleted, old_size)))
    }
}
