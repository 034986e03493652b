//! The disk agents: `migrate disk-send` is the NBD target of QEMU's mirror
//! job on the source and forwards its writes over the WAN, with blocks the
//! destination site holds sent by id; `migrate disk-recv` writes them into
//! the destination QEMU's NBD export.

pub mod recv;
pub mod report;
pub mod send;
pub mod wire;
