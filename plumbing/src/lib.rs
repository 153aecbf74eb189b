//! The process plumbing every Stockflow binary shares, so that `generator` and `processor`
//! start, connect, log and stop the same way: the connection flags, topic creation, logging,
//! the one shutdown path and exit codes. It knows nothing of orders or stock; the contracts
//! are in `schemas`.
//!
//! Layout:
//! - [`connection`]: the Kafka / registry / topic-prefix flags ([`ConnectionArgs`]).
//! - [`admin`]: create missing topics, read partition counts, the producers' partitioner.
//! - [`process`]: logging, the shutdown signal path (SIGINT/SIGTERM) and exit codes.

pub mod admin;
pub mod connection;
pub mod process;

pub use connection::ConnectionArgs;
