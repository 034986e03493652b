//! Talking to QEMU: the QMP client, the migration stream's tokenizer,
//! suspend/resume to a file (`strato vm save`, which is not migration) and
//! the QMP steps of a disk mirror. Beside `distribute/` and `image/` in the
//! stack: it may use the store, and `migrate/` builds on it.

pub mod mirror;
pub mod qmp;
pub mod stream;
pub mod vmsave;
