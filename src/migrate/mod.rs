//! Live migration of QEMU guests between sites, store-assisted (Shrinker):
//! agents on QEMU's `exec:` hook replace every page the destination site
//! already holds, or another agent of the same group sends, by its id.

pub mod agent_error;
pub mod claims;
pub mod control;
pub mod delta;
pub mod disk_error;
pub mod disk_recv;
pub mod disk_report;
pub mod disk_send;
pub mod disk_wire;
pub mod policy;
pub mod rcache;
pub mod readahead;
pub mod receiver;
pub mod report;
pub mod sender;
pub mod sim;
pub mod wire;
