//! The simulated guest's writes: a dirtying model's Poisson writes or a
//! recorded trace replayed in a loop, applied to the source memory.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::Writes;

/// The write stream, one event at a time.
pub(super) struct WriteGen {
    writes: Writes,
    rng: StdRng,
    hot: Vec<u64>,
    pages: u64,
    page_size: usize,
    total_rate: f64,
    hot_share: f64,
    // trace replay position
    idx: usize,
    loop_offset: f64,
    period: f64,
    next_t: f64,
}

impl WriteGen {
    pub(super) fn new(writes: Writes, pages: u64, page_size: usize, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5752_4954_4553);
        let (mut hot, mut total_rate, mut hot_share, mut period) = (Vec::new(), 0.0, 0.0, 1.0);
        match &writes {
            Writes::Model(m) => {
                let h = m.hot_pages(pages);
                hot = rand::seq::index::sample(&mut rng, pages as usize, h as usize)
                    .into_iter()
                    .map(|i| i as u64)
                    .collect();
                let hot_rate = h as f64 * m.hot_rate;
                total_rate = hot_rate + (pages - h) as f64 * m.cold_rate;
                hot_share = if total_rate > 0.0 {
                    hot_rate / total_rate
                } else {
                    0.0
                };
            }
            Writes::Trace(t) => {
                period = t.last().map_or(1.0, |w| w.time_s).max(1e-3);
            }
        }
        let mut g = WriteGen {
            writes,
            rng,
            hot,
            pages,
            page_size,
            total_rate,
            hot_share,
            idx: 0,
            loop_offset: 0.0,
            period,
            next_t: 0.0,
        };
        g.next_t = g.first_time();
        g
    }

    fn first_time(&mut self) -> f64 {
        match &self.writes {
            Writes::Model(_) => self.exp_gap(),
            Writes::Trace(t) => t.first().map_or(f64::INFINITY, |w| w.time_s),
        }
    }

    fn exp_gap(&mut self) -> f64 {
        if self.total_rate <= 0.0 {
            return f64::INFINITY;
        }
        let u: f64 = self.rng.gen_range(f64::MIN_POSITIVE..1.0);
        -u.ln() / self.total_rate
    }

    /// Apply every write up to time `t` to `mem`; calls `touched` for each
    /// written page.
    pub(super) fn apply_until(
        &mut self,
        t: f64,
        mem: &mut [u8],
        mut touched: impl FnMut(u64),
    ) -> u64 {
        let ps = self.page_size;
        let mut n = 0;
        while self.next_t <= t {
            n += 1;
            match &self.writes {
                Writes::Model(m) => {
                    let (rewrite, copy, wb) = (m.rewrite_share, m.copy_share, m.write_bytes);
                    let page = if !self.hot.is_empty()
                        && self.rng.gen_bool(self.hot_share.clamp(0.0, 1.0))
                    {
                        self.hot[self.rng.gen_range(0..self.hot.len())]
                    } else {
                        self.rng.gen_range(0..self.pages)
                    };
                    let base = page as usize * ps;
                    let kind: f64 = self.rng.gen();
                    if kind < rewrite {
                        self.rng.fill(&mut mem[base..base + ps]);
                    } else if kind < rewrite + copy {
                        let from = self.rng.gen_range(0..self.pages) as usize * ps;
                        mem.copy_within(from..from + ps, base);
                    } else {
                        let off = self.rng.gen_range(0..=ps - wb);
                        self.rng.fill(&mut mem[base + off..base + off + wb]);
                    }
                    touched(page);
                    self.next_t += self.exp_gap();
                }
                Writes::Trace(tr) => {
                    let w = tr[self.idx];
                    let base = w.page as usize * ps + w.offset;
                    self.rng.fill(&mut mem[base..base + w.len]);
                    touched(w.page);
                    self.idx += 1;
                    if self.idx == tr.len() {
                        self.idx = 0;
                        self.loop_offset += self.period;
                    }
                    self.next_t = self.loop_offset + tr[self.idx].time_s;
                }
            }
        }
        n
    }
}
