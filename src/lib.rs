//! strato library.
pub mod store;
