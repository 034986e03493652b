//! Migration policies: what the pre-copy phase may cost (CALM's cost
//! model), how fast it sends (bandwidth schedules), when it ends (stop
//! policies), and a planner predicting each policy's outcome.
//!
//! The policies themselves are pure computation, no I/O; two engines apply
//! them: the trace-driven simulator (`sim`) and the live controller of a
//! real QEMU migration over QMP (`control`).

pub mod adaptive;
pub mod control;
pub mod cost;
pub mod plan;
pub mod preset;
pub mod schedule;
pub mod sim;
pub mod stop;
