//! A PostgreSQL schema per test: its name ([`crate::names::pg_schema`]) and a pool whose
//! connections work in it.

use std::str::FromStr;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// A small pool on `database_url` whose connections have `search_path` set to `schema` (which
/// the code under test creates).
pub async fn pool(database_url: &str, schema: &str) -> PgPool {
    let options = PgConnectOptions::from_str(database_url)
        .unwrap_or_else(|e| panic!("a database URL, not {database_url:?}: {e}"))
        .options([("search_path", schema)]);
    PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {database_url} answers: {e}"))
}
