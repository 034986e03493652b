//! Getting images onto hypervisor nodes: the chunk API client and the
//! delta pull built on it (see DESIGN.md, "Who uses it").

pub mod chain;
pub mod mcast;
pub mod pull;

pub use pull::{pull, PullError, PullOptions, PullReport};
