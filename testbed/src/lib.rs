//! Throwaway PostgreSQL and Ceph clusters for strato's tests.
//!
//! Every daemon runs as a child process of the test binary, on loopback, with
//! its configuration and data in a fresh temporary directory. A small
//! watchdog shell (see [`guard`]) kills the daemons and removes the directory
//! when the test process goes away, however it goes (normal exit, panic,
//! `kill -9`): the shared instances live in statics, which are never dropped.
//!
//! A missing tool is an error naming it (and the shared instances panic with
//! that message): tests that need a cluster fail, never skip.

mod ceph;
mod error;
mod guard;
mod postgres;

pub use ceph::{s3_client, shared_ceph, Ceph, CephOptions};
pub use error::TestbedError;
pub use postgres::{shared_postgres, Postgres};
