//! The page codec for pages that cross a memory migration in full: a
//! redundancy cache of sub-page blocks and page deltas (CloudNet §4.2-4.3),
//! kept in lockstep at both ends of one connection.

pub mod delta;
pub mod rcache;
