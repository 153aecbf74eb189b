//! Stockflow's stateful stream processor: it joins every order against an inventory table in
//! RocksDB, changelogged to Kafka, and reserves stock or rejects the order, exactly once.
//!
//! The business rules are pure functions, wired into a topology ([`topology`]); the runtime
//! around them is generic ([`runtime`]): the task API, tasks, stores, the delivery guarantee,
//! and an in-memory test driver.
//!
//! Layout:
//! - [`cli`]: the typed command line.
//! - [`app`]: `processor run` as a function of config + shutdown token.
//! - [`topology`]: the decisions of sub-topologies A (orders) and B (inventory), pure, and
//!   the processors that run them.
//! - [`runtime`]: the task API, the engine, tasks, stores, restore, exactly-once /
//!   at-least-once, the topology test driver.
//! - [`readmodel`]: the PostgreSQL read model and its periodic, offset-guarded sync.
//! - [`api`]: the HTTP API: stock and orders from the live state, orders placed through it.
//! - [`metrics`]: every metric, registered on an explicit registry.
//! - [`group`]: the application's consumer group seen from outside (for `reset`, `status`).
//! - [`state_dir`]: the state directory's lock, instance id, and the watch that stops the
//!   processor when the directory goes away or cannot be written.
//! - [`reset`]: `processor reset`, reprocessing from the inputs (plan, then act).
//! - [`repartition`]: `processor repartition`, a higher partition count with the state intact.
//! - [`tail`]: `processor tail`, the outputs decoded for people.
//! - [`audit`]: `processor audit`, a run checked against the serial execution of the rules.
//! - [`status`]: `processor status`, the group, tasks, restores, lag and dead letters on one
//!   screen, with or without live instances (and the `GET /status` answer they give).
//!
//! Beside the library: `benches/` (criterion: the rules, the store), `examples/e2e_bench/`
//! (the end-to-end benchmark), `tests/` (integration tests on `testkit` and `tests/support/`).

pub mod api;
pub mod app;
pub mod audit;
pub mod cli;
pub mod group;
pub mod metrics;
pub mod readmodel;
pub mod repartition;
pub mod reset;
pub mod runtime;
pub mod state_dir;
pub mod status;
pub mod tail;
pub mod topology;
