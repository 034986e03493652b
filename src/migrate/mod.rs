//! Live migration of QEMU guests between sites, store-assisted (Shrinker):
//! agents on QEMU's `exec:` hook replace every page the destination site
//! already holds, or another agent of the same group sends, by its id.
//!
//! - `memory/`: the memory agents (`migrate send|recv`) on QEMU's
//!   migration stream;
//! - `disk/`: the disk agents (`migrate disk-send|disk-recv`) inside QEMU's
//!   mirror job;
//! - `codec/`: the page codec both ends of a memory migration run in
//!   lockstep (redundancy cache, page deltas);
//! - `policy/`: what pre-copy may cost, how fast it sends, when it stops;
//!   the simulator and the live QMP controller that apply them;
//! - `proto`: the framing both protocols share; `link`: the connection it
//!   runs on (mutual TLS 1.3, or plain TCP with `--insecure`);
//! - `error`, `report`: the agents' one error type and one report type.
//!
//! QEMU itself (QMP, the stream format, the mirror's QMP steps) is
//! `crate::qemu`, one layer down.

pub mod codec;
pub mod disk;
pub mod error;
pub mod link;
pub mod memory;
pub mod policy;
pub mod proto;
pub mod report;
