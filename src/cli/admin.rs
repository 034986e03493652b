//! stats, fsck, gc, block-index.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};

use strato::config::parse_duration;

use super::Ctx;

#[derive(Args, Debug)]
pub struct GcArgs {
    /// Print the plan and change nothing
    #[arg(long)]
    dry_run: bool,
    /// Reclaim only chunks unreferenced for at least this long (default 15m, config gc.grace_secs)
    #[arg(long, value_parser = parse_duration)]
    grace: Option<Duration>,
}

fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub fn stats(ctx: &Ctx) -> Result<ExitCode> {
    let s = ctx.open_store()?.stats()?;
    if ctx.json {
        ctx.print_json(&s)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("engine          {}", s.engine);
    println!("buckets         {}", s.buckets);
    println!("objects         {}", s.objects);
    println!(
        "logical bytes   {} ({})",
        s.logical_bytes,
        human(s.logical_bytes)
    );
    println!("zero bytes      {} (not stored)", human(s.zero_bytes));
    println!(
        "stored bytes    {} ({})",
        s.stored_bytes,
        human(s.stored_bytes)
    );
    println!("dedup ratio     {:.2}", s.dedup_ratio);
    println!(
        "chunks          {} referenced, {} indexed",
        s.chunks, s.indexed_chunks
    );
    println!(
        "segments        {} ({} on disk)",
        s.segments,
        human(s.segment_bytes_on_disk)
    );
    for (profile, p) in &s.profiles {
        println!(
            "  {profile:<28} {:>6} objects  logical {:>10}  stored {:>10}  {:>8} chunks",
            p.objects,
            human(p.logical_bytes),
            human(p.stored_bytes),
            p.chunks
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn fsck(ctx: &Ctx) -> Result<ExitCode> {
    let r = ctx.open_store()?.fsck()?;
    ctx.emit(&r, || {
        for p in &r.problems {
            println!("PROBLEM: {p}");
        }
        println!(
            "checked {} segments, {} chunks ({}), {} manifests; {} unreferenced chunks ({}) awaiting gc; {} problem(s)",
            r.segments,
            r.chunks_checked,
            human(r.bytes_checked),
            r.manifests,
            r.unreferenced_chunks,
            human(r.unreferenced_bytes),
            r.problems.len()
        );
    })?;
    Ok(if r.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub fn gc(ctx: &Ctx, a: GcArgs) -> Result<ExitCode> {
    let store = ctx.open_store()?;
    let mut opts = ctx.file.gc_options();
    if let Some(g) = a.grace {
        opts.grace = g;
    }
    if store.is_shared() {
        return shared_gc(ctx, &store, &opts, a.dry_run);
    }
    store.seal_idle_segments()?;
    let plan = store.gc_plan(&opts)?;
    if a.dry_run {
        ctx.emit(&plan, || {
            println!("gc plan (dry run, nothing changed):");
            println!(
                "  expired multipart uploads to abort: {}",
                plan.expired_uploads.len()
            );
            println!(
                "  reference counts to fix:           {}",
                plan.ref_fixes.len()
            );
            for f in &plan.ref_fixes {
                println!(
                    "    chunk {} recorded {} actual {}",
                    f.chunk, f.recorded, f.actual
                );
            }
            println!(
                "  chunks to reclaim:                 {} ({})",
                plan.reclaim_chunks,
                human(plan.reclaim_bytes)
            );
            println!(
                "  unreferenced but within grace:     {}",
                plan.waiting_chunks
            );
            for s in &plan.segments {
                println!(
                    "  segment {:08x}: {} live, {} dead -> {}",
                    s.segment,
                    human(s.live_bytes),
                    human(s.dead_bytes),
                    if s.delete { "delete" } else { "compact" }
                );
            }
        })?;
        return Ok(ExitCode::SUCCESS);
    }
    let r = store.gc_execute(plan)?;
    ctx.emit(&r, || {
        println!(
            "gc: aborted {} uploads, fixed {} reference counts, reclaimed {} chunks ({}), compacted {} and deleted {} segments, freed {} on disk",
            r.aborted_uploads,
            r.fixed_refs,
            r.reclaimed_chunks,
            human(r.reclaimed_bytes),
            r.segments_compacted,
            r.segments_deleted,
            human(r.bytes_freed_on_disk)
        );
        if r.block_entries_dropped > 0 {
            println!(
                "gc: dropped {} block index entries of reclaimed chunks",
                r.block_entries_dropped
            );
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

/// GC of a shared repository (segments in an object store): one frontend
/// at a time reclaims segment objects nothing references.
fn shared_gc(
    ctx: &Ctx,
    store: &strato::store::Store,
    opts: &strato::store::GcOptions,
    dry_run: bool,
) -> Result<ExitCode> {
    if dry_run {
        anyhow::bail!("gc --dry-run is not available with the s3 segment backend yet");
    }
    let r = store.gc(opts)?;
    ctx.emit(&r, || {
        let s = r.shared.clone().unwrap_or_default();
        println!(
            "gc (shared): {} segment objects, {} referenced; deleted {} orphan objects ({}), {} waiting (younger than the grace period or still being written); removed {} stale in-flight registrations; aborted {} uploads",
            s.segment_objects,
            s.referenced_segments,
            s.orphans_deleted,
            human(s.orphan_bytes_deleted),
            s.orphans_waiting,
            s.stale_registrations_removed,
            r.aborted_uploads
        );
    })?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Subcommand, Debug)]
pub enum BlockIndexCmd {
    /// Index the 4 KiB blocks of BUCKET's objects, now and on every write
    On { bucket: String },
    /// Stop indexing new objects of BUCKET (entries already made stay valid)
    Off { bucket: String },
    /// Which buckets are indexed, and the number of entries
    Status,
}

pub fn block_index(ctx: &Ctx, cmd: BlockIndexCmd) -> Result<ExitCode> {
    let store = ctx.open_store()?;
    match cmd {
        BlockIndexCmd::On { bucket } => {
            let r = store.set_block_index(&bucket, true)?;
            ctx.emit(&r, || {
                println!(
                    "block index on for {bucket}: {} blocks indexed, {} zero blocks skipped, {} blocks straddle chunk boundaries",
                    r.indexed, r.zero, r.straddling
                );
            })?;
        }
        BlockIndexCmd::Off { bucket } => {
            store.set_block_index(&bucket, false)?;
            if !ctx.json {
                println!("block index off for {bucket}");
            }
        }
        BlockIndexCmd::Status => {
            let mut on = Vec::new();
            for (name, _) in store.list_buckets()? {
                if store.bucket_options(&name)?.block_index {
                    on.push(name);
                }
            }
            let entries = store.block_index_len()?;
            ctx.emit(
                &serde_json::json!({ "buckets": on, "entries": entries }),
                || {
                    println!(
                        "indexed buckets: {}",
                        if on.is_empty() {
                            "none".to_string()
                        } else {
                            on.join(", ")
                        }
                    );
                    println!("entries: {entries}");
                },
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
