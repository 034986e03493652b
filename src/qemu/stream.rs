//! Tokenizer for QEMU's migration stream (`QEVM`, version 3).
//!
//! It splits the stream into literal runs and 4 KiB RAM page payloads, so
//! the sender can replace pages by their hash. Everything else (headers,
//! section framing, zero-page records, device state) stays literal.
//!
//! WHY this is always safe: concatenating the tokens gives back the input
//! byte for byte, whatever the parser believed. A mis-parse can only cost
//! deduplication, never correctness. So on anything it does not fully
//! understand (device sections, XBZRLE, unknown flags, postcopy commands,
//! an unexpected configuration layout) it stops parsing and hands the rest
//! of the stream through as literals.
//!
//! Layout (QEMU migration/savevm.c, migration/ram.c):
//! `be32 'QEVM'`, `be32 3`, `0x07 be32 len machine-name`, then sections.
//! `START/FULL`: `type be32 id u8 len idstr be32 instance be32 version`;
//! `PART/END`: `type be32 id`; after the data a footer `0x7e be32 id`.
//! RAM setup data: `be64 total|MEM_SIZE`, per block `u8 len idstr be64 len`,
//! `be64 EOS`. RAM iteration data: `be64 addr|flags` records, with the
//! block name unless CONTINUE, then 1 byte for ZERO or a page for PAGE.

use bytes::{Bytes, BytesMut};

/// Target page size of x86 guests (TARGET_PAGE_SIZE).
pub const PAGE_SIZE: usize = 4096;

const MAGIC: u32 = 0x5145_564d;
const VERSION: u32 = 3;

const SECTION_START: u8 = 0x01;
const SECTION_PART: u8 = 0x02;
const SECTION_END: u8 = 0x03;
const SECTION_CONFIGURATION: u8 = 0x07;
const SECTION_COMMAND: u8 = 0x08;
/// MIG_CMD_SWITCHOVER_START: sent before the stop-and-copy phase.
const CMD_SWITCHOVER_START: u16 = 11;
const CMD_POSTCOPY_ADVISE: u16 = 3;
const SECTION_FOOTER: u8 = 0x7e;

const FLAG_ZERO: u64 = 0x02;
const FLAG_MEM_SIZE: u64 = 0x04;
const FLAG_PAGE: u64 = 0x08;
const FLAG_EOS: u64 = 0x10;
const FLAG_CONTINUE: u64 = 0x20;
const FLAG_MULTIFD_FLUSH: u64 = 0x200;
/// The low bits of a record carry flags (addresses are page aligned).
const FLAG_MASK: u64 = (PAGE_SIZE as u64) - 1;
const KNOWN_RECORD_FLAGS: u64 = FLAG_ZERO | FLAG_PAGE | FLAG_CONTINUE;

/// Longest machine name we accept in the configuration section; longer
/// means we misread the layout.
const MAX_MACHINE_NAME: usize = 256;

/// One piece of the stream, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    /// Bytes to copy as they are.
    Literal(Bytes),
    /// The payload of one RAM page record (exactly [`PAGE_SIZE`] bytes).
    Page(Bytes),
}

/// What the tokenizer saw.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct StreamStats {
    pub bytes: u64,
    pub pages: u64,
    pub zero_pages: u64,
    /// Stream offset from which bytes were passed through unparsed.
    pub passthrough_from: Option<u64>,
    /// Why parsing stopped there.
    pub passthrough_reason: Option<String>,
    /// A setup the agents refuse (postcopy, return path): set when seen.
    pub unsupported: Option<String>,
    /// Stream offset where the stop-and-copy phase begins: QEMU's
    /// switchover command or the RAM section's END header, whichever comes
    /// first. QEMU writes either only after it stopped the guest, so the
    /// migration agents read it as the guest's STOP.
    pub switchover_at: Option<u64>,
    /// Pages after `switchover_at`: what QEMU sent with the guest stopped.
    pub pages_after_switchover: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Header,
    Configuration,
    Section,
    RamSetupHeader { section: u32 },
    RamSetupBlocks { section: u32, remaining: u64 },
    RamSetupTail { section: u32 },
    RamRecords { section: u32 },
    Footer { section: u32 },
    Passthrough,
}

/// Incremental tokenizer: feed bytes as they arrive, collect tokens.
pub struct Tokenizer {
    buf: BytesMut,
    literal: BytesMut,
    state: State,
    /// Stream offset of `buf[0]`.
    offset: u64,
    ram_section: Option<u32>,
    stats: StreamStats,
    /// Hash of the RAM block named by the last record without CONTINUE.
    block_hash: u64,
    /// Key of the page whose record `step` just parsed.
    pending_key: u64,
    /// One key per `Token::Page` emitted and not yet taken.
    page_keys: Vec<u64>,
}

impl Default for Tokenizer {
    fn default() -> Self {
        Self::new()
    }
}

/// Outcome of one parse step.
enum Step {
    /// Consumed `n` bytes as literal; keep going.
    Literal(usize),
    /// `header` literal bytes, then a page payload.
    Page {
        header: usize,
    },
    NeedMore,
    /// Stop parsing: the rest is passed through.
    Unknown(String),
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

impl Tokenizer {
    pub fn new() -> Tokenizer {
        Tokenizer {
            buf: BytesMut::with_capacity(1 << 20),
            literal: BytesMut::new(),
            state: State::Header,
            offset: 0,
            ram_section: None,
            stats: StreamStats::default(),
            block_hash: 0,
            pending_key: 0,
            page_keys: Vec::new(),
        }
    }

    /// Take the keys of the pages emitted since the last call, one per
    /// `Token::Page` in order. A key names a guest page (RAM block and
    /// offset), so a page QEMU resends in a later round has the same key
    /// (the page-delta history is indexed by it).
    pub fn take_page_keys(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.page_keys)
    }

    pub fn stats(&self) -> &StreamStats {
        &self.stats
    }

    /// Add input and push every token it completes to `out`.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<Token>) {
        self.stats.bytes += data.len() as u64;
        self.buf.extend_from_slice(data);
        self.run(out);
    }

    /// End of input: whatever is left (an incomplete record) is literal.
    pub fn finish(&mut self, out: &mut Vec<Token>) {
        self.run(out);
        if !self.buf.is_empty() {
            let rest = self.buf.split();
            self.offset += rest.len() as u64;
            self.literal.extend_from_slice(&rest);
        }
        self.flush_literal(out);
    }

    /// Emit the pending literal run (call when the input pauses, so bytes
    /// are not held back while QEMU waits for nothing).
    pub fn flush_literal(&mut self, out: &mut Vec<Token>) {
        if !self.literal.is_empty() {
            out.push(Token::Literal(self.literal.split().freeze()));
        }
    }

    fn run(&mut self, out: &mut Vec<Token>) {
        loop {
            match self.step() {
                Step::Literal(n) => self.take_literal(n),
                Step::Page { header } => {
                    self.take_literal(header);
                    self.flush_literal(out);
                    let page = self.buf.split_to(PAGE_SIZE).freeze();
                    self.offset += PAGE_SIZE as u64;
                    self.stats.pages += 1;
                    if self.stats.switchover_at.is_some() {
                        self.stats.pages_after_switchover += 1;
                    }
                    self.page_keys.push(self.pending_key);
                    out.push(Token::Page(page));
                }
                Step::NeedMore => return,
                Step::Unknown(why) => {
                    tracing::debug!(
                        "migration stream: passing through from {}: {why}",
                        self.offset
                    );
                    self.stats.passthrough_from = Some(self.offset);
                    self.stats.passthrough_reason = Some(why);
                    self.state = State::Passthrough;
                }
            }
        }
    }

    fn take_literal(&mut self, n: usize) {
        let b = self.buf.split_to(n);
        self.literal.extend_from_slice(&b);
        self.offset += n as u64;
    }

    fn step(&mut self) -> Step {
        let b = &self.buf[..];
        match self.state {
            State::Passthrough => {
                if b.is_empty() {
                    Step::NeedMore
                } else {
                    Step::Literal(b.len())
                }
            }
            State::Header => {
                if b.len() < 8 {
                    return Step::NeedMore;
                }
                if be32(b) != MAGIC {
                    return Step::Unknown("not a QEVM stream".into());
                }
                if be32(&b[4..]) != VERSION {
                    return Step::Unknown(format!("QEVM version {}", be32(&b[4..])));
                }
                self.state = State::Configuration;
                Step::Literal(8)
            }
            State::Configuration => {
                if b.is_empty() {
                    return Step::NeedMore;
                }
                if b[0] != SECTION_CONFIGURATION {
                    self.state = State::Section;
                    return Step::Literal(0);
                }
                if b.len() < 5 {
                    return Step::NeedMore;
                }
                let len = be32(&b[1..]) as usize;
                if len > MAX_MACHINE_NAME {
                    return Step::Unknown(format!("configuration name of {len} bytes"));
                }
                if b.len() < 5 + len {
                    return Step::NeedMore;
                }
                // Newer configurations may carry subsections (0x05): those
                // are not self-delimiting, so `Section` passes them through.
                self.state = State::Section;
                Step::Literal(5 + len)
            }
            State::Section => self.section(),
            State::RamSetupHeader { section } => {
                if b.len() < 8 {
                    return Step::NeedMore;
                }
                let v = be64(b);
                if v & FLAG_MASK != FLAG_MEM_SIZE {
                    return Step::Unknown(format!(
                        "RAM setup starts with flags {:#x}",
                        v & FLAG_MASK
                    ));
                }
                self.state = State::RamSetupBlocks {
                    section,
                    remaining: v & !FLAG_MASK,
                };
                Step::Literal(8)
            }
            State::RamSetupBlocks { section, remaining } => {
                if remaining == 0 {
                    self.state = State::RamSetupTail { section };
                    return Step::Literal(0);
                }
                if b.is_empty() {
                    return Step::NeedMore;
                }
                let n = b[0] as usize;
                if b.len() < 1 + n + 8 {
                    return Step::NeedMore;
                }
                if n == 0 || !b[1..1 + n].iter().all(u8::is_ascii_graphic) {
                    return Step::Unknown("RAM block name is not printable".into());
                }
                let len = be64(&b[1 + n..]);
                if len > remaining {
                    // Extra per-block fields (postcopy page sizes,
                    // ignore-shared addresses) shift the layout.
                    return Step::Unknown("RAM block list does not add up".into());
                }
                self.state = State::RamSetupBlocks {
                    section,
                    remaining: remaining - len,
                };
                Step::Literal(1 + n + 8)
            }
            State::RamSetupTail { section } => {
                if b.len() < 8 {
                    return Step::NeedMore;
                }
                match be64(b) {
                    FLAG_EOS => {
                        self.state = State::Footer { section };
                        Step::Literal(8)
                    }
                    FLAG_MULTIFD_FLUSH => Step::Literal(8),
                    v => Step::Unknown(format!("RAM setup record {v:#x}")),
                }
            }
            State::RamRecords { section } => self.ram_record(section),
            State::Footer { section } => {
                if b.is_empty() {
                    return Step::NeedMore;
                }
                if b[0] != SECTION_FOOTER {
                    self.state = State::Section;
                    return Step::Literal(0);
                }
                if b.len() < 5 {
                    return Step::NeedMore;
                }
                if be32(&b[1..]) != section {
                    return Step::Unknown("section footer names another section".into());
                }
                self.state = State::Section;
                Step::Literal(5)
            }
        }
    }

    fn section(&mut self) -> Step {
        let b = &self.buf[..];
        if b.is_empty() {
            return Step::NeedMore;
        }
        match b[0] {
            SECTION_START => {
                if b.len() < 6 {
                    return Step::NeedMore;
                }
                let id = be32(&b[1..]);
                let n = b[5] as usize;
                let len = 6 + n + 8;
                if b.len() < len {
                    return Step::NeedMore;
                }
                if &b[6..6 + n] != b"ram" || self.ram_section.is_some() {
                    return Step::Unknown(format!(
                        "section {:?}",
                        String::from_utf8_lossy(&b[6..6 + n])
                    ));
                }
                let version = be32(&b[6 + n + 4..]);
                if version != 4 {
                    return Step::Unknown(format!("RAM section version {version}"));
                }
                self.ram_section = Some(id);
                self.state = State::RamSetupHeader { section: id };
                Step::Literal(len)
            }
            SECTION_PART | SECTION_END => {
                if b.len() < 5 {
                    return Step::NeedMore;
                }
                let id = be32(&b[1..]);
                if Some(id) != self.ram_section {
                    return Step::Unknown(format!("section {id} is not RAM"));
                }
                if b[0] == SECTION_END && self.stats.switchover_at.is_none() {
                    self.stats.switchover_at = Some(self.offset);
                }
                self.state = State::RamRecords { section: id };
                Step::Literal(5)
            }
            SECTION_COMMAND => {
                // `0x08 be16 command be16 length data`: self-delimiting.
                if b.len() < 5 {
                    return Step::NeedMore;
                }
                let cmd = u16::from_be_bytes([b[1], b[2]]);
                let len = u16::from_be_bytes([b[3], b[4]]) as usize;
                match cmd {
                    // POSTCOPY_ADVISE only announces that postcopy may
                    // follow; the stream stays precopy until LISTEN/RUN.
                    CMD_SWITCHOVER_START | CMD_POSTCOPY_ADVISE => {
                        if b.len() < 5 + len {
                            return Step::NeedMore;
                        }
                        if cmd == CMD_SWITCHOVER_START && self.stats.switchover_at.is_none() {
                            self.stats.switchover_at = Some(self.offset);
                        }
                        Step::Literal(5 + len)
                    }
                    // Return path and postcopy need a channel back to the
                    // source QEMU, which `exec:` agents do not provide.
                    4..=10 => {
                        self.stats.unsupported = Some(format!(
                            "QEMU sent migration command {cmd} (postcopy or COLO); \
                             strato migrate supports precopy only: disable postcopy-ram"
                        ));
                        Step::Unknown(format!("command {cmd}"))
                    }
                    _ => Step::Unknown(format!("command {cmd}")),
                }
            }
            // Device state, EOF, subsections...:
            // nothing more to deduplicate that we can delimit safely.
            t => Step::Unknown(format!("section type {t:#04x}")),
        }
    }

    fn ram_record(&mut self, section: u32) -> Step {
        let b = &self.buf[..];
        if b.len() < 8 {
            return Step::NeedMore;
        }
        let flags = be64(b) & FLAG_MASK;
        if flags == FLAG_EOS {
            self.state = State::Footer { section };
            return Step::Literal(8);
        }
        if flags == FLAG_MULTIFD_FLUSH {
            return Step::Literal(8);
        }
        if flags & !KNOWN_RECORD_FLAGS != 0 {
            return Step::Unknown(format!("RAM record flags {flags:#x}"));
        }
        let zero = flags & FLAG_ZERO != 0;
        let page = flags & FLAG_PAGE != 0;
        if zero == page {
            return Step::Unknown(format!("RAM record flags {flags:#x}"));
        }
        let mut header = 8;
        if flags & FLAG_CONTINUE == 0 {
            if b.len() < 9 {
                return Step::NeedMore;
            }
            header += 1 + b[8] as usize;
            if b.len() < header {
                return Step::NeedMore;
            }
            self.block_hash = xxhash_rust::xxh3::xxh3_64(&b[9..header]);
        }
        if zero {
            if b.len() < header + 1 {
                return Step::NeedMore;
            }
            self.stats.zero_pages += 1;
            return Step::Literal(header + 1);
        }
        if b.len() < header + PAGE_SIZE {
            return Step::NeedMore;
        }
        // Block hash in the high bits, page number (blocks are < 2^40
        // pages) in the low ones: unique per guest page in practice; a
        // collision would only cost delta opportunities, never bytes.
        let addr = be64(b) & !FLAG_MASK;
        self.pending_key = (self.block_hash << 40) ^ (addr / PAGE_SIZE as u64);
        Step::Page { header }
    }
}

/// Tokenize a whole stream at once (tests, captures).
pub fn tokenize(data: &[u8]) -> (Vec<Token>, StreamStats) {
    let mut t = Tokenizer::new();
    let mut out = Vec::new();
    t.feed(data, &mut out);
    t.finish(&mut out);
    (out, t.stats().clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rebuild(tokens: &[Token]) -> Vec<u8> {
        let mut v = Vec::new();
        for t in tokens {
            match t {
                Token::Literal(b) | Token::Page(b) => v.extend_from_slice(b),
            }
        }
        v
    }

    /// A small stream in the layout QEMU 10 writes for `-M pc`.
    pub(crate) fn synthetic(pages: &[u8]) -> Vec<u8> {
        let mut s = Vec::new();
        s.extend_from_slice(&MAGIC.to_be_bytes());
        s.extend_from_slice(&VERSION.to_be_bytes());
        s.push(SECTION_CONFIGURATION);
        s.extend_from_slice(&4u32.to_be_bytes());
        s.extend_from_slice(b"pc-x");
        s.push(SECTION_START);
        s.extend_from_slice(&2u32.to_be_bytes());
        s.push(3);
        s.extend_from_slice(b"ram");
        s.extend_from_slice(&0u32.to_be_bytes());
        s.extend_from_slice(&4u32.to_be_bytes());
        let total = (pages.len() * PAGE_SIZE) as u64;
        s.extend_from_slice(&(total | FLAG_MEM_SIZE).to_be_bytes());
        s.push(6);
        s.extend_from_slice(b"pc.ram");
        s.extend_from_slice(&total.to_be_bytes());
        s.extend_from_slice(&FLAG_EOS.to_be_bytes());
        s.push(SECTION_FOOTER);
        s.extend_from_slice(&2u32.to_be_bytes());
        s.push(SECTION_END);
        s.extend_from_slice(&2u32.to_be_bytes());
        for (i, &fill) in pages.iter().enumerate() {
            let addr = (i * PAGE_SIZE) as u64;
            let cont = if i == 0 { 0 } else { FLAG_CONTINUE };
            let flag = if fill == 0 { FLAG_ZERO } else { FLAG_PAGE };
            s.extend_from_slice(&(addr | flag | cont).to_be_bytes());
            if i == 0 {
                s.push(6);
                s.extend_from_slice(b"pc.ram");
            }
            if fill == 0 {
                s.push(0);
            } else {
                s.extend(std::iter::repeat_n(fill, PAGE_SIZE));
            }
        }
        s.extend_from_slice(&FLAG_EOS.to_be_bytes());
        s.push(SECTION_FOOTER);
        s.extend_from_slice(&2u32.to_be_bytes());
        // A device section: passed through.
        s.push(0x04);
        s.extend_from_slice(b"\0\0\0\x03\x03cpu\0\0\0\0\0\0\0\x01somestate");
        s.push(0x00);
        s
    }

    #[test]
    fn synthetic_stream_yields_its_pages_and_rebuilds() {
        let s = synthetic(&[1, 0, 2, 2, 0, 3]);
        let (tokens, stats) = tokenize(&s);
        assert_eq!(rebuild(&tokens), s);
        assert_eq!(stats.pages, 4);
        assert_eq!(stats.zero_pages, 2);
        let pages: Vec<u8> = tokens
            .iter()
            .filter_map(|t| match t {
                Token::Page(p) => {
                    assert_eq!(p.len(), PAGE_SIZE);
                    Some(p[0])
                }
                _ => None,
            })
            .collect();
        assert_eq!(pages, vec![1, 2, 2, 3]);
        // The RAM section's END header: where QEMU's stop-and-copy begins.
        let end = s
            .windows(5)
            .position(|w| w == [SECTION_END, 0, 0, 0, 2])
            .unwrap();
        assert_eq!(stats.switchover_at, Some(end as u64));
        assert_eq!(stats.pages_after_switchover, 4);
        assert!(stats
            .passthrough_reason
            .as_deref()
            .is_some_and(|r| r.contains("0x04")));
    }

    #[test]
    fn unknown_flags_pass_the_rest_through() {
        let mut s = synthetic(&[1, 2]);
        // Turn the first page record into XBZRLE (0x40).
        let at = s.windows(6).position(|w| w == b"pc.ram").unwrap();
        let at = s[at + 6..].windows(6).position(|w| w == b"pc.ram").unwrap() + at + 6 - 9;
        s[at + 7] = 0x40;
        let (tokens, stats) = tokenize(&s);
        assert_eq!(rebuild(&tokens), s);
        assert_eq!(stats.pages, 0);
        assert!(stats.passthrough_reason.unwrap().contains("0x40"));
    }

    #[test]
    fn postcopy_commands_are_flagged_unsupported_and_advise_is_not() {
        let base = synthetic(&[1]);
        // Insert a command section right after the configuration section.
        let at = 8 + 1 + 4 + 4;
        for (cmd, bad) in [(3u16, false), (11, false), (5, true)] {
            let mut s = base[..at].to_vec();
            s.push(SECTION_COMMAND);
            s.extend_from_slice(&cmd.to_be_bytes());
            s.extend_from_slice(&2u16.to_be_bytes());
            s.extend_from_slice(b"xy");
            s.extend_from_slice(&base[at..]);
            let (tokens, stats) = tokenize(&s);
            assert_eq!(rebuild(&tokens), s);
            assert_eq!(stats.unsupported.is_some(), bad, "command {cmd}");
            assert_eq!(stats.pages, if bad { 0 } else { 1 }, "command {cmd}");
        }
    }

    #[test]
    fn not_qevm_is_passed_through() {
        let s = b"hello world, not a migration stream".to_vec();
        let (tokens, stats) = tokenize(&s);
        assert_eq!(rebuild(&tokens), s);
        assert_eq!(stats.passthrough_from, Some(0));
    }

    proptest! {
        /// Any split of the input into reads gives the same tokens' bytes.
        #[test]
        fn any_feeding_rebuilds(fills in proptest::collection::vec(0u8..4, 0..12),
                                cuts in proptest::collection::vec(1usize..5000, 1..20),
                                garbage in proptest::collection::vec(any::<u8>(), 0..64),
                                flip in any::<usize>()) {
            let mut s = synthetic(&fills);
            // Also corrupt one byte somewhere: still byte-identical.
            if !garbage.is_empty() {
                let i = flip % s.len();
                s[i] ^= garbage[0];
                s.extend_from_slice(&garbage);
            }
            let mut t = Tokenizer::new();
            let mut out = Vec::new();
            let mut rest = &s[..];
            for c in cuts.iter().cycle().take(10_000) {
                if rest.is_empty() { break; }
                let n = (*c).min(rest.len());
                t.feed(&rest[..n], &mut out);
                rest = &rest[n..];
            }
            t.feed(rest, &mut out);
            t.finish(&mut out);
            prop_assert_eq!(rebuild(&out), s);
        }
    }
}
