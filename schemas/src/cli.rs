//! The `schemas` subcommand every Stockflow binary offers (`generator schemas ...`,
//! `processor schemas ...`): register the contracts, check them or an edited `.avsc` against the
//! registry, list the subjects. It is registry administration with a command-line front, so it
//! lives with the contracts; it needs only the registry's URL and the topic names.

use std::path::PathBuf;

use clap::Subcommand;

use crate::registry::{Compatibility, Registry, RegistryError};
use crate::topics::{Topics, value_subject};

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
    registry_url: &str,
    topics: &Topics,
    command: &SchemasCommand,
) -> Result<(), SchemasError> {
    let registry = Registry::new(registry_url)?;
    match command {
        SchemasCommand::Register => {
            for registered in registry.register_all(topics).await? {
                println!(
                    "{:<40} id {:<6} {}",
                    registered.subject,
                    registered.id,
                    describe(&registered.change)
                );
            }
        }
        SchemasCommand::Check { file: None, .. } => {
            for (subject, change) in registry.check_all(topics).await? {
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
