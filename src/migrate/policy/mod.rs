//! Migration policies: what the pre-copy phase may cost (CALM's cost
//! model), how fast it sends (bandwidth schedules), when it ends (stop
//! policies), and a planner predicting each policy's outcome.
//!
//! Pure computation, no I/O: the simulator (`migrate::sim`), the planner
//! command and the live engine share these.

pub mod adaptive;
pub mod cost;
pub mod plan;
pub mod schedule;
pub mod stop;
