//! strato: content-addressed storage and VM image distribution for IaaS
//! clouds. See DESIGN.md for the map of the parts.

pub mod config;
pub mod distribute;
pub mod image;
pub mod migrate;
pub mod netem;
pub mod server;
pub mod store;
