//! Stockflow's traffic generator: it seeds the catalog's stock, publishes streams of Avro
//! `OrderCreated` events for the processor to decide, and adjusts stock (by hand, or restocks
//! while orders flow).
//!
//! Layout:
//! - [`cli`]: the typed command line.
//! - [`app`]: the commands (`schemas`, `seed`, `run`, `order`, `adjust`) as functions of config
//!   + token.
//! - [`catalog`]: the sample products, synthetic SKUs, their initial stock and adjustments (pure).
//! - [`traffic`]: the deterministic, seeded order stream (pure).
//! - [`restock`]: the restocks of a run, from the stream's expected demand (pure).
//! - [`publish`]: the idempotent producer that sends contracts and accounts for deliveries.

pub mod app;
pub mod catalog;
pub mod cli;
pub mod publish;
pub mod restock;
pub mod traffic;
