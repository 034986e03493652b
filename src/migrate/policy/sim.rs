//! Trace-driven pre-copy simulator: a memory image and a stream of page
//! writes (a recorded trace, or a model with a hot writable working set as
//! in paper 002 §4) replayed through real pre-copy rounds at a link rate,
//! with a bandwidth schedule and a stop policy. Every page sent goes
//! through the real codec (`rcache`: block cache, deltas, zstd) and a real
//! decoder rebuilds the destination memory, which must equal the source
//! byte for byte at the end. Time is simulated (bytes on the wire over the
//! schedule's rate), so migrations of GiBs over thin links replay in
//! seconds of CPU.
//!
//! Model of a round, as in Xen: the pages dirty at its start are sent in
//! address order; a page written again during the round before its turn
//! is skipped (it will be sent next round anyway). After a round, one
//! round trip passes before the next decision. The copy phase pauses the
//! guest and sends what is dirty at the full link rate.

use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::cost::CostFunction;
use super::schedule::{Schedule, ScheduleInput};
use super::stop::{RoundObservation, StopDecision, StopPolicy};
use crate::migrate::codec::rcache::{CodecConfig, CodecError, FrameKind, PageDecoder, PageEncoder};

mod write_gen;
use write_gen::WriteGen;

/// Transport bytes per page besides the codec frame: page number and frame
/// length (CloudNet's per-page meta packet is 6 bytes; ours carries a
/// 64-bit page number).
pub const PAGE_HEADER_BYTES: u64 = 12;

#[derive(Debug, Error)]
pub enum SimError {
    #[error("invalid simulation: {0}")]
    Invalid(String),
    #[error("trace line {line}: {why}")]
    Trace { line: usize, why: String },
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("codec: {0}")]
    Codec(#[from] CodecError),
    #[error("destination memory differs from the source at page {0} after the copy phase")]
    Mismatch(u64),
}

/// Writes of a dirtying model: a hot writable working set and cold pages,
/// each page written as a Poisson process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DirtyModel {
    /// Fraction of pages in the writable working set.
    pub hot_fraction: f64,
    /// Writes per second to each hot page.
    pub hot_rate: f64,
    /// Writes per second to each other page.
    pub cold_rate: f64,
    /// Bytes a small write changes.
    pub write_bytes: usize,
    /// Share of writes that replace a whole page with fresh bytes.
    pub rewrite_share: f64,
    /// Share of writes that copy another page over this one (redundancy
    /// the block cache can find).
    pub copy_share: f64,
}

impl Default for DirtyModel {
    fn default() -> Self {
        DirtyModel::web()
    }
}

impl DirtyModel {
    /// Paper 002's Tomcat trace shape: ≈1 % of pages written very often,
    /// the rest rarely; small writes.
    pub fn web() -> Self {
        DirtyModel {
            hot_fraction: 0.01,
            hot_rate: 20.0,
            cold_rate: 0.002,
            write_bytes: 64,
            rewrite_share: 0.02,
            copy_share: 0.02,
        }
    }

    /// A memory-heavy workload for the CloudNet comparison (Fig. 8 shape):
    /// a 5 % working set written about every two seconds, mostly in small
    /// pieces, some pages refilled or copied around (kernel compile, Java
    /// heap); at 100 Mbit/s it keeps ~40 MB dirty per round, so Xen's
    /// default runs all 30 rounds as CloudNet §4.1 observed.
    pub fn memory_heavy() -> Self {
        DirtyModel {
            hot_fraction: 0.05,
            hot_rate: 0.5,
            cold_rate: 0.0005,
            write_bytes: 128,
            rewrite_share: 0.10,
            copy_share: 0.10,
        }
    }

    pub fn idle() -> Self {
        DirtyModel {
            hot_fraction: 0.001,
            hot_rate: 1.0,
            cold_rate: 0.0,
            write_bytes: 64,
            rewrite_share: 0.0,
            copy_share: 0.0,
        }
    }

    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "web" => Some(Self::web()),
            "memory-heavy" => Some(Self::memory_heavy()),
            "idle" => Some(Self::idle()),
            _ => None,
        }
    }

    fn validate(&self, page_size: usize) -> Result<(), SimError> {
        let frac = |v: f64| (0.0..=1.0).contains(&v);
        let rate = |v: f64| v.is_finite() && v >= 0.0;
        if !frac(self.hot_fraction)
            || !frac(self.rewrite_share)
            || !frac(self.copy_share)
            || self.rewrite_share + self.copy_share > 1.0
            || !rate(self.hot_rate)
            || !rate(self.cold_rate)
            || self.write_bytes == 0
            || self.write_bytes > page_size
        {
            return Err(SimError::Invalid(format!(
                "dirtying model out of range: {self:?}"
            )));
        }
        Ok(())
    }

    fn hot_pages(&self, pages: u64) -> u64 {
        ((pages as f64 * self.hot_fraction).round() as u64).min(pages)
    }

    /// p of paper 002 §4 for this model: the mean probability that a page
    /// is written within one second, 1 − e^(−rate) averaged over pages.
    pub fn dirty_prob(&self, pages: u64) -> f64 {
        let hot = self.hot_pages(pages) as f64;
        let cold = pages as f64 - hot;
        (hot * -(-self.hot_rate).exp_m1() + cold * -(-self.cold_rate).exp_m1()) / pages as f64
    }
}

/// One write of a recorded trace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TraceWrite {
    pub time_s: f64,
    pub page: u64,
    pub offset: usize,
    pub len: usize,
}

/// Parse a text trace: one write per line, `TIME_S PAGE [OFFSET LEN]`,
/// times non-decreasing; `#` starts a comment. The simulator fills the
/// written bytes with pseudo-random data.
pub fn parse_trace(text: &str, pages: u64, page_size: usize) -> Result<Vec<TraceWrite>, SimError> {
    let mut out = Vec::new();
    let mut last = 0.0f64;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.split('#').next().unwrap_or("").trim();
        if l.is_empty() {
            continue;
        }
        let err = |why: String| SimError::Trace { line, why };
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() != 2 && f.len() != 4 {
            return Err(err(format!("expected `TIME PAGE [OFFSET LEN]`, got {l:?}")));
        }
        let time_s: f64 = f[0]
            .parse()
            .map_err(|_| err(format!("bad time {:?}", f[0])))?;
        if !time_s.is_finite() || time_s < last {
            return Err(err(format!(
                "time {time_s} is not finite or goes backwards"
            )));
        }
        let page: u64 = f[1]
            .parse()
            .map_err(|_| err(format!("bad page {:?}", f[1])))?;
        if page >= pages {
            return Err(err(format!("page {page} outside memory of {pages} pages")));
        }
        let (offset, len) = if f.len() == 4 {
            let o: usize = f[2]
                .parse()
                .map_err(|_| err(format!("bad offset {:?}", f[2])))?;
            let n: usize = f[3]
                .parse()
                .map_err(|_| err(format!("bad length {:?}", f[3])))?;
            if n == 0 || o.checked_add(n).is_none_or(|e| e > page_size) {
                return Err(err(format!(
                    "write {o}+{n} outside a {page_size}-byte page"
                )));
            }
            (o, n)
        } else {
            (0, page_size)
        };
        last = time_s;
        out.push(TraceWrite {
            time_s,
            page,
            offset,
            len,
        });
    }
    if out.is_empty() {
        return Err(SimError::Trace {
            line: 0,
            why: "trace holds no writes".into(),
        });
    }
    Ok(out)
}

/// p for a trace: distinct (page, second) pairs written, per page-second.
pub fn trace_dirty_prob(trace: &[TraceWrite], pages: u64) -> f64 {
    let mut seen = std::collections::HashSet::new();
    for w in trace {
        seen.insert((w.page, w.time_s.floor() as u64));
    }
    let secs = trace.last().map_or(1.0, |w| w.time_s.ceil().max(1.0));
    (seen.len() as f64 / (pages as f64 * secs)).clamp(1e-12, 1.0 - 1e-12)
}

/// Where the writes come from.
#[derive(Debug, Clone)]
pub enum Writes {
    Model(DirtyModel),
    /// Replayed in a loop when the migration outlasts it.
    Trace(Vec<TraceWrite>),
}

/// How a simulated reconnect treats the codec state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reconnect {
    /// Both ends reset their caches to a new generation.
    Both,
    /// Only the receiver lost its state; the sender finds out from the
    /// first refused frame and resynchronises.
    ReceiverOnly,
}

pub struct SimSpec {
    /// Initial guest memory; a whole number of pages.
    pub memory: Vec<u8>,
    pub writes: Writes,
    pub link_mbps: f64,
    pub rtt_s: f64,
    pub codec: CodecConfig,
    pub schedule: Schedule,
    pub stop: Box<dyn StopPolicy>,
    pub cost: CostFunction,
    pub seed: u64,
    /// Simulated-time bound: the copy phase starts when it is reached.
    pub max_seconds: f64,
    pub reconnect: Option<(u32, Reconnect)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RoundReport {
    pub round: u32,
    pub pages_sent: u64,
    pub pages_skipped: u64,
    pub wire_bytes: u64,
    pub seconds: f64,
    /// Wire bytes over the round's sending time.
    pub mean_rate_mbps: f64,
    pub min_rate_mbps: f64,
    pub max_rate_mbps: f64,
    pub remaining_pages: u64,
    pub decision: StopDecision,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The stop policy ended the pre-copy phase; the guest moved.
    Migrated,
    /// The simulated-time bound ended the pre-copy phase; the guest moved.
    MigratedAtTimeLimit,
    /// The stop policy gave up; the guest stays at the source.
    Aborted,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ByteCounts {
    pub pages_sent: u64,
    /// Pages × page size: what a plain pre-copy would put on the wire.
    pub raw_bytes: u64,
    pub wire_bytes: u64,
    pub saved_by_cache: u64,
    pub saved_by_delta: u64,
    pub saved_by_zstd: u64,
    pub cache_hits: u64,
    pub frames_raw: u64,
    pub frames_blocks: u64,
    pub frames_delta: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SimReport {
    pub outcome: Outcome,
    pub schedule: &'static str,
    pub stop_policy: &'static str,
    /// The last pre-copy round (the copy phase follows it).
    pub stop_round: u32,
    pub rounds: Vec<RoundReport>,
    pub total_time_s: f64,
    pub precopy_time_s: f64,
    pub downtime_s: f64,
    pub downtime_pages: u64,
    /// Paper 002's cost: ∫F(B − B_m)dt over the pre-copy phase plus the
    /// downtime at F(0) = 1.
    pub sla_cost: f64,
    pub bytes: ByteCounts,
    pub writes_applied: u64,
    /// Codec resynchronisations after a refused frame.
    pub resyncs: u64,
    /// Destination equals source byte for byte (None when aborted).
    pub verified: Option<bool>,
}

/// Synthetic guest memory with the kinds of content real guests have:
/// zero pages, duplicated pages, compressible text-like pages, and
/// incompressible ones. Deterministic in `seed`.
pub fn synth_memory(pages: u64, page_size: usize, seed: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut mem = vec![0u8; pages as usize * page_size];
    const WORDS: &[&[u8]] = &[
        b"GET /index.html ",
        b"HTTP/1.1 200 OK\r\n",
        b"session=",
        b"<div class=",
        b"user_id ",
        b"0000000000000000",
        b"\x00\x00\x00\x00\xff\xff\xff\xff",
        b"SELECT * FROM ",
        b"libc.so.6 ",
    ];
    for p in 0..pages as usize {
        let page = p * page_size;
        match rng.gen_range(0..10) {
            0..=2 => {} // zero
            3 | 4 if p > 0 => {
                let from = rng.gen_range(0..p) * page_size;
                mem.copy_within(from..from + page_size, page);
            }
            5..=7 => {
                let mut at = page;
                while at < page + page_size {
                    let w = WORDS[rng.gen_range(0..WORDS.len())];
                    let n = w.len().min(page + page_size - at);
                    mem[at..at + n].copy_from_slice(&w[..n]);
                    at += n;
                }
            }
            _ => rng.fill(&mut mem[page..page + page_size]),
        }
    }
    mem
}

/// Load a raw memory image, padded with zeros to whole pages.
pub fn load_memory(path: &Path, page_size: usize) -> Result<Vec<u8>, SimError> {
    let mut mem = std::fs::read(path).map_err(|source| SimError::Io {
        path: path.display().to_string(),
        source,
    })?;
    if mem.is_empty() {
        return Err(SimError::Invalid(format!("{} is empty", path.display())));
    }
    let rem = mem.len() % page_size;
    if rem != 0 {
        mem.resize(mem.len() + page_size - rem, 0);
    }
    Ok(mem)
}

/// The sending and receiving agents: codec ends and the destination
/// memory.
struct Link {
    enc: PageEncoder,
    dec: PageDecoder,
    frame: Vec<u8>,
    resyncs: u64,
}

impl Link {
    /// Encode and deliver one page; returns wire bytes. A refused frame
    /// (caches out of sync) is counted on the wire, both ends reset to a
    /// fresh generation, and the page is sent again.
    fn send(
        &mut self,
        page_no: u64,
        src: &[u8],
        dst: &mut [u8],
        bytes: &mut ByteCounts,
    ) -> Result<u64, SimError> {
        let mut wire = 0;
        for attempt in 0..2 {
            let o = self.enc.encode(page_no, src, &mut self.frame)?;
            wire += o.frame_len as u64 + PAGE_HEADER_BYTES;
            match self.dec.decode(&self.frame, dst) {
                Ok(kind) => {
                    bytes.saved_by_cache += o.saved_by_cache;
                    bytes.saved_by_delta += o.saved_by_delta;
                    bytes.saved_by_zstd += o.saved_by_zstd;
                    bytes.cache_hits += u64::from(o.cache_hits);
                    match kind {
                        FrameKind::Raw => bytes.frames_raw += 1,
                        FrameKind::Blocks => bytes.frames_blocks += 1,
                        FrameKind::Delta => bytes.frames_delta += 1,
                    }
                    return Ok(wire);
                }
                Err(e) if attempt == 0 => {
                    tracing::info!("page {page_no}: {e}; resetting both codec ends");
                    let g = self
                        .enc
                        .generation()
                        .max(self.dec.generation())
                        .wrapping_add(1);
                    self.enc.reset(g);
                    self.dec.reset(g);
                    self.resyncs += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(SimError::Invalid("unreachable resend loop".into()))
    }
}

/// Run one simulated migration; also returns the final source and
/// destination memories (for callers that check or keep them).
pub fn simulate_with_images(spec: SimSpec) -> Result<(SimReport, Vec<u8>, Vec<u8>), SimError> {
    let pages = validate_spec(&spec)?;
    let mut sim = Sim::new(spec, pages)?;
    loop {
        match sim.precopy_round()? {
            StopDecision::Continue => {}
            StopDecision::Stop => break,
            StopDecision::Abort => {
                sim.outcome = Outcome::Aborted;
                break;
            }
        }
    }
    sim.finish()
}

/// Refuse a spec the simulation cannot run; returns its page count.
fn validate_spec(spec: &SimSpec) -> Result<u64, SimError> {
    let ps = spec.codec.page_size;
    spec.codec.validate()?;
    spec.cost
        .validate()
        .map_err(|e| SimError::Invalid(e.to_string()))?;
    if spec.memory.is_empty() || !spec.memory.len().is_multiple_of(ps) {
        return Err(SimError::Invalid(format!(
            "memory of {} bytes is not a whole number of {ps}-byte pages",
            spec.memory.len()
        )));
    }
    if !(spec.link_mbps.is_finite() && spec.link_mbps > 0.0) {
        return Err(SimError::Invalid(format!(
            "link rate {} Mbit/s must be > 0",
            spec.link_mbps
        )));
    }
    let rtt_ok = spec.rtt_s.is_finite() && spec.rtt_s >= 0.0;
    if !rtt_ok || spec.max_seconds.is_nan() || spec.max_seconds <= 0.0 {
        return Err(SimError::Invalid(
            "round trip and time limit must be >= 0 and > 0".into(),
        ));
    }
    let pages = (spec.memory.len() / ps) as u64;
    if let Writes::Model(m) = &spec.writes {
        m.validate(ps)?;
    }
    if let Writes::Trace(t) = &spec.writes {
        if let Some(w) = t.iter().find(|w| w.page >= pages || w.offset + w.len > ps) {
            return Err(SimError::Invalid(format!(
                "trace write {w:?} outside memory"
            )));
        }
    }
    Ok(pages)
}

/// One simulated migration in progress: the settings, both memories, the
/// codec link, the dirty state and the running totals.
struct Sim {
    pages: u64,
    ps: usize,
    link_mbps: f64,
    rtt_s: f64,
    schedule: Schedule,
    stop: Box<dyn StopPolicy>,
    cost: CostFunction,
    max_seconds: f64,
    reconnect: Option<(u32, Reconnect)>,
    /// F at the full link rate: the cost of a second spent idle.
    idle_f: f64,
    gen: WriteGen,
    src: Vec<u8>,
    dst: Vec<u8>,
    link: Link,
    dirty: Vec<bool>,
    dirty_count: u64,
    /// The round each page was last written in.
    written_in: Vec<u32>,
    bytes: ByteCounts,
    rounds: Vec<RoundReport>,
    now: f64,
    sla_cost: f64,
    writes_applied: u64,
    outcome: Outcome,
    round: u32,
}

impl Sim {
    /// Set up both ends for a validated spec of `pages` pages: every page
    /// starts dirty, the destination starts zeroed.
    fn new(spec: SimSpec, pages: u64) -> Result<Sim, SimError> {
        let ps = spec.codec.page_size;
        let SimSpec {
            memory: src,
            writes,
            link_mbps,
            rtt_s,
            codec,
            schedule,
            stop,
            cost,
            seed,
            max_seconds,
            reconnect,
        } = spec;
        let gen = WriteGen::new(writes, pages, ps, seed);
        let dst = vec![0u8; src.len()];
        let link = Link {
            enc: PageEncoder::new(codec.clone(), 1)?,
            dec: PageDecoder::new(codec, 1)?,
            frame: Vec::new(),
            resyncs: 0,
        };
        let idle_f = cost.f(link_mbps);
        Ok(Sim {
            pages,
            ps,
            link_mbps,
            rtt_s,
            schedule,
            stop,
            cost,
            max_seconds,
            reconnect,
            idle_f,
            gen,
            src,
            dst,
            link,
            dirty: vec![true; pages as usize],
            dirty_count: pages,
            written_in: vec![0u32; pages as usize],
            bytes: ByteCounts::default(),
            rounds: Vec::new(),
            now: 0.0,
            sla_cost: 0.0,
            writes_applied: 0,
            outcome: Outcome::Migrated,
            round: 0,
        })
    }

    /// Apply the guest's writes up to now: written pages become dirty and
    /// are marked as written in this round.
    fn apply_writes(&mut self) {
        let round = self.round;
        let (dirty, dirty_count, written_in) =
            (&mut self.dirty, &mut self.dirty_count, &mut self.written_in);
        self.writes_applied += self.gen.apply_until(self.now, &mut self.src, |w| {
            let w = w as usize;
            if !dirty[w] {
                dirty[w] = true;
                *dirty_count += 1;
            }
            written_in[w] = round;
        });
    }

    /// A simulated reconnect due at the start of this round resets the
    /// receiver's codec state (and the sender's, if both reconnect).
    fn reconnect_if_due(&mut self) {
        if let Some((at, how)) = self.reconnect {
            if at == self.round {
                let g = self.link.dec.generation().wrapping_add(1);
                self.link.dec.reset(g);
                if how == Reconnect::Both {
                    self.link.enc.reset(g);
                }
            }
        }
    }

    /// Send one page at the schedule's current rate; returns the rate.
    fn send_page(&mut self, p: u64, r: &mut RoundReport) -> Result<f64, SimError> {
        let (pi, ps) = (p as usize, self.ps);
        let rate = self.schedule.rate_mbps(ScheduleInput {
            round: self.round,
            clean_pages: self.pages - self.dirty_count,
            link_mbps: self.link_mbps,
        });
        let range = pi * ps..(pi + 1) * ps;
        let wire = self.link.send(
            p,
            &self.src[range.clone()],
            &mut self.dst[range],
            &mut self.bytes,
        )?;
        let dt = wire as f64 * 8.0 / (rate * 1e6);
        self.now += dt;
        self.sla_cost += dt * self.cost.f(self.link_mbps - rate);
        self.dirty[pi] = false;
        self.dirty_count -= 1;
        r.pages_sent += 1;
        r.wire_bytes += wire;
        r.min_rate_mbps = r.min_rate_mbps.min(rate);
        r.max_rate_mbps = r.max_rate_mbps.max(rate);
        Ok(dt)
    }

    /// One pre-copy round: send the pages dirty at its start (skipping
    /// those written again before their turn), wait one round trip, and
    /// ask the stop policy; returns its decision.
    fn precopy_round(&mut self) -> Result<StopDecision, SimError> {
        self.round += 1;
        self.reconnect_if_due();
        let round = self.round;
        let to_send: Vec<u64> = (0..self.pages)
            .filter(|&p| self.dirty[p as usize])
            .collect();
        let round_start = self.now;
        let mut r = RoundReport {
            round,
            pages_sent: 0,
            pages_skipped: 0,
            wire_bytes: 0,
            seconds: 0.0,
            mean_rate_mbps: 0.0,
            min_rate_mbps: f64::INFINITY,
            max_rate_mbps: 0.0,
            remaining_pages: 0,
            decision: StopDecision::Continue,
        };
        let mut send_time = 0.0;
        let mut hit_limit = false;
        for p in to_send {
            self.apply_writes();
            if self.written_in[p as usize] == round {
                r.pages_skipped += 1;
                continue;
            }
            send_time += self.send_page(p, &mut r)?;
            if self.now >= self.max_seconds {
                hit_limit = true;
                break;
            }
        }
        // End of round: the destination acknowledges, one round trip.
        self.now += self.rtt_s;
        self.sla_cost += self.rtt_s * self.idle_f;
        self.apply_writes();
        self.bytes.pages_sent += r.pages_sent;
        self.bytes.wire_bytes += r.wire_bytes;
        r.seconds = self.now - round_start;
        r.mean_rate_mbps = if send_time > 0.0 {
            r.wire_bytes as f64 * 8.0 / send_time / 1e6
        } else {
            0.0
        };
        if r.min_rate_mbps.is_infinite() {
            r.min_rate_mbps = 0.0;
        }
        r.remaining_pages = self.dirty_count;
        r.decision = self.stop.observe(&RoundObservation {
            round,
            remaining_pages: self.dirty_count,
            total_pages: self.pages,
            page_size: self.ps,
            pages_sent_total: self.bytes.pages_sent,
            round_pages: r.pages_sent,
            round_wire_bytes: r.wire_bytes,
            round_seconds: r.seconds,
            link_mbps: self.link_mbps,
        });
        if hit_limit && r.decision == StopDecision::Continue {
            r.decision = StopDecision::Stop;
            self.outcome = Outcome::MigratedAtTimeLimit;
        }
        let decision = r.decision;
        self.rounds.push(r);
        Ok(decision)
    }

    /// Copy phase: the guest is paused, so no more writes; everything
    /// dirty goes at the full link rate and then the destination resumes.
    /// Returns the downtime and the pages sent in it.
    fn copy_phase(&mut self) -> Result<(f64, u64), SimError> {
        let ps = self.ps;
        let mut down_bytes = 0u64;
        let mut down_pages = 0u64;
        for p in 0..self.pages {
            let pi = p as usize;
            if self.dirty[pi] {
                let range = pi * ps..(pi + 1) * ps;
                down_bytes += self.link.send(
                    p,
                    &self.src[range.clone()],
                    &mut self.dst[range],
                    &mut self.bytes,
                )?;
                down_pages += 1;
            }
        }
        let downtime = down_bytes as f64 * 8.0 / (self.link_mbps * 1e6) + self.rtt_s;
        self.bytes.pages_sent += down_pages;
        self.bytes.wire_bytes += down_bytes;
        self.bytes.raw_bytes = self.bytes.pages_sent * ps as u64;
        self.sla_cost += downtime; // F(0) = 1: the service is down
        Ok((downtime, down_pages))
    }

    /// The copy phase (unless aborted), the byte-for-byte check of the
    /// destination, and the report with both memories.
    fn finish(mut self) -> Result<(SimReport, Vec<u8>, Vec<u8>), SimError> {
        let precopy = self.now;
        self.bytes.raw_bytes = self.bytes.pages_sent * self.ps as u64;
        let (downtime, down_pages, verified) = if self.outcome == Outcome::Aborted {
            (0.0, 0, None)
        } else {
            let (downtime, down_pages) = self.copy_phase()?;
            if self.src != self.dst {
                let bad = self
                    .src
                    .chunks_exact(self.ps)
                    .zip(self.dst.chunks_exact(self.ps))
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                return Err(SimError::Mismatch(bad as u64));
            }
            (downtime, down_pages, Some(true))
        };
        let report = SimReport {
            outcome: self.outcome,
            schedule: self.schedule.name(),
            stop_policy: self.stop.name(),
            stop_round: self.round,
            rounds: self.rounds,
            total_time_s: precopy + downtime,
            precopy_time_s: precopy,
            downtime_s: downtime,
            downtime_pages: down_pages,
            sla_cost: self.sla_cost,
            bytes: self.bytes,
            writes_applied: self.writes_applied,
            resyncs: self.link.resyncs,
            verified,
        };
        Ok((report, self.src, self.dst))
    }
}

/// Run one simulated migration.
pub fn simulate(spec: SimSpec) -> Result<SimReport, SimError> {
    simulate_with_images(spec).map(|(r, _, _)| r)
}
