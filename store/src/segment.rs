//! Append-only segment files: the only place chunk bytes live.
//!
//! ```text
//! segment  := file-header record* [trailer]
//! header   := "STRATSEG" version:u32 reserved:u32 segment-id:u64 created:u64   (32 bytes)
//! record   := "SREC" version:u8 flags:u8 reserved:u16 id:[32] len:u32 crc32:u32 data[len]
//!             (crc32 covers the 44 header bytes before it)
//! trailer  := "STRATTRL" count:u64 entry*count seg-hash:[32] trailer-hash:[32]
//!             trailer-start:u64 "STRATEND"
//! entry    := id:[32] offset:u64 len:u32 flags:u8 pad:[3]                        (48 bytes)
//! ```
//! All integers little-endian. `seg-hash` is BLAKE3 of every byte before the
//! trailer; `trailer-hash` is BLAKE3 of the trailer from its magic to the last
//! entry. A sealed segment therefore lists its records, so the chunk index can
//! be rebuilt from trailers alone; an unsealed one (the process died while it
//! was open) is recovered by scanning records and re-hashing their data.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use super::error::{IoContext, Result, StoreError};
use super::id::ChunkId;

pub const SEGMENT_MAGIC: &[u8; 8] = b"STRATSEG";
pub const SEGMENT_VERSION: u32 = 1;
pub const FILE_HEADER_LEN: u64 = 32;
pub const RECORD_MAGIC: &[u8; 4] = b"SREC";
pub const RECORD_VERSION: u8 = 1;
pub const RECORD_HEADER_LEN: u64 = 48;
const TRAILER_MAGIC: &[u8; 8] = b"STRATTRL";
const END_MAGIC: &[u8; 8] = b"STRATEND";
const TRAILER_ENTRY_LEN: usize = 48;
const TRAILER_TAIL_LEN: u64 = 32 + 32 + 8 + 8;
/// Largest chunk a record may hold; larger lengths in a header mean corruption.
pub const MAX_RECORD_LEN: u32 = 64 << 20;

/// One record as listed in a trailer or found by a scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef {
    pub id: ChunkId,
    /// Offset of the record header in the segment file.
    pub offset: u64,
    pub len: u32,
    pub flags: u8,
}

pub fn segment_file_name(id: u32) -> String {
    format!("{id:08x}.seg")
}

pub fn parse_segment_file_name(name: &str) -> Option<u32> {
    let hex = name.strip_suffix(".seg")?;
    if hex.len() != 8 {
        return None;
    }
    u32::from_str_radix(hex, 16).ok()
}

fn encode_record_header(id: &ChunkId, len: u32, flags: u8) -> [u8; RECORD_HEADER_LEN as usize] {
    let mut h = [0u8; RECORD_HEADER_LEN as usize];
    h[0..4].copy_from_slice(RECORD_MAGIC);
    h[4] = RECORD_VERSION;
    h[5] = flags;
    h[8..40].copy_from_slice(&id.0);
    h[40..44].copy_from_slice(&len.to_le_bytes());
    let crc = crc32fast::hash(&h[0..44]);
    h[44..48].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Parse a record header; `None` means "not a valid record here".
pub(crate) fn decode_record_header(h: &[u8]) -> Option<(ChunkId, u32, u8)> {
    if h.len() < RECORD_HEADER_LEN as usize || &h[0..4] != RECORD_MAGIC || h[4] != RECORD_VERSION {
        return None;
    }
    let crc = u32::from_le_bytes(h[44..48].try_into().ok()?);
    if crc32fast::hash(&h[0..44]) != crc {
        return None;
    }
    let mut id = [0u8; 32];
    id.copy_from_slice(&h[8..40]);
    let len = u32::from_le_bytes(h[40..44].try_into().ok()?);
    if len > MAX_RECORD_LEN {
        return None;
    }
    Some((ChunkId(id), len, h[5]))
}

/// A segment file shared by its appender (if open) and any number of readers.
/// Readers use positioned reads, so they never disturb the appender.
pub struct Segment {
    pub id: u32,
    pub path: PathBuf,
    file: File,
    /// Bytes written to the kernel so far (records visible to readers).
    written: AtomicU64,
    /// Bytes known durable: everything below this offset survived an fsync.
    synced: AtomicU64,
    sealed: AtomicBool,
    /// Serialises fsyncs so concurrent committers don't each pay for one.
    sync_lock: Mutex<()>,
}

impl Segment {
    pub fn is_sealed(&self) -> bool {
        self.sealed.load(Ordering::Acquire)
    }

    pub fn len(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// Never true: a segment always holds at least its file header.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Read one record's data, checking that the header at `offset` is the
    /// record the index says it is.
    pub fn read_record(&self, offset: u64, id: &ChunkId, len: u32) -> Result<Bytes> {
        let mut buf = vec![0u8; RECORD_HEADER_LEN as usize + len as usize];
        self.file.read_exact_at(&mut buf, offset).at(&self.path)?;
        match decode_record_header(&buf) {
            Some((hid, hlen, _)) if hid == *id && hlen == len => {}
            _ => {
                return Err(StoreError::CorruptSegment {
                    path: self.path.clone(),
                    what: format!("record header at offset {offset} does not describe chunk {id}"),
                })
            }
        }
        let mut data = Bytes::from(buf);
        Ok(data.split_off(RECORD_HEADER_LEN as usize))
    }

    /// Make every byte below `end` durable. Cheap when already synced.
    pub fn sync_to(&self, end: u64) -> Result<()> {
        if self.synced.load(Ordering::Acquire) >= end {
            return Ok(());
        }
        let _guard = self.sync_lock.lock();
        if self.synced.load(Ordering::Acquire) >= end {
            return Ok(());
        }
        let upto = self.written.load(Ordering::Acquire);
        self.file.sync_data().at(&self.path)?;
        self.synced.fetch_max(upto, Ordering::AcqRel);
        Ok(())
    }

    pub fn is_durable(&self, end: u64) -> bool {
        self.synced.load(Ordering::Acquire) >= end
    }
}

/// The exclusive writer of one open segment. Records are buffered and handed
/// to the kernel in batches; a record becomes readable (and may be published
/// in the index) only after [`SegmentAppender::flush`].
pub struct SegmentAppender {
    seg: Arc<Segment>,
    hasher: blake3::Hasher,
    table: Vec<RecordRef>,
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    buf_start: u64,
    /// fsync on seal (false only for s3 staging segments).
    durable: bool,
}

pub const APPEND_BUFFER: usize = 1 << 20;

impl SegmentAppender {
    pub fn create(dir: &Path, id: u32) -> Result<SegmentAppender> {
        let app = Self::create_at(dir.join(segment_file_name(id)), id as u64, true)?;
        // The new file's directory entry must be durable before any manifest
        // can point into it.
        sync_dir(dir)?;
        Ok(app)
    }

    /// A segment at `path` whose header names `header_id`. `durable: false`
    /// is for staging segments of the s3 backend: they are uploaded and
    /// deleted before anything references them, so fsyncs would only cost.
    pub fn create_at(path: PathBuf, header_id: u64, durable: bool) -> Result<SegmentAppender> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .at(&path)?;
        let mut header = [0u8; FILE_HEADER_LEN as usize];
        header[0..8].copy_from_slice(SEGMENT_MAGIC);
        header[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
        header[16..24].copy_from_slice(&header_id.to_le_bytes());
        header[24..32].copy_from_slice(&super::now_secs().to_le_bytes());
        file.write_all(&header).at(&path)?;
        let mut hasher = blake3::Hasher::new();
        hasher.update(&header);
        if durable {
            file.sync_all().at(&path)?;
        }
        let seg = Arc::new(Segment {
            // Local segment ids are u32; a staging segment's id lives in its
            // header and in its object name, never in this field.
            id: header_id as u32,
            path,
            file,
            written: AtomicU64::new(FILE_HEADER_LEN),
            synced: AtomicU64::new(FILE_HEADER_LEN),
            sealed: AtomicBool::new(false),
            sync_lock: Mutex::new(()),
        });
        Ok(SegmentAppender {
            seg,
            hasher,
            table: Vec::new(),
            buf: Vec::with_capacity(APPEND_BUFFER + (256 << 10)),
            buf_start: FILE_HEADER_LEN,
            durable,
        })
    }

    pub fn segment(&self) -> &Arc<Segment> {
        &self.seg
    }

    /// Bytes the segment will hold once the buffer is flushed.
    pub fn end_offset(&self) -> u64 {
        self.buf_start + self.buf.len() as u64
    }

    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Queue one record; returns its offset. Not readable until `flush`.
    pub fn append(&mut self, id: &ChunkId, data: &[u8]) -> RecordRef {
        let offset = self.end_offset();
        let len = data.len() as u32;
        let header = encode_record_header(id, len, 0);
        self.buf.extend_from_slice(&header);
        self.buf.extend_from_slice(data);
        let rec = RecordRef {
            id: *id,
            offset,
            len,
            flags: 0,
        };
        self.table.push(rec);
        rec
    }

    /// Hand buffered records to the kernel (not yet durable; see `Segment::sync_to`).
    pub fn flush(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.seg
            .file
            .write_all_at(&self.buf, self.buf_start)
            .at(&self.seg.path)?;
        self.hasher.update(&self.buf);
        self.buf_start += self.buf.len() as u64;
        self.buf.clear();
        self.seg.written.store(self.buf_start, Ordering::Release);
        Ok(())
    }

    /// Write the trailer and make the whole segment durable. After this the
    /// segment is immutable.
    pub fn seal(mut self) -> Result<Arc<Segment>> {
        self.flush()?;
        let seg_hash = *self.hasher.finalize().as_bytes();
        let trailer = encode_trailer(&self.table, &seg_hash, self.buf_start);
        self.seg
            .file
            .write_all_at(&trailer, self.buf_start)
            .at(&self.seg.path)?;
        if self.durable {
            self.seg.file.sync_all().at(&self.seg.path)?;
        }
        let end = self.buf_start + trailer.len() as u64;
        self.seg.synced.store(end, Ordering::Release);
        self.seg.sealed.store(true, Ordering::Release);
        Ok(self.seg)
    }
}

fn encode_trailer(table: &[RecordRef], seg_hash: &[u8; 32], trailer_start: u64) -> Vec<u8> {
    let mut t =
        Vec::with_capacity(16 + table.len() * TRAILER_ENTRY_LEN + TRAILER_TAIL_LEN as usize);
    t.extend_from_slice(TRAILER_MAGIC);
    t.extend_from_slice(&(table.len() as u64).to_le_bytes());
    for r in table {
        t.extend_from_slice(&r.id.0);
        t.extend_from_slice(&r.offset.to_le_bytes());
        t.extend_from_slice(&r.len.to_le_bytes());
        t.push(r.flags);
        t.extend_from_slice(&[0u8; 3]);
    }
    let trailer_hash = *blake3::hash(&t).as_bytes();
    t.extend_from_slice(seg_hash);
    t.extend_from_slice(&trailer_hash);
    t.extend_from_slice(&trailer_start.to_le_bytes());
    t.extend_from_slice(END_MAGIC);
    t
}

pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).at(dir)?.sync_all().at(dir)
}

/// What opening an existing segment found.
pub struct OpenedSegment {
    pub segment: Arc<Segment>,
    pub records: Vec<RecordRef>,
    /// True if the segment had no valid trailer and was recovered by a scan
    /// (and then sealed, possibly after cutting off a torn tail).
    pub recovered: bool,
    pub truncated_bytes: u64,
}

/// Open a segment for reading, from its trailer when sealed. An unsealed
/// segment (left open by a crash) is scanned, cut after its last intact
/// record, and sealed so the next start is fast.
pub fn open_segment(path: &Path, id: u32) -> Result<OpenedSegment> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .at(path)?;
    let file_len = file.metadata().at(path)?.len();
    let mut header = [0u8; FILE_HEADER_LEN as usize];
    if file_len < FILE_HEADER_LEN {
        return Err(StoreError::CorruptSegment {
            path: path.to_owned(),
            what: "shorter than a segment header".into(),
        });
    }
    file.read_exact_at(&mut header, 0).at(path)?;
    if &header[0..8] != SEGMENT_MAGIC {
        return Err(StoreError::CorruptSegment {
            path: path.to_owned(),
            what: "bad segment magic".into(),
        });
    }
    let version = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    if version != SEGMENT_VERSION {
        return Err(StoreError::CorruptSegment {
            path: path.to_owned(),
            what: format!("unsupported segment version {version}"),
        });
    }
    let make = |file: File, len: u64| {
        Arc::new(Segment {
            id,
            path: path.to_owned(),
            file,
            written: AtomicU64::new(len),
            synced: AtomicU64::new(len),
            sealed: AtomicBool::new(true),
            sync_lock: Mutex::new(()),
        })
    };
    if let Some((records, trailer_start)) = read_trailer(&file, file_len)? {
        return Ok(OpenedSegment {
            segment: make(file, trailer_start),
            records,
            recovered: false,
            truncated_bytes: 0,
        });
    }
    // No trustworthy trailer: walk the records, re-hashing each one's data,
    // because a crash may leave a header whose data never reached the disk.
    let (records, valid_end, seg_hash) = scan_records(&file, path, file_len, &header)?;
    let truncated_bytes = file_len - valid_end;
    file.set_len(valid_end).at(path)?;
    let trailer = encode_trailer(&records, &seg_hash, valid_end);
    file.write_all_at(&trailer, valid_end).at(path)?;
    file.sync_all().at(path)?;
    Ok(OpenedSegment {
        segment: make(file, valid_end),
        records,
        recovered: true,
        truncated_bytes,
    })
}

fn read_trailer(file: &File, file_len: u64) -> Result<Option<(Vec<RecordRef>, u64)>> {
    if file_len < FILE_HEADER_LEN + 16 + TRAILER_TAIL_LEN {
        return Ok(None);
    }
    let mut tail = [0u8; 16];
    if file.read_exact_at(&mut tail, file_len - 16).is_err() || &tail[8..16] != END_MAGIC {
        return Ok(None);
    }
    let trailer_start = u64::from_le_bytes(tail[0..8].try_into().unwrap_or_default());
    if trailer_start < FILE_HEADER_LEN || trailer_start + 16 + TRAILER_TAIL_LEN > file_len {
        return Ok(None);
    }
    let body_len = (file_len - TRAILER_TAIL_LEN - trailer_start) as usize;
    let mut body = vec![0u8; body_len];
    let mut hashes = [0u8; 64];
    if file.read_exact_at(&mut body, trailer_start).is_err()
        || file
            .read_exact_at(&mut hashes, file_len - TRAILER_TAIL_LEN)
            .is_err()
    {
        return Ok(None);
    }
    if &body[0..8] != TRAILER_MAGIC || blake3::hash(&body).as_bytes() != &hashes[32..64] {
        return Ok(None);
    }
    let count = u64::from_le_bytes(body[8..16].try_into().unwrap_or_default()) as usize;
    if body.len() != 16 + count.saturating_mul(TRAILER_ENTRY_LEN) {
        return Ok(None);
    }
    let records = body[16..]
        .chunks_exact(TRAILER_ENTRY_LEN)
        .map(|e| {
            let mut id = [0u8; 32];
            id.copy_from_slice(&e[0..32]);
            RecordRef {
                id: ChunkId(id),
                offset: u64::from_le_bytes(e[32..40].try_into().unwrap_or_default()),
                len: u32::from_le_bytes(e[40..44].try_into().unwrap_or_default()),
                flags: e[44],
            }
        })
        .collect();
    Ok(Some((records, trailer_start)))
}

type ScanOutcome = (Vec<RecordRef>, u64, [u8; 32]);

fn scan_records(file: &File, path: &Path, file_len: u64, header: &[u8]) -> Result<ScanOutcome> {
    let mut hasher = blake3::Hasher::new();
    hasher.update(header);
    let mut pos = FILE_HEADER_LEN;
    let mut records = Vec::new();
    let mut hbuf = [0u8; RECORD_HEADER_LEN as usize];
    let mut data = Vec::new();
    while pos + RECORD_HEADER_LEN <= file_len {
        if file.read_exact_at(&mut hbuf, pos).is_err() {
            break;
        }
        let Some((id, len, flags)) = decode_record_header(&hbuf) else {
            break;
        };
        if pos + RECORD_HEADER_LEN + len as u64 > file_len {
            break;
        }
        data.resize(len as usize, 0);
        file.read_exact_at(&mut data, pos + RECORD_HEADER_LEN)
            .at(path)?;
        if ChunkId::of(&data) != id {
            break;
        }
        hasher.update(&hbuf);
        hasher.update(&data);
        records.push(RecordRef {
            id,
            offset: pos,
            len,
            flags,
        });
        pos += RECORD_HEADER_LEN + len as u64;
    }
    Ok((records, pos, *hasher.finalize().as_bytes()))
}

/// Full verification for fsck: re-read every record, check its header and
/// data hash, and check the segment hash in the trailer.
pub struct SegmentCheck {
    pub bad_records: Vec<(RecordRef, String)>,
    pub segment_hash_ok: bool,
}

pub fn verify_segment(seg: &Segment, records: &[RecordRef]) -> Result<SegmentCheck> {
    let mut bad = Vec::new();
    let mut hasher = blake3::Hasher::new();
    let mut header = [0u8; FILE_HEADER_LEN as usize];
    seg.file.read_exact_at(&mut header, 0).at(&seg.path)?;
    hasher.update(&header);
    for r in records {
        let mut buf = vec![0u8; RECORD_HEADER_LEN as usize + r.len as usize];
        if let Err(e) = seg.file.read_exact_at(&mut buf, r.offset) {
            bad.push((*r, format!("unreadable: {e}")));
            continue;
        }
        hasher.update(&buf);
        match decode_record_header(&buf) {
            Some((id, len, _)) if id == r.id && len == r.len => {
                if ChunkId::of(&buf[RECORD_HEADER_LEN as usize..]) != r.id {
                    bad.push((*r, "data does not match its id".into()));
                }
            }
            _ => bad.push((*r, "record header is damaged".into())),
        }
    }
    let len = seg.len();
    let mut hashes = [0u8; 32];
    let segment_hash_ok = seg.is_sealed()
        && seg
            .file
            .read_exact_at(
                &mut hashes,
                len + 16 + (records.len() * TRAILER_ENTRY_LEN) as u64,
            )
            .is_ok()
        && &hashes == hasher.finalize().as_bytes();
    Ok(SegmentCheck {
        bad_records: bad,
        segment_hash_ok,
    })
}

impl Segment {
    /// The records of a sealed segment, from its trailer.
    pub fn records(&self) -> Result<Vec<RecordRef>> {
        let file_len = self.file.metadata().at(&self.path)?.len();
        match read_trailer(&self.file, file_len)? {
            Some((records, _)) => Ok(records),
            None => Err(StoreError::CorruptSegment {
                path: self.path.clone(),
                what: "no valid trailer".into(),
            }),
        }
    }

    /// Bytes of record data (headers included) the segment holds.
    pub fn record_bytes(&self) -> u64 {
        self.len().saturating_sub(FILE_HEADER_LEN)
    }
}

impl Segment {
    /// Read several adjacent records with one read: `records` are (id, len)
    /// in file order, the first starting at `offset` and each following the
    /// previous one directly. Returns each record's data (zero-copy slices).
    pub fn read_run(&self, offset: u64, records: &[(ChunkId, u32)]) -> Result<Vec<Bytes>> {
        let total: u64 = records
            .iter()
            .map(|(_, len)| RECORD_HEADER_LEN + *len as u64)
            .sum();
        let mut buf = vec![0u8; total as usize];
        self.file.read_exact_at(&mut buf, offset).at(&self.path)?;
        let buf = Bytes::from(buf);
        let mut out = Vec::with_capacity(records.len());
        let mut pos = 0usize;
        for (id, len) in records {
            let end = pos + RECORD_HEADER_LEN as usize + *len as usize;
            match decode_record_header(&buf[pos..]) {
                Some((hid, hlen, _)) if hid == *id && hlen == *len => {}
                _ => {
                    return Err(StoreError::CorruptSegment {
                        path: self.path.clone(),
                        what: format!(
                            "record header at offset {} does not describe chunk {id}",
                            offset + pos as u64
                        ),
                    })
                }
            }
            out.push(buf.slice(pos + RECORD_HEADER_LEN as usize..end));
            pos = end;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_seal_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut app = SegmentAppender::create(dir.path(), 7).unwrap();
        let a = b"alpha".to_vec();
        let b = vec![9u8; 100_000];
        let ra = app.append(&ChunkId::of(&a), &a);
        let rb = app.append(&ChunkId::of(&b), &b);
        app.flush().unwrap();
        let seg = app.seal().unwrap();
        assert_eq!(
            &seg.read_record(ra.offset, &ra.id, ra.len).unwrap()[..],
            &a[..]
        );
        drop(seg);
        let opened = open_segment(&dir.path().join(segment_file_name(7)), 7).unwrap();
        assert!(!opened.recovered);
        assert_eq!(opened.records, vec![ra, rb]);
        let check = verify_segment(&opened.segment, &opened.records).unwrap();
        assert!(check.bad_records.is_empty());
        assert!(check.segment_hash_ok);
    }

    #[test]
    fn torn_tail_is_cut_and_sealed() {
        let dir = tempfile::tempdir().unwrap();
        let mut app = SegmentAppender::create(dir.path(), 1).unwrap();
        let a = vec![1u8; 5000];
        let ra = app.append(&ChunkId::of(&a), &a);
        app.flush().unwrap();
        let path = app.segment().path.clone();
        drop(app);
        // A record header whose data never made it.
        let f = OpenOptions::new().append(true).open(&path).unwrap();
        let b = vec![2u8; 5000];
        (&f).write_all(&encode_record_header(&ChunkId::of(&b), 5000, 0))
            .unwrap();
        (&f).write_all(&[0u8; 100]).unwrap();
        drop(f);
        let opened = open_segment(&path, 1).unwrap();
        assert!(opened.recovered);
        assert_eq!(opened.records, vec![ra]);
        let again = open_segment(&path, 1).unwrap();
        assert!(!again.recovered);
        assert_eq!(again.records, vec![ra]);
        assert!(
            verify_segment(&again.segment, &again.records)
                .unwrap()
                .segment_hash_ok
        );
    }
}
