//! Content-based redundancy elimination for migrated pages (CloudNet §4.2,
//! §5.3), combined with page deltas (`delta`) and optional zstd into one
//! per-page frame codec.
//!
//! Both ends keep a FIFO cache of recently sent blocks (a page split into
//! `blocks_per_page` sub-page blocks, default 4). A block found in the cache
//! goes as a 4-byte slot index instead of its bytes. A hit needs the weak
//! hash (xxh3) AND a byte comparison to match, so a hash collision can
//! never put wrong bytes into the guest.
//!
//! The caches stay in lockstep without ever naming a slot for a new block:
//! after each page, both ends have "admitted" every block of it in order
//! (look it up; on a miss write it at the FIFO's next slot). The encoder
//! does that while choosing tokens, the decoder while decoding; whatever
//! frame kind was chosen, the sequence of cache operations is the same.
//!
//! Frames are self-describing except for the page number and length, which
//! belong to the transport:
//!
//! ```text
//! u8      kind (RAW=0, BLOCKS=1, DELTA=2) | 0x80 when the body is zstd
//! u32 LE  cache generation (both ends reset to a new one after a reconnect)
//! body    RAW:    the page
//!         BLOCKS: per block, 0x00 + u32 LE slot (hit) or 0x01 + block bytes
//!         DELTA:  u64 LE xxh3 of the base page, then a `delta` encoding
//! ```
//!
//! With the store-assisted dedup of the agents (pages the destination site
//! already holds go by id), the codec sits behind it: only pages that would
//! otherwise cross the WAN in full reach `PageEncoder::encode`, and both
//! ends must run every such page through their codec in the same order.
//!
//! Pure and synchronous, no I/O: the migration engine and the simulator
//! (`sim`) call the same code. A decoder that sees a bad frame refuses all
//! further frames until `reset`, so a desynchronised cache is detected, not
//! silently trusted; the engine then resets both ends with a new
//! generation (or falls back to sending raw pages without the codec).

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use xxhash_rust::xxh3::xxh3_64;

use super::delta;

const KIND_RAW: u8 = 0;
const KIND_BLOCKS: u8 = 1;
const KIND_DELTA: u8 = 2;
const ZSTD_FLAG: u8 = 0x80;
const HEADER_LEN: usize = 5;
const TAG_HIT: u8 = 0;
const TAG_LITERAL: u8 = 1;
const HIT_LEN: usize = 5;
const DELTA_BASE_LEN: usize = 8;

#[derive(Debug, Error)]
pub enum CodecError {
    #[error("invalid codec configuration: {0}")]
    Config(String),
    #[error("page is {got} bytes, the codec is configured for {want}")]
    PageSize { got: usize, want: usize },
    #[error(
        "frame is from cache generation {frame}, this end is at {ours}: the caches are out of sync"
    )]
    GenerationMismatch { frame: u32, ours: u32 },
    #[error("frame is malformed: {0}")]
    Malformed(String),
    #[error("frame uses {0}, which this end has disabled")]
    Disabled(&'static str),
    #[error("cache slot {0} is empty on this end: the caches are out of sync")]
    UnknownSlot(u32),
    #[error("delta base differs from the page held here: the page histories are out of sync")]
    DeltaBaseMismatch,
    #[error(
        "delta for page {0:#x}, which this end does not hold: the page histories are out of sync"
    )]
    DeltaBaseMissing(u64),
    #[error("decoder refused frames since an earlier error; reset both ends")]
    Poisoned,
    #[error("zstd: {0}")]
    Zstd(std::io::Error),
    #[error(transparent)]
    Delta(#[from] delta::DeltaError),
}

/// What the codec does; both ends must use the same values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CodecConfig {
    pub page_size: usize,
    /// Content-based redundancy cache on/off.
    pub cbr: bool,
    /// Sub-page blocks per page for the cache (CloudNet Fig. 5: finer finds more).
    pub blocks_per_page: usize,
    /// Bytes of block data each end caches (CloudNet used a 100 MB FIFO).
    pub cache_bytes: usize,
    /// Page deltas on/off.
    pub delta: bool,
    /// Largest delta body worth sending; bigger ones go whole (CloudNet §5.3).
    pub delta_threshold: usize,
    /// Bytes of previously sent pages the sender keeps to make deltas from
    /// (QEMU's xbzrle cache; the receiver's copy is its guest memory).
    pub delta_history_bytes: usize,
    /// zstd level for frame bodies; None = no compression.
    pub zstd_level: Option<i32>,
}

impl Default for CodecConfig {
    fn default() -> Self {
        CodecConfig {
            page_size: 4096,
            cbr: true,
            blocks_per_page: 4,
            cache_bytes: 64 << 20,
            delta: true,
            delta_threshold: 2048,
            delta_history_bytes: 64 << 20,
            zstd_level: None,
        }
    }
}

impl CodecConfig {
    /// No optimisation at all: every page goes raw (the baseline).
    pub fn plain() -> Self {
        CodecConfig {
            cbr: false,
            delta: false,
            zstd_level: None,
            ..CodecConfig::default()
        }
    }

    pub fn validate(&self) -> Result<(), CodecError> {
        let bad = |m: String| Err(CodecError::Config(m));
        if self.page_size < 64 || self.page_size > 1 << 20 {
            return bad(format!("page size {} not in 64..=1048576", self.page_size));
        }
        if self.cbr {
            if self.blocks_per_page == 0
                || !self.page_size.is_multiple_of(self.blocks_per_page)
                || self.page_size / self.blocks_per_page < 16
            {
                return bad(format!(
                    "{} blocks per page must divide the {}-byte page into blocks of at least 16 bytes",
                    self.blocks_per_page, self.page_size
                ));
            }
            let slots = self.cache_bytes / self.block_size();
            if slots == 0 || slots > u32::MAX as usize {
                return bad(format!(
                    "cache of {} bytes holds {} blocks; need 1..=2^32-1",
                    self.cache_bytes, slots
                ));
            }
        }
        if self.delta {
            if self.delta_threshold == 0 || self.delta_threshold > self.page_size {
                return bad(format!(
                    "delta threshold {} not in 1..={}",
                    self.delta_threshold, self.page_size
                ));
            }
            if self.delta_history_bytes < self.page_size {
                return bad("delta history must hold at least one page".into());
            }
        }
        if let Some(l) = self.zstd_level {
            if !(1..=19).contains(&l) {
                return bad(format!("zstd level {l} not in 1..=19"));
            }
        }
        Ok(())
    }

    fn block_size(&self) -> usize {
        self.page_size / self.blocks_per_page.max(1)
    }

    /// Largest possible body: a BLOCKS frame of literals.
    fn max_body(&self) -> usize {
        self.page_size + self.blocks_per_page.max(1) + DELTA_BASE_LEN + 16
    }
}

/// How a page went on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FrameKind {
    Raw,
    Blocks,
    Delta,
}

/// Accounting for one encoded page: where the bytes were saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncodeOutcome {
    pub kind: FrameKind,
    pub frame_len: usize,
    pub cache_hits: u32,
    /// Page bytes minus the BLOCKS body (0 for other kinds).
    pub saved_by_cache: u64,
    /// Page bytes minus the DELTA body (0 for other kinds).
    pub saved_by_delta: u64,
    /// Body bytes minus the compressed body (0 without zstd).
    pub saved_by_zstd: u64,
}

/// u64 keys are already hashes: pass them through.
#[derive(Default)]
struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

type HashIndex = HashMap<u64, u32, BuildHasherDefault<IdentityHasher>>;

/// The FIFO block cache, identical at both ends.
struct BlockCache {
    block: usize,
    slots: usize,
    /// Grows to `slots * block` as the cache fills, so a short migration
    /// never pays for the whole cache.
    data: Vec<u8>,
    slot_hash: Vec<u64>,
    next: usize,
    index: HashIndex,
}

impl BlockCache {
    fn new(block: usize, slots: usize) -> Self {
        BlockCache {
            block,
            slots,
            data: Vec::new(),
            slot_hash: Vec::new(),
            next: 0,
            index: HashIndex::default(),
        }
    }

    fn slot(&self, s: usize) -> Option<&[u8]> {
        self.data.get(s * self.block..(s + 1) * self.block)
    }

    /// A slot holding exactly these bytes (weak hash, then byte compare).
    fn lookup(&self, hash: u64, blk: &[u8]) -> Option<u32> {
        let s = *self.index.get(&hash)?;
        (self.slot(s as usize) == Some(blk)).then_some(s)
    }

    fn insert(&mut self, hash: u64, blk: &[u8]) {
        let s = self.next;
        if s < self.slot_hash.len() {
            // Evict the FIFO's oldest block; drop its index entry unless a
            // newer block with the same hash took the entry over.
            let old = self.slot_hash[s];
            if self.index.get(&old) == Some(&(s as u32)) {
                self.index.remove(&old);
            }
            self.data[s * self.block..(s + 1) * self.block].copy_from_slice(blk);
            self.slot_hash[s] = hash;
        } else {
            self.data.extend_from_slice(blk);
            self.slot_hash.push(hash);
        }
        self.index.insert(hash, s as u32);
        self.next = (s + 1) % self.slots;
    }

    /// Look up; on a miss, cache the block. Returns the hit slot.
    fn admit(&mut self, blk: &[u8]) -> Option<u32> {
        let h = xxh3_64(blk);
        let hit = self.lookup(h, blk);
        if hit.is_none() {
            self.insert(h, blk);
        }
        hit
    }
}

/// Sender-side copies of the pages last sent, FIFO-bounded.
struct PageHistory {
    max_pages: usize,
    pages: HashMap<u64, Box<[u8]>>,
    order: VecDeque<u64>,
}

impl PageHistory {
    fn new(max_pages: usize) -> Self {
        PageHistory {
            max_pages,
            pages: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn remember(&mut self, page_no: u64, page: &[u8]) {
        if let Some(p) = self.pages.get_mut(&page_no) {
            p.copy_from_slice(page);
            return;
        }
        if self.order.len() >= self.max_pages {
            if let Some(old) = self.order.pop_front() {
                self.pages.remove(&old);
            }
        }
        self.order.push_back(page_no);
        self.pages.insert(page_no, page.into());
    }
}

/// Sending end of the page codec.
pub struct PageEncoder {
    cfg: CodecConfig,
    generation: u32,
    cache: Option<BlockCache>,
    history: Option<PageHistory>,
    zstd: Option<zstd::bulk::Compressor<'static>>,
    body: Vec<u8>,
    delta_buf: Vec<u8>,
}

impl PageEncoder {
    pub fn new(cfg: CodecConfig, generation: u32) -> Result<Self, CodecError> {
        cfg.validate()?;
        let zstd = match cfg.zstd_level {
            Some(l) => Some(zstd::bulk::Compressor::new(l).map_err(CodecError::Zstd)?),
            None => None,
        };
        let mut e = PageEncoder {
            cfg,
            generation,
            cache: None,
            history: None,
            zstd,
            body: Vec::new(),
            delta_buf: Vec::new(),
        };
        e.reset(generation);
        Ok(e)
    }

    pub fn config(&self) -> &CodecConfig {
        &self.cfg
    }

    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Forget everything sent so far (after a reconnect); the receiver
    /// must reset to the same generation.
    pub fn reset(&mut self, generation: u32) {
        self.generation = generation;
        self.cache = self.cfg.cbr.then(|| {
            BlockCache::new(
                self.cfg.block_size(),
                self.cfg.cache_bytes / self.cfg.block_size(),
            )
        });
        self.history = self
            .cfg
            .delta
            .then(|| PageHistory::new(self.cfg.delta_history_bytes / self.cfg.page_size));
    }

    /// Encode `page` (guest page number `page_no`) into `out` (cleared).
    pub fn encode(
        &mut self,
        page_no: u64,
        page: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<EncodeOutcome, CodecError> {
        let ps = self.cfg.page_size;
        if page.len() != ps {
            return Err(CodecError::PageSize {
                got: page.len(),
                want: ps,
            });
        }
        let mut outcome = EncodeOutcome {
            kind: FrameKind::Raw,
            frame_len: 0,
            cache_hits: 0,
            saved_by_cache: 0,
            saved_by_delta: 0,
            saved_by_zstd: 0,
        };
        // Candidate 1: block tokens (this also admits the page's blocks,
        // the lockstep rule both ends follow for every page).
        self.body.clear();
        let mut best_kind = KIND_RAW;
        if let Some(cache) = self.cache.as_mut() {
            for blk in page.chunks_exact(cache.block) {
                match cache.admit(blk) {
                    Some(slot) => {
                        outcome.cache_hits += 1;
                        self.body.push(TAG_HIT);
                        self.body.extend_from_slice(&slot.to_le_bytes());
                    }
                    None => {
                        self.body.push(TAG_LITERAL);
                        self.body.extend_from_slice(blk);
                    }
                }
            }
            if outcome.cache_hits > 0 && self.body.len() < ps {
                best_kind = KIND_BLOCKS;
            }
        }
        let best_len = if best_kind == KIND_BLOCKS {
            self.body.len()
        } else {
            ps
        };
        // Candidate 2: a delta against the version sent last time, when
        // it beats both the threshold and the block tokens.
        if let Some(hist) = self.history.as_mut() {
            if let Some(prev) = hist.pages.get(&page_no) {
                let limit = self
                    .cfg
                    .delta_threshold
                    .min(best_len.saturating_sub(DELTA_BASE_LEN + 1));
                if limit > 0 && delta::encode(prev, page, limit, &mut self.delta_buf)? {
                    self.body.clear();
                    self.body.extend_from_slice(&xxh3_64(prev).to_le_bytes());
                    self.body.extend_from_slice(&self.delta_buf);
                    best_kind = KIND_DELTA;
                }
            }
            hist.remember(page_no, page);
        }
        if best_kind == KIND_RAW {
            self.body.clear();
            self.body.extend_from_slice(page);
        }
        match best_kind {
            KIND_BLOCKS => {
                outcome.kind = FrameKind::Blocks;
                outcome.saved_by_cache = (ps - self.body.len()) as u64;
            }
            KIND_DELTA => {
                outcome.kind = FrameKind::Delta;
                outcome.saved_by_delta = (ps - self.body.len()) as u64;
            }
            _ => {}
        }
        out.clear();
        out.push(best_kind);
        out.extend_from_slice(&self.generation.to_le_bytes());
        let mut compressed = false;
        if let Some(z) = self.zstd.as_mut() {
            // Tiny bodies (a cache hit, a few-byte delta) never shrink.
            if self.body.len() > 64 {
                let c = z.compress(&self.body).map_err(CodecError::Zstd)?;
                if c.len() < self.body.len() {
                    outcome.saved_by_zstd = (self.body.len() - c.len()) as u64;
                    out.extend_from_slice(&c);
                    compressed = true;
                }
            }
        }
        if compressed {
            out[0] |= ZSTD_FLAG;
        } else {
            out.extend_from_slice(&self.body);
        }
        outcome.frame_len = out.len();
        Ok(outcome)
    }
}

/// Receiving end of the page codec.
pub struct PageDecoder {
    cfg: CodecConfig,
    generation: u32,
    cache: Option<BlockCache>,
    /// Mirror of the encoder's page history, for a receiver that holds no
    /// guest memory (the live agent): same capacity, same update rule.
    history: Option<PageHistory>,
    keyed: bool,
    zstd: zstd::bulk::Decompressor<'static>,
    poisoned: bool,
    body: Vec<u8>,
    scratch: Vec<u8>,
}

impl PageDecoder {
    pub fn new(cfg: CodecConfig, generation: u32) -> Result<Self, CodecError> {
        cfg.validate()?;
        let mut d = PageDecoder {
            cfg,
            generation,
            cache: None,
            history: None,
            keyed: false,
            zstd: zstd::bulk::Decompressor::new().map_err(CodecError::Zstd)?,
            poisoned: false,
            body: Vec::new(),
            scratch: Vec::new(),
        };
        d.reset(generation);
        Ok(d)
    }

    /// A decoder that keeps its own copy of the last version of every page
    /// (bounded exactly like the encoder's history), for [`decode_keyed`].
    ///
    /// [`decode_keyed`]: PageDecoder::decode_keyed
    pub fn new_keyed(cfg: CodecConfig, generation: u32) -> Result<Self, CodecError> {
        let mut d = PageDecoder::new(cfg, generation)?;
        d.keyed = true;
        d.reset(generation);
        Ok(d)
    }

    /// Rebuild page `page_no` from `frame` against this decoder's own page
    /// history, and remember the result as the encoder does. A delta for a
    /// page the history does not hold is refused (never decoded against
    /// zeros). Same poisoning as [`decode`](PageDecoder::decode).
    pub fn decode_keyed(&mut self, page_no: u64, frame: &[u8]) -> Result<&[u8], CodecError> {
        if self.poisoned {
            return Err(CodecError::Poisoned);
        }
        if !self.keyed {
            return Err(CodecError::Config("decoder was not built keyed".into()));
        }
        let ps = self.cfg.page_size;
        let mut page = std::mem::take(&mut self.scratch);
        page.clear();
        let is_delta = frame.first().is_some_and(|k| k & !ZSTD_FLAG == KIND_DELTA);
        match self.history.as_ref().and_then(|h| h.pages.get(&page_no)) {
            Some(prev) => page.extend_from_slice(prev),
            None if is_delta => {
                self.poisoned = true;
                self.scratch = page;
                return Err(CodecError::DeltaBaseMissing(page_no));
            }
            None => page.resize(ps, 0),
        }
        let r = self.decode_inner(frame, &mut page);
        if r.is_err() {
            self.poisoned = true;
        } else if let Some(h) = self.history.as_mut() {
            h.remember(page_no, &page);
        }
        self.scratch = page;
        r.map(|_| &self.scratch[..])
    }

    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Start over with an empty cache at `generation` (after a reconnect).
    pub fn reset(&mut self, generation: u32) {
        self.generation = generation;
        self.poisoned = false;
        self.cache = self.cfg.cbr.then(|| {
            BlockCache::new(
                self.cfg.block_size(),
                self.cfg.cache_bytes / self.cfg.block_size(),
            )
        });
        self.history = (self.keyed && self.cfg.delta)
            .then(|| PageHistory::new(self.cfg.delta_history_bytes / self.cfg.page_size));
    }

    /// Rebuild a page from `frame` into `page`, which holds this end's
    /// current copy of the page (the base of a delta). On any error the
    /// decoder refuses further frames until `reset`.
    pub fn decode(&mut self, frame: &[u8], page: &mut [u8]) -> Result<FrameKind, CodecError> {
        if self.poisoned {
            return Err(CodecError::Poisoned);
        }
        let r = self.decode_inner(frame, page);
        if r.is_err() {
            self.poisoned = true;
        }
        r
    }

    fn decode_inner(&mut self, frame: &[u8], page: &mut [u8]) -> Result<FrameKind, CodecError> {
        let ps = self.cfg.page_size;
        if page.len() != ps {
            return Err(CodecError::PageSize {
                got: page.len(),
                want: ps,
            });
        }
        if frame.len() < HEADER_LEN {
            return Err(CodecError::Malformed(format!(
                "{} bytes is shorter than a header",
                frame.len()
            )));
        }
        let gen = u32::from_le_bytes([frame[1], frame[2], frame[3], frame[4]]);
        if gen != self.generation {
            return Err(CodecError::GenerationMismatch {
                frame: gen,
                ours: self.generation,
            });
        }
        let mut body = std::mem::take(&mut self.body);
        let raw_body: &[u8] = if frame[0] & ZSTD_FLAG != 0 {
            body = self
                .zstd
                .decompress(&frame[HEADER_LEN..], self.cfg.max_body())
                .map_err(|e| CodecError::Malformed(format!("zstd body: {e}")))?;
            &body
        } else {
            &frame[HEADER_LEN..]
        };
        let r = match frame[0] & !ZSTD_FLAG {
            KIND_RAW => {
                if raw_body.len() != ps {
                    Err(CodecError::Malformed(format!(
                        "raw body of {} bytes",
                        raw_body.len()
                    )))
                } else {
                    page.copy_from_slice(raw_body);
                    self.admit_page(page);
                    Ok(FrameKind::Raw)
                }
            }
            KIND_BLOCKS => self
                .decode_blocks(raw_body, page)
                .map(|()| FrameKind::Blocks),
            KIND_DELTA => self.decode_delta(raw_body, page).map(|()| FrameKind::Delta),
            k => Err(CodecError::Malformed(format!("unknown frame kind {k}"))),
        };
        self.body = body;
        r
    }

    fn decode_blocks(&mut self, body: &[u8], page: &mut [u8]) -> Result<(), CodecError> {
        let cache = self
            .cache
            .as_mut()
            .ok_or(CodecError::Disabled("the block cache"))?;
        let bs = cache.block;
        let mut at = 0usize;
        for dst in page.chunks_exact_mut(bs) {
            match body.get(at) {
                Some(&TAG_HIT) => {
                    let s = body
                        .get(at + 1..at + HIT_LEN)
                        .ok_or_else(|| CodecError::Malformed("cache index truncated".into()))?;
                    let slot = u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
                    let src = cache
                        .slot(slot as usize)
                        .ok_or(CodecError::UnknownSlot(slot))?;
                    dst.copy_from_slice(src);
                    at += HIT_LEN;
                }
                Some(&TAG_LITERAL) => {
                    let src = body
                        .get(at + 1..at + 1 + bs)
                        .ok_or_else(|| CodecError::Malformed("literal block truncated".into()))?;
                    dst.copy_from_slice(src);
                    at += 1 + bs;
                }
                _ => {
                    return Err(CodecError::Malformed(format!(
                        "bad block tag at body byte {at}"
                    )))
                }
            }
            // Same admission as the encoder's, block by block, so a later
            // block of this page may hit an earlier one.
            cache.admit(dst);
        }
        if at != body.len() {
            return Err(CodecError::Malformed(
                "trailing bytes after the last block".into(),
            ));
        }
        Ok(())
    }

    fn decode_delta(&mut self, body: &[u8], page: &mut [u8]) -> Result<(), CodecError> {
        if !self.cfg.delta {
            return Err(CodecError::Disabled("page deltas"));
        }
        let base = body
            .get(..DELTA_BASE_LEN)
            .ok_or_else(|| CodecError::Malformed("delta base hash truncated".into()))?;
        let want = u64::from_le_bytes(base.try_into().unwrap_or([0; 8]));
        if xxh3_64(page) != want {
            return Err(CodecError::DeltaBaseMismatch);
        }
        delta::apply(page, &body[DELTA_BASE_LEN..])?;
        self.admit_page(page);
        Ok(())
    }

    fn admit_page(&mut self, page: &[u8]) {
        if let Some(cache) = self.cache.as_mut() {
            for blk in page.chunks_exact(cache.block) {
                cache.admit(blk);
            }
        }
    }
}

#[cfg(test)]
mod tests;
