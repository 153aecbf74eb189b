//! Names a test owns alone: topic prefixes, consumer groups, application ids and PostgreSQL
//! schemas that no other test (or earlier run) uses, so tests run in parallel against one
//! cluster and one database.
//!
//! Every name made here starts with a reserved prefix ([`RESERVED_PREFIX`] for Kafka topics,
//! groups and transactional ids, [`RESERVED_SCHEMA_PREFIX`] for PostgreSQL schemas), and
//! `scripts/stack.sh prune` deletes only what starts with it: a user's topic, however it is
//! named (`shop-20261201-orders`), is never a test's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The start of every Kafka name a test or benchmark makes (topics, consumer groups,
/// application ids, transactional ids). Reserved: `scripts/stack.sh prune` deletes the topics
/// that start with it.
pub const RESERVED_PREFIX: &str = "stockflow-test-";

/// The start of every PostgreSQL schema a test or benchmark makes. Reserved:
/// `scripts/stack.sh prune` drops the schemas that start with it.
pub const RESERVED_SCHEMA_PREFIX: &str = "stockflow_test_";

/// A name no other test or run uses: `stockflow-test-<kind>-<pid>-<millis>-<n>`.
pub fn unique(kind: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!(
        "{RESERVED_PREFIX}{kind}-{}-{millis}-{n}",
        std::process::id()
    )
}

/// PostgreSQL's longest identifier, in bytes.
const MAX_IDENTIFIER: usize = 63;

/// A PostgreSQL schema name for `name` (usually from [`unique`]): [`RESERVED_SCHEMA_PREFIX`],
/// then `name` without [`RESERVED_PREFIX`], in lower case with every other character than a
/// letter or digit as `_`, keeping the end of `name` (where [`unique`] puts what differs) when
/// it is too long.
pub fn pg_schema(name: &str) -> String {
    let name: String = name
        .strip_prefix(RESERVED_PREFIX)
        .unwrap_or(name)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    let keep = name
        .len()
        .min(MAX_IDENTIFIER.saturating_sub(RESERVED_SCHEMA_PREFIX.len()));
    format!("{RESERVED_SCHEMA_PREFIX}{}", &name[name.len() - keep..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_differ_and_are_reserved() {
        let (a, b) = (unique("t"), unique("t"));
        assert_ne!(a, b);
        assert!(a.starts_with("stockflow-test-t-"), "{a}");
    }

    #[test]
    fn schema_names_are_reserved_identifiers_that_keep_the_end() {
        assert_eq!(pg_schema("Scale-Out-12"), "stockflow_test_scale_out_12");
        assert_eq!(
            pg_schema("stockflow-test-bench-1-2-0-app"),
            "stockflow_test_bench_1_2_0_app"
        );
        let long = format!("{}-end", "x".repeat(100));
        let schema = pg_schema(&long);
        assert_eq!(schema.len(), MAX_IDENTIFIER);
        assert!(schema.starts_with("stockflow_test_x") && schema.ends_with("x_end"));
    }
}
