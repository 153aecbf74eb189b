//! Names a test owns alone: topic prefixes, consumer groups, application ids and PostgreSQL
//! schemas that no other test (or earlier run) uses, so tests run in parallel against one
//! cluster and one database.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A name no other test or run uses: `<prefix>-<pid>-<millis>-<n>`.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("{prefix}-{}-{millis}-{n}", std::process::id())
}

/// PostgreSQL's longest identifier, in bytes.
const MAX_IDENTIFIER: usize = 63;

/// A PostgreSQL schema name for `name`: `prefix` (such as `t_` for tests, `bench_` for
/// benchmarks) and `name` in lower case with every other character than a letter or digit as
/// `_`, keeping the end of `name` (where [`unique`] puts what differs) when it is too long.
/// `scripts/stack.sh prune` deletes the schemas with these prefixes.
pub fn pg_schema(prefix: &str, name: &str) -> String {
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    let keep = name.len().min(MAX_IDENTIFIER.saturating_sub(prefix.len()));
    format!("{prefix}{}", &name[name.len() - keep..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_differ() {
        let (a, b) = (unique("t"), unique("t"));
        assert_ne!(a, b);
        assert!(a.starts_with("t-"));
    }

    #[test]
    fn schema_names_are_identifiers_that_keep_the_end() {
        assert_eq!(pg_schema("t_", "Scale-Out-12"), "t_scale_out_12");
        let long = format!("{}-end", "x".repeat(100));
        let schema = pg_schema("bench_", &long);
        assert_eq!(schema.len(), MAX_IDENTIFIER);
        assert!(schema.starts_with("bench_x") && schema.ends_with("x_end"));
    }
}
