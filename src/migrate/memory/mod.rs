//! The memory agents: `migrate send` reads QEMU's migration stream on the
//! source and sends it over the WAN with known pages replaced by their ids;
//! `migrate recv` rebuilds the stream byte for byte for the destination QEMU.

mod pages;
pub mod readahead;
pub mod receiver;
pub mod report;
pub mod sender;
pub mod wire;
