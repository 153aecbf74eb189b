//! Command-line pieces every Stockflow binary shares: the service endpoints, and the `schemas`
//! subcommand that registers and checks the contracts.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::registry::{Compatibility, Registry, RegistryError};
use crate::topics::{Topics, value_subject};

/// Where Kafka and the schema registry are, and how topics are named.
#[derive(Debug, Clone, Args)]
pub struct ConnectionArgs {
    /// Kafka bootstrap servers.
    #[arg(
        long,
        env = "KAFKA_BOOTSTRAP_SERVERS",
        default_value = "127.0.0.1:9092",
        global = true
    )]
    pub bootstrap_servers: String,

    /// Schema registry base URL (Confluent-compatible API; for Apicurio, `.../apis/ccompat/v7`).
    #[arg(
        long,
        env = "SCHEMA_REGISTRY_URL",
        default_value = "http://127.0.0.1:8081/apis/ccompat/v7",
        global = true
    )]
    pub schema_registry_url: String,

    /// Prefix of every topic name (lets several deployments share a cluster).
    #[arg(
        long,
        env = "STOCKFLOW_TOPIC_PREFIX",
        default_value = "",
        global = true
    )]
    pub topic_prefix: String,

    /// Extra librdkafka property for every client, as KEY=VALUE (repeatable).
    #[arg(short = 'X', long = "kafka-property", value_name = "KEY=VALUE", value_parser = parse_key_value, global = true)]
    pub kafka_properties: Vec<(String, String)>,
}

impl ConnectionArgs {
    pub fn topics(&self) -> Topics {
        Topics::with_prefix(&self.topic_prefix)
    }

    /// A librdkafka config with the bootstrap servers and the extra properties.
    pub fn client_config(&self) -> rdkafka::ClientConfig {
        crate::admin::client_config(&self.bootstrap_servers, &self.kafka_properties)
    }
}

/// Parses `KEY=VALUE`.
pub fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got `{s}`")),
    }
}

/// `schemas`: the contracts in the registry.
#[derive(Debug, Clone, Subcommand)]
pub enum SchemasCommand {
    /// Register every contract under `<topic>-value` and pin the subjects to BACKWARD
    /// compatibility; refuses (naming the field) a contract that is not compatible.
    Register,
    /// Check every contract, or one .avsc file, against the registry without registering.
    Check {
        /// An .avsc file to check instead of the compiled-in contracts.
        #[arg(long, requires = "topic")]
        file: Option<PathBuf>,
        /// The topic whose subject the file is checked against.
        #[arg(long)]
        topic: Option<String>,
    },
    /// List the subjects the registry holds.
    List,
}

/// Why a `schemas` command failed.
#[derive(Debug, thiserror::Error)]
pub enum SchemasError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn describe(change: &Compatibility) -> String {
    match change {
        Compatibility::NewSubject => "new subject".to_owned(),
        Compatibility::Unchanged { version } => format!("unchanged (version {version})"),
        Compatibility::Compatible { version } => format!("compatible (becomes version {version})"),
    }
}

/// Runs a `schemas` command, printing one line per subject.
pub async fn run_schemas_command(
    connection: &ConnectionArgs,
    command: &SchemasCommand,
) -> Result<(), SchemasError> {
    let registry = Registry::new(&connection.schema_registry_url)?;
    let topics = connection.topics();
    match command {
        SchemasCommand::Register => {
            for registered in registry.register_all(&topics).await? {
                println!(
                    "{:<40} id {:<6} {}",
                    registered.subject,
                    registered.id,
                    describe(&registered.change)
                );
            }
        }
        SchemasCommand::Check { file: None, .. } => {
            for (subject, change) in registry.check_all(&topics).await? {
                println!("{subject:<40} {}", describe(&change));
            }
        }
        SchemasCommand::Check {
            file: Some(path),
            topic,
        } => {
            let schema = std::fs::read_to_string(path).map_err(|source| SchemasError::Read {
                path: path.clone(),
                source,
            })?;
            let subject = value_subject(topic.as_deref().unwrap_or_default());
            let change = registry.check(&subject, &schema).await?;
            println!("{subject:<40} {}", describe(&change));
        }
        SchemasCommand::List => {
            let mut subjects = registry.subjects().await?;
            subjects.sort();
            for subject in subjects {
                println!("{subject}");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_values_parse() {
        assert_eq!(
            parse_key_value("linger.ms=5"),
            Ok(("linger.ms".into(), "5".into()))
        );
        assert_eq!(parse_key_value("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(parse_key_value("novalue").is_err());
        assert!(parse_key_value("=x").is_err());
    }
}
