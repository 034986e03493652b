//! A userspace WAN emulator (what `tc netem` would do, for kernels built
//! without it): two TAP devices, and between them per-direction delay,
//! rate, a bounded queue and loss. The `strato-wanem` binary drives it; the
//! caller moves each TAP into a network namespace, so one emulator joins
//! two sites like a WAN link.
//!
//! Each direction has a reader thread (frame in, fate decided by a
//! [`Shaper`], timestamped) and a writer thread (sleeps until each frame's
//! delivery instant, writes it out). Plain threads rather than tasks: the
//! writer's wake-up accuracy is the emulated delay's accuracy.

pub mod shaper;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use serde::Serialize;

pub use shaper::{LinkShape, Shaper, Verdict};

/// Errors of the emulator.
#[derive(Debug, thiserror::Error)]
pub enum NetemError {
    #[error("invalid TAP name {0:?}: 1-15 characters of [A-Za-z0-9_.-]")]
    BadName(String),
    #[error("creating TAP device: {0}")]
    Tap(#[from] tun::Error),
    #[error("reading TAP {dev}: {source}")]
    Read { dev: String, source: std::io::Error },
    #[error("starting a forwarding thread: {0}")]
    Thread(std::io::Error),
}

/// Largest frame read from a TAP (no offloads are enabled, so frames are at
/// most MTU + 14 bytes; this leaves room for jumbo MTUs).
const MAX_FRAME: usize = 65_550;

/// One end of the emulated link.
pub struct Tap {
    dev: Arc<tun::Device>,
    name: String,
}

impl Tap {
    /// Create a TAP device (IFF_TAP | IFF_NO_PI); `name` None lets the
    /// kernel choose. The device exists while this process holds it.
    pub fn create(name: Option<&str>) -> Result<Tap, NetemError> {
        let mut config = tun::Configuration::default();
        config.layer(tun::Layer::L2);
        // Addresses and link state are the caller's business (it moves the
        // device into a namespace first).
        config.platform_config(|p| {
            p.ensure_root_privileges(false);
        });
        if let Some(n) = name {
            check_name(n)?;
            config.tun_name(n);
        }
        let dev = tun::create(&config)?;
        let name = tun::AbstractDevice::tun_name(&dev)?;
        Ok(Tap {
            dev: Arc::new(dev),
            name,
        })
    }

    /// The interface name the kernel gave it.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Interface names are passed on to `ip`: accept only what Linux accepts
/// and nothing a shell or path could misread.
pub fn check_name(name: &str) -> Result<(), NetemError> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        && name != "."
        && name != "..";
    if ok {
        Ok(())
    } else {
        Err(NetemError::BadName(name.to_string()))
    }
}

/// Counters of one direction.
#[derive(Default)]
pub struct DirectionStats {
    frames_in: AtomicU64,
    bytes_in: AtomicU64,
    frames_out: AtomicU64,
    bytes_out: AtomicU64,
    lost: AtomicU64,
    queue_full: AtomicU64,
    write_errors: AtomicU64,
}

/// A snapshot of one direction's counters.
#[derive(Debug, Clone, Serialize)]
pub struct DirectionReport {
    pub from: String,
    pub to: String,
    pub frames_in: u64,
    pub bytes_in: u64,
    pub frames_out: u64,
    pub bytes_out: u64,
    pub lost: u64,
    pub queue_full: u64,
    pub write_errors: u64,
}

/// A running emulator: two directions of forwarding.
pub struct Emulator {
    directions: Vec<(String, String, Arc<DirectionStats>)>,
    /// Readers report fatal errors (a device vanished) here.
    pub errors: mpsc::Receiver<NetemError>,
    _threads: Vec<JoinHandle<()>>,
}

impl Emulator {
    /// Start forwarding a→b with `ab` and b→a with `ba`. Threads run until
    /// the process exits (a blocking TAP read has no other clean stop).
    pub fn start(
        a: &Tap,
        b: &Tap,
        ab: LinkShape,
        ba: LinkShape,
        seed: u64,
    ) -> Result<Emulator, NetemError> {
        let (err_tx, errors) = mpsc::channel();
        let mut threads = Vec::new();
        let mut directions = Vec::new();
        for (from, to, shape, dir_seed) in [(a, b, ab, seed), (b, a, ba, seed ^ 0x9e37_79b9)] {
            let stats = Arc::new(DirectionStats::default());
            let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
            let shaper = Shaper::new(shape, dir_seed);
            let reader = {
                let dev = Arc::clone(&from.dev);
                let name = from.name.clone();
                let stats = Arc::clone(&stats);
                let err_tx = err_tx.clone();
                std::thread::Builder::new()
                    .name(format!("wanem-rx-{name}"))
                    .spawn(move || {
                        if let Err(e) = read_loop(&dev, &name, shaper, &stats, &tx) {
                            let _ = err_tx.send(e);
                        }
                    })
                    .map_err(NetemError::Thread)?
            };
            let writer = {
                let dev = Arc::clone(&to.dev);
                let stats = Arc::clone(&stats);
                std::thread::Builder::new()
                    .name(format!("wanem-tx-{}", to.name))
                    .spawn(move || write_loop(&dev, &stats, rx))
                    .map_err(NetemError::Thread)?
            };
            threads.push(reader);
            threads.push(writer);
            directions.push((from.name.clone(), to.name.clone(), stats));
        }
        Ok(Emulator {
            directions,
            errors,
            _threads: threads,
        })
    }

    /// Counters of both directions (a→b first).
    pub fn report(&self) -> Vec<DirectionReport> {
        self.directions
            .iter()
            .map(|(from, to, s)| DirectionReport {
                from: from.clone(),
                to: to.clone(),
                frames_in: s.frames_in.load(Ordering::Relaxed),
                bytes_in: s.bytes_in.load(Ordering::Relaxed),
                frames_out: s.frames_out.load(Ordering::Relaxed),
                bytes_out: s.bytes_out.load(Ordering::Relaxed),
                lost: s.lost.load(Ordering::Relaxed),
                queue_full: s.queue_full.load(Ordering::Relaxed),
                write_errors: s.write_errors.load(Ordering::Relaxed),
            })
            .collect()
    }
}

fn read_loop(
    dev: &tun::Device,
    name: &str,
    mut shaper: Shaper,
    stats: &DirectionStats,
    out: &mpsc::Sender<(Instant, Vec<u8>)>,
) -> Result<(), NetemError> {
    let mut buf = vec![0u8; MAX_FRAME];
    loop {
        let n = match dev.recv(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(NetemError::Read {
                    dev: name.to_string(),
                    source,
                })
            }
        };
        // The arrival instant is taken right after the read so that time
        // spent in the shaper does not count as link time.
        let now = Instant::now();
        stats.frames_in.fetch_add(1, Ordering::Relaxed);
        stats.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
        match shaper.admit(now, n) {
            Verdict::Deliver(at) => {
                if out.send((at, buf[..n].to_vec())).is_err() {
                    return Ok(()); // writer gone: shutting down
                }
            }
            Verdict::Lost => {
                stats.lost.fetch_add(1, Ordering::Relaxed);
            }
            Verdict::QueueFull => {
                stats.queue_full.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn write_loop(dev: &tun::Device, stats: &DirectionStats, rx: mpsc::Receiver<(Instant, Vec<u8>)>) {
    for (at, frame) in rx {
        let now = Instant::now();
        if at > now {
            // nanosleep overshoots by tens of microseconds: well inside the
            // millisecond the emulated delay must be accurate to.
            std::thread::sleep(at - now);
        }
        match dev.send(&frame) {
            Ok(_) => {
                stats.frames_out.fetch_add(1, Ordering::Relaxed);
                stats
                    .bytes_out
                    .fetch_add(frame.len() as u64, Ordering::Relaxed);
            }
            // A device that is not up yet (still being moved into its
            // namespace) refuses frames: count them as the link's loss.
            Err(_) => {
                stats.write_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(check_name("wan0").is_ok());
        assert!(check_name("tap-a.1_x").is_ok());
        for bad in ["", "a/b", "x y", "sixteen-chars-xx", "..", "tap;rm"] {
            assert!(check_name(bad).is_err(), "{bad:?} accepted");
        }
    }
}
