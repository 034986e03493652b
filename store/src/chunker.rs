//! Chunking profiles: where an object's byte stream is cut into chunks.
//!
//! * `block:AVG` — content-defined cuts restricted to 4 KiB block edges, for
//!   disk and memory images. Guest filesystems keep file data in aligned 4 KiB
//!   blocks, so content that moves between image versions (or between a raw
//!   image and its qcow2 form, whose clusters are 64 KiB-aligned) moves by
//!   whole blocks and still deduplicates. All-zero blocks are never stored.
//! * `cdc:MIN:AVG:MAX` — FastCDC v2020 for general data.
//! * `fixed:SIZE` — fixed-size chunks (e.g. 4 KiB pages); all-zero chunks are
//!   not stored.
//!
//! `auto` sniffs the first 64 KiB and picks `block` for anything that looks
//! like a disk or memory image, `cdc` otherwise.

use std::fmt;
use std::str::FromStr;

use bytes::{Buf, Bytes, BytesMut};
use xxhash_rust::xxh3::xxh3_64;

pub const BLOCK: usize = 4096;
/// Default average for image chunks. The profile benchmark (benches/) stores
/// two image versions in raw and qcow2 form: 16 KiB keeps dedup close to fixed
/// 4 KiB blocks with a quarter of the chunks; 64 KiB costs ~10 % more space.
pub const DEFAULT_BLOCK_AVG: u32 = 16 << 10;
pub const DEFAULT_CDC: (u32, u32, u32) = (16 << 10, 64 << 10, 256 << 10);
const SNIFF_LEN: usize = 64 << 10;
static ZERO_BLOCK: [u8; BLOCK] = [0; BLOCK];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Block { avg: u32 },
    Cdc { min: u32, avg: u32, max: u32 },
    Fixed { size: u32 },
}

/// What the caller asked for; `Auto` resolves to a [`Profile`] from content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProfileChoice {
    #[default]
    Auto,
    Exact(Profile),
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Profile::Block { avg } => write!(f, "block:{avg}"),
            Profile::Cdc { min, avg, max } => write!(f, "cdc:{min}:{avg}:{max}"),
            Profile::Fixed { size } => write!(f, "fixed:{size}"),
        }
    }
}

impl fmt::Display for ProfileChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProfileChoice::Auto => f.write_str("auto"),
            ProfileChoice::Exact(p) => p.fmt(f),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid chunking {0:?}: use auto, block[:AVG], cdc[:MIN:AVG:MAX] or fixed:SIZE (sizes in bytes, powers of two; block AVG 8 KiB..1 MiB, fixed 512 B..16 MiB)")]
pub struct ParseProfileError(pub String);

fn parse_size(s: &str) -> Option<u32> {
    let s = s.trim();
    let (num, mul) = if let Some(n) = s.strip_suffix(['K', 'k']) {
        (n, 1024)
    } else if let Some(n) = s.strip_suffix(['M', 'm']) {
        (n, 1024 * 1024)
    } else {
        (s, 1)
    };
    num.parse::<u32>().ok()?.checked_mul(mul)
}

impl FromStr for ProfileChoice {
    type Err = ParseProfileError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseProfileError(s.to_string());
        let mut parts = s.split(':');
        let kind = parts.next().unwrap_or_default();
        let nums: Vec<u32> = parts
            .map(parse_size)
            .collect::<Option<_>>()
            .ok_or_else(bad)?;
        let p = match (kind, nums.as_slice()) {
            ("auto", []) => return Ok(ProfileChoice::Auto),
            ("block", []) => Profile::Block {
                avg: DEFAULT_BLOCK_AVG,
            },
            ("block", [avg]) => Profile::Block { avg: *avg },
            ("cdc", []) => Profile::Cdc {
                min: DEFAULT_CDC.0,
                avg: DEFAULT_CDC.1,
                max: DEFAULT_CDC.2,
            },
            ("cdc", [min, avg, max]) => Profile::Cdc {
                min: *min,
                avg: *avg,
                max: *max,
            },
            ("fixed", [size]) => Profile::Fixed { size: *size },
            _ => return Err(bad()),
        };
        let ok = match p {
            Profile::Block { avg } => avg.is_power_of_two() && (8 << 10..=1 << 20).contains(&avg),
            Profile::Cdc { min, avg, max } => {
                // fastcdc's own limits
                (64..=1 << 20).contains(&min)
                    && (256..=4 << 20).contains(&avg)
                    && (1024..=16 << 20).contains(&max)
                    && min <= avg
                    && avg <= max
            }
            Profile::Fixed { size } => size.is_power_of_two() && (512..=16 << 20).contains(&size),
        };
        if ok {
            Ok(ProfileChoice::Exact(p))
        } else {
            Err(bad())
        }
    }
}

impl FromStr for Profile {
    type Err = ParseProfileError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.parse::<ProfileChoice>()? {
            ProfileChoice::Exact(p) => Ok(p),
            ProfileChoice::Auto => Err(ParseProfileError(s.into())),
        }
    }
}

/// Does the start of a stream look like a disk or memory image?
pub fn looks_like_image(head: &[u8]) -> bool {
    let at = |off: usize, magic: &[u8]| head.get(off..off + magic.len()) == Some(magic);
    at(0, b"QFI\xfb") // qcow2
        || at(0, b"QEVM") // QEMU migration stream / mapped-ram file
        || at(0, b"KDMV") // vmdk
        || at(0, b"vhdxfile")
        || at(510, &[0x55, 0xAA]) // MBR / boot sector
        || at(1080, &[0x53, 0xEF]) // ext2/3/4 superblock
        || at(32769, b"CD001") // ISO 9660
        // raw images are full of aligned zero blocks; ordinary files rarely are
        || head.chunks_exact(BLOCK).any(|b| b == ZERO_BLOCK)
}

pub fn resolve(choice: ProfileChoice, head: &[u8]) -> Profile {
    match choice {
        ProfileChoice::Exact(p) => p,
        ProfileChoice::Auto if looks_like_image(head) => Profile::Block {
            avg: DEFAULT_BLOCK_AVG,
        },
        ProfileChoice::Auto => Profile::Cdc {
            min: DEFAULT_CDC.0,
            avg: DEFAULT_CDC.1,
            max: DEFAULT_CDC.2,
        },
    }
}

/// One cut of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Data(Bytes),
    Zeros(u64),
}

enum State {
    /// `auto` still collecting its first bytes.
    Sniffing(ProfileChoice),
    Ready(Profile),
}

/// A streaming chunker: feed bytes, collect pieces in stream order.
pub struct Chunker {
    state: State,
    buf: BytesMut,
    /// Bytes at the front of `buf` already assigned to the current chunk
    /// (block-based profiles only; always whole blocks).
    chunk_len: usize,
    pending_zeros: u64,
}

impl Chunker {
    pub fn new(choice: ProfileChoice) -> Chunker {
        let state = match choice {
            ProfileChoice::Exact(p) => State::Ready(p),
            auto => State::Sniffing(auto),
        };
        Chunker {
            state,
            buf: BytesMut::with_capacity(1 << 20),
            chunk_len: 0,
            pending_zeros: 0,
        }
    }

    /// The profile in use, once decided.
    pub fn profile(&self) -> Option<Profile> {
        match self.state {
            State::Ready(p) => Some(p),
            State::Sniffing(_) => None,
        }
    }

    pub fn feed(&mut self, data: &[u8], out: &mut Vec<Piece>) {
        self.buf.extend_from_slice(data);
        self.run(false, out);
    }

    /// End of stream: emit everything left. Returns the profile used.
    pub fn finish(&mut self, out: &mut Vec<Piece>) -> Profile {
        self.run(true, out);
        match self.state {
            State::Ready(p) => p,
            // run(eof = true) always decides
            State::Sniffing(_) => resolve(ProfileChoice::Auto, &[]),
        }
    }

    fn run(&mut self, eof: bool, out: &mut Vec<Piece>) {
        if let State::Sniffing(choice) = self.state {
            if self.buf.len() < SNIFF_LEN && !eof {
                return;
            }
            self.state = State::Ready(resolve(choice, &self.buf));
        }
        let State::Ready(profile) = self.state else {
            return;
        };
        match profile {
            Profile::Block { avg } => {
                let avg_blocks = (avg as usize / BLOCK).max(2);
                let min_blocks = avg_blocks / 2;
                // cut probability 1/(avg-min) after the minimum: mean ~= avg
                let mask = ((avg_blocks - min_blocks) as u64).next_power_of_two() - 1;
                self.blocks(BLOCK, min_blocks, avg_blocks * 4, mask, eof, out)
            }
            Profile::Fixed { size } => self.blocks(size as usize, 1, 1, 0, eof, out),
            Profile::Cdc { min, avg, max } => self.fastcdc(min, avg, max, eof, out),
        }
    }

    fn emit_chunk(&mut self, out: &mut Vec<Piece>) {
        if self.chunk_len > 0 {
            out.push(Piece::Data(self.buf.split_to(self.chunk_len).freeze()));
            self.chunk_len = 0;
        }
    }

    fn emit_zeros(&mut self, out: &mut Vec<Piece>) {
        if self.pending_zeros > 0 {
            out.push(Piece::Zeros(self.pending_zeros));
            self.pending_zeros = 0;
        }
    }

    fn blocks(
        &mut self,
        block: usize,
        min_blocks: usize,
        max_blocks: usize,
        mask: u64,
        eof: bool,
        out: &mut Vec<Piece>,
    ) {
        while self.buf.len() - self.chunk_len >= block {
            let b = &self.buf[self.chunk_len..self.chunk_len + block];
            if is_zero(b) {
                self.emit_chunk(out);
                self.buf.advance(block);
                self.pending_zeros += block as u64;
                continue;
            }
            let cut_here = mask == 0 || xxh3_64(b) & mask == 0;
            self.emit_zeros(out);
            self.chunk_len += block;
            let n = self.chunk_len / block;
            if n >= max_blocks || (n >= min_blocks && cut_here) {
                self.emit_chunk(out);
            }
        }
        if eof {
            let tail = self.buf.len() - self.chunk_len;
            if tail > 0 && is_zero(&self.buf[self.chunk_len..]) {
                self.emit_chunk(out);
                self.buf.advance(tail);
                self.pending_zeros += tail as u64;
            } else if tail > 0 {
                self.emit_zeros(out);
                self.chunk_len += tail;
                self.emit_chunk(out);
            } else {
                self.emit_chunk(out);
            }
            self.emit_zeros(out);
        }
    }

    fn fastcdc(&mut self, min: u32, avg: u32, max: u32, eof: bool, out: &mut Vec<Piece>) {
        while !self.buf.is_empty() && (eof || self.buf.len() >= max as usize) {
            let cdc = fastcdc::v2020::FastCDC::new(&self.buf, min, avg, max);
            let (_, end) = cdc.cut(0, self.buf.len());
            let end = end.clamp(1, self.buf.len());
            out.push(Piece::Data(self.buf.split_to(end).freeze()));
        }
    }
}

pub fn is_zero(b: &[u8]) -> bool {
    b.chunks(BLOCK).all(|c| c == &ZERO_BLOCK[..c.len()])
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn chunk_all(choice: ProfileChoice, data: &[u8], feed: usize) -> (Vec<Piece>, Profile) {
        let mut c = Chunker::new(choice);
        let mut out = Vec::new();
        for part in data.chunks(feed.max(1)) {
            c.feed(part, &mut out);
        }
        let p = c.finish(&mut out);
        (out, p)
    }

    fn reassemble(pieces: &[Piece]) -> Vec<u8> {
        let mut v = Vec::new();
        for p in pieces {
            match p {
                Piece::Data(b) => v.extend_from_slice(b),
                Piece::Zeros(n) => v.resize(v.len() + *n as usize, 0),
            }
        }
        v
    }

    fn random(n: usize, seed: u64) -> Vec<u8> {
        let mut v = vec![0u8; n];
        rand::rngs::StdRng::seed_from_u64(seed).fill(&mut v[..]);
        v
    }

    #[test]
    fn profiles_parse_and_print() {
        for s in ["block:16384", "cdc:16384:65536:262144", "fixed:4096"] {
            let p: Profile = s.parse().unwrap();
            assert_eq!(p.to_string(), s);
        }
        assert_eq!(
            "fixed:64K".parse::<Profile>().unwrap(),
            Profile::Fixed { size: 65536 }
        );
        for bad in [
            "fixed",
            "fixed:3000",
            "block:100",
            "zip",
            "cdc:1:2",
            "fixed:0",
            "",
        ] {
            assert!(bad.parse::<ProfileChoice>().is_err(), "{bad}");
        }
    }

    #[test]
    fn every_profile_reassembles_for_any_feed_size() {
        let mut data = random(1 << 20, 1);
        data[200_000..300_000].fill(0);
        for choice in [
            "auto",
            "block",
            "cdc",
            "fixed:4096",
            "fixed:65536",
            "block:65536",
        ] {
            let choice: ProfileChoice = choice.parse().unwrap();
            for feed in [1000, 4096, 65536, 1 << 20] {
                let (pieces, _) = chunk_all(choice, &data, feed);
                assert_eq!(reassemble(&pieces), data, "{choice} feed {feed}");
            }
        }
    }

    #[test]
    fn cut_points_do_not_depend_on_feed_size() {
        let data = random(3 << 20, 2);
        for choice in ["block", "cdc", "fixed:4096"] {
            let choice: ProfileChoice = choice.parse().unwrap();
            let (a, _) = chunk_all(choice, &data, 777);
            let (b, _) = chunk_all(choice, &data, 1 << 20);
            assert_eq!(a, b);
        }
    }

    #[test]
    fn block_profile_cuts_on_block_edges_and_skips_zeros() {
        let mut data = random(2 << 20, 3);
        data[64 * 1024..128 * 1024].fill(0);
        let (pieces, p) = chunk_all("block".parse().unwrap(), &data, 100_000);
        assert_eq!(
            p,
            Profile::Block {
                avg: DEFAULT_BLOCK_AVG
            }
        );
        let mut off = 0u64;
        let mut zeros = 0;
        for piece in &pieces {
            assert_eq!(off % BLOCK as u64, 0);
            match piece {
                Piece::Data(b) => {
                    assert!(b.len() <= 4 * DEFAULT_BLOCK_AVG as usize);
                    off += b.len() as u64
                }
                Piece::Zeros(n) => {
                    zeros += n;
                    off += n
                }
            }
        }
        assert_eq!(zeros, 64 * 1024);
        let n_data = pieces
            .iter()
            .filter(|p| matches!(p, Piece::Data(_)))
            .count();
        let mean = (2 << 20) as f64 / n_data as f64;
        assert!(mean > 8192.0 && mean < 40_000.0, "mean chunk {mean}");
    }

    #[test]
    fn auto_detects_images() {
        let mut img = random(1 << 20, 4);
        img[4096..8192].fill(0);
        assert!(matches!(
            chunk_all(ProfileChoice::Auto, &img, 1 << 16).1,
            Profile::Block { .. }
        ));
        let text = random(1 << 20, 5);
        assert!(matches!(
            chunk_all(ProfileChoice::Auto, &text, 1 << 16).1,
            Profile::Cdc { .. }
        ));
        let mut qcow = random(1 << 20, 6);
        qcow[..4].copy_from_slice(b"QFI\xfb");
        assert!(matches!(
            chunk_all(ProfileChoice::Auto, &qcow, 1 << 16).1,
            Profile::Block { .. }
        ));
        // tiny inputs decide at eof
        assert!(matches!(
            chunk_all(ProfileChoice::Auto, b"hi", 1).1,
            Profile::Cdc { .. }
        ));
    }

    #[test]
    fn empty_input_gives_no_pieces() {
        for choice in ["auto", "block", "cdc", "fixed:4096"] {
            let (pieces, _) = chunk_all(choice.parse().unwrap(), &[], 1);
            assert!(pieces.is_empty());
        }
    }
}
