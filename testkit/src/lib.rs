//! The kit every Stockflow crate's integration tests (and the end-to-end benchmark) are built
//! on: it finds the real services, gives each test names of its own, starts and kills child
//! processes, scrapes their metrics, and reads topics back up to their high watermarks.
//! Nothing here imitates a service, and nothing here knows the processor: processor-specific
//! helpers are in `processor/tests/support/`, built on this kit (a dependency on `processor`
//! would give its tests two copies of it).
//!
//! Layout:
//! - [`stack`]: Kafka, the schema registry and PostgreSQL from the environment, or in
//!   containers; stopping and starting PostgreSQL for outage tests.
//! - [`names`]: unique topic prefixes, groups and PostgreSQL schema names, all under a
//!   reserved prefix (what `scripts/stack.sh prune` deletes).
//! - [`kafka`]: reading topics up to their high watermarks, and the watermarks themselves.
//! - [`postgres`]: a pool working in a test's own schema.
//! - [`child`]: the workspace's binaries as child processes, killed when dropped.
//! - [`ports`]: free local ports.
//! - [`prometheus`]: scraping and parsing `/metrics`, waiting for `/ready`.
//! - [`proxy`]: a fault proxy in front of the local stack's broker, which cuts connections
//!   or holds responses back for chosen Kafka requests (EndTxn, say).

pub mod child;
pub mod kafka;
pub mod names;
pub mod ports;
pub mod postgres;
pub mod prometheus;
pub mod proxy;
pub mod stack;

pub use kafka::{Isolation, Record, TopicReader, read_at_least, read_to_end};
pub use names::{RESERVED_PREFIX, RESERVED_SCHEMA_PREFIX, pg_schema, unique};
pub use stack::{Stack, stack};
