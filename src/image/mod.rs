//! What a hypervisor node runs VMs on: qcow2 overlays over a backing file,
//! and pseudo images (a lazy, chunk-fetching block cache exported over NBD
//! and, through FUSE, as a read-only file).

pub mod fuse;
pub mod nbd;
pub mod nbd_client;
pub mod pseudo;
pub mod qcow2;
