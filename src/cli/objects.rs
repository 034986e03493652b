//! Buckets and objects on the local data directory: mb, rb, put, get, ls, rm.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use strato::store::{chunker::is_zero, ProfileChoice};

use super::{local_owner, progress_bar, split_path, Ctx};

#[derive(Args, Debug)]
pub struct PutArgs {
    /// File to store ("-" for standard input)
    file: PathBuf,
    /// Destination BUCKET/KEY
    dest: String,
    /// Chunking: auto, block[:AVG], cdc[:MIN:AVG:MAX] or fixed:SIZE
    #[arg(long, default_value = "auto")]
    chunking: ProfileChoice,
}

#[derive(Args, Debug)]
pub struct GetArgs {
    /// Source BUCKET/KEY
    src: String,
    /// Output file ("-" for standard output)
    file: PathBuf,
    /// Byte range A-B (inclusive, as in HTTP), A- or -N (the last N bytes)
    #[arg(long, allow_hyphen_values = true)]
    range: Option<String>,
}

pub fn mb(ctx: &Ctx, bucket: &str, block_index: bool) -> Result<ExitCode> {
    let store = ctx.open_store()?;
    store.create_bucket(bucket, &local_owner(&ctx.file))?;
    if block_index {
        store.set_block_index(bucket, true)?;
    }
    if !ctx.json {
        let extra = if block_index { " (block index on)" } else { "" };
        println!("created bucket {bucket}{extra}");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn rb(ctx: &Ctx, bucket: &str) -> Result<ExitCode> {
    ctx.open_store()?.delete_bucket(bucket)?;
    if !ctx.json {
        println!("removed bucket {bucket}");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn put(ctx: &Ctx, a: PutArgs) -> Result<ExitCode> {
    let (bucket, key) = split_path(&a.dest)?;
    let (reader, len): (Box<dyn std::io::Read>, u64) = if a.file.as_os_str() == "-" {
        (Box::new(std::io::stdin().lock()), 0)
    } else {
        let f = File::open(&a.file).with_context(|| format!("cannot read {}", a.file.display()))?;
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        (Box::new(f), len)
    };
    let store = ctx.open_store()?;
    let pb = progress_bar(ctx, len, &format!("put {bucket}/{key}"));
    let c = store.put_reader(bucket, key, reader, a.chunking, Vec::new(), |n| pb.inc(n))?;
    pb.finish_and_clear();
    if ctx.json {
        ctx.print_json(&serde_json::json!({
            "bucket": bucket, "key": key, "size": c.size, "etag": c.etag,
            "profile": c.profile, "chunks": c.chunks, "new_bytes": c.new_bytes,
        }))?;
    } else {
        println!(
            "{bucket}/{key}: {} bytes, etag {}, {} chunks ({}), {} new bytes stored",
            c.size, c.etag, c.chunks, c.profile, c.new_bytes
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// HTTP-style inclusive range to a half-open one.
fn parse_range(spec: &str, size: u64) -> Result<std::ops::Range<u64>> {
    let bad = || anyhow::anyhow!("invalid range {spec:?} for an object of {size} bytes");
    let (a, b) = spec.split_once('-').ok_or_else(bad)?;
    let r = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().map_err(|_| bad())?;
            size.saturating_sub(n)..size
        }
        (a, "") => a.parse().map_err(|_| bad())?..size,
        (a, b) => {
            let a: u64 = a.parse().map_err(|_| bad())?;
            let b: u64 = b.parse().map_err(|_| bad())?;
            a..b.saturating_add(1).min(size)
        }
    };
    if r.start > r.end || r.start >= size.max(1) && size > 0 || (size == 0 && r.start > 0) {
        return Err(bad());
    }
    Ok(r)
}

pub fn get(ctx: &Ctx, a: GetArgs) -> Result<ExitCode> {
    let (bucket, key) = split_path(&a.src)?;
    let store = ctx.open_store()?;
    let rec = store.head(bucket, key)?;
    let range = a
        .range
        .as_deref()
        .map(|r| parse_range(r, rec.size))
        .transpose()?;
    let reader = store.read(bucket, key, range)?;
    let total = reader.remaining();
    let to_stdout = a.file.as_os_str() == "-";
    // A regular file (or a new one) is written under a temporary name and
    // renamed at the end, so a failed read (say, a corrupt chunk) never
    // leaves a truncated file under the requested name; zero blocks become
    // holes. Anything else (a device, a pipe) is written straight through.
    let regular = !to_stdout
        && match std::fs::metadata(&a.file) {
            Ok(m) => m.file_type().is_file(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => return Err(e).with_context(|| format!("cannot write {}", a.file.display())),
        };
    let pb = progress_bar(ctx, total, &format!("get {bucket}/{key}"));
    let tmp = {
        let mut name = a.file.clone().into_os_string();
        name.push(".strato-partial");
        PathBuf::from(name)
    };
    let mut out: Box<dyn WriteSeek> = if to_stdout {
        Box::new(Stream(std::io::stdout().lock()))
    } else if regular {
        Box::new(File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?)
    } else {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&a.file)
            .with_context(|| format!("cannot write {}", a.file.display()))?;
        Box::new(Stream(f))
    };
    let mut written = 0u64;
    let result: Result<()> = (|| {
        for piece in reader {
            let piece = piece?;
            if regular && piece.len() >= 4096 && is_zero(&piece) {
                out.seek(SeekFrom::Current(piece.len() as i64))?;
            } else {
                out.write_all(&piece)?;
            }
            written += piece.len() as u64;
            pb.inc(piece.len() as u64);
        }
        out.finish(written)
    })();
    pb.finish_and_clear();
    if let Err(e) = result {
        if regular {
            let _ = std::fs::remove_file(&tmp);
        }
        return Err(e);
    }
    if regular {
        std::fs::rename(&tmp, &a.file)
            .with_context(|| format!("cannot write {}", a.file.display()))?;
    }
    if !to_stdout {
        ctx.emit(
            &serde_json::json!({"bucket": bucket, "key": key, "bytes": written, "etag": rec.etag}),
            || {
                println!("{bucket}/{key} -> {}: {written} bytes", a.file.display());
            },
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

trait WriteSeek: Write + Seek {
    fn finish(&mut self, len: u64) -> Result<()>;
}

impl WriteSeek for File {
    fn finish(&mut self, len: u64) -> Result<()> {
        // Extends the file over a trailing hole. No fsync: like cp, the
        // output is durable when the system writes it back.
        self.set_len(len)?;
        Ok(())
    }
}

/// Standard output or a device: written in order, never seeked.
struct Stream<W: Write>(W);

impl<W: Write> Write for Stream<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl<W: Write> Seek for Stream<W> {
    fn seek(&mut self, _: SeekFrom) -> std::io::Result<u64> {
        Err(std::io::Error::other("this output cannot seek"))
    }
}

impl<W: Write> WriteSeek for Stream<W> {
    fn finish(&mut self, _: u64) -> Result<()> {
        self.0.flush()?;
        Ok(())
    }
}

pub fn ls(ctx: &Ctx, path: Option<&str>) -> Result<ExitCode> {
    let store = ctx.open_store()?;
    let Some(path) = path else {
        let buckets = store.list_buckets()?;
        if ctx.json {
            let v: Vec<_> = buckets
                .iter()
                .map(|(n, b)| serde_json::json!({"name": n, "owner": b.owner, "created_ms": b.created_ms}))
                .collect();
            ctx.print_json(&v)?;
        } else {
            for (name, _) in buckets {
                println!("{name}");
            }
        }
        return Ok(ExitCode::SUCCESS);
    };
    let path = path.strip_prefix("s3://").unwrap_or(path);
    let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
    let mut after: Option<String> = None;
    let mut rows = Vec::new();
    loop {
        let (page, more) = store.list_objects(bucket, prefix, after.as_deref(), 1000)?;
        after = page.last().map(|(k, _)| k.clone());
        for (key, rec) in page {
            if ctx.json {
                rows.push(
                    serde_json::json!({"key": key, "size": rec.size, "etag": rec.etag,
                    "modified_ms": rec.modified_ms, "profile": rec.profile}),
                );
            } else {
                println!("{:>14}  {}  {key}", rec.size, rec.etag);
            }
        }
        if !more {
            break;
        }
    }
    if ctx.json {
        ctx.print_json(&rows)?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn rm(ctx: &Ctx, path: &str) -> Result<ExitCode> {
    let (bucket, key) = split_path(path)?;
    let store = ctx.open_store()?;
    store.head(bucket, key)?; // a missing object is an error on the command line
    store.delete_object(bucket, key)?;
    if !ctx.json {
        println!("deleted {bucket}/{key}");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("0-9", 100).unwrap(), 0..10);
        assert_eq!(parse_range("90-", 100).unwrap(), 90..100);
        assert_eq!(parse_range("-10", 100).unwrap(), 90..100);
        assert_eq!(parse_range("50-1000", 100).unwrap(), 50..100);
        assert!(parse_range("100-", 100).is_err());
        assert!(parse_range("x-1", 100).is_err());
    }
}
