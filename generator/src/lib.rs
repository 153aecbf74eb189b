//! Stockflow's traffic generator: it seeds the catalog's stock and publishes streams of
//! Avro `OrderCreated` events for the processor to decide.
//!
//! Layout:
//! - [`cli`]: the typed command line.
//! - [`app`]: the commands (`schemas`, `seed`, `run`, `order`) as functions of config + token.
//! - [`catalog`]: the sample products, synthetic SKUs and their initial stock (pure).
//! - [`traffic`]: the deterministic, seeded order stream (pure).
//! - [`publish`]: the idempotent producer that sends contracts and accounts for deliveries.

pub mod app;
pub mod catalog;
pub mod cli;
pub mod publish;
pub mod traffic;
