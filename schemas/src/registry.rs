//! Registry administration: register the contracts, pin BACKWARD compatibility, and check a
//! changed schema before anything is produced with it.
//!
//! The check runs twice: locally with apache-avro's schema resolution rules, which names the
//! offending field, and in the registry, which has the final word. Registration, subject
//! listing and the registry's check go through `schema_registry_converter`; the two calls it
//! lacks (per-subject compatibility config and "latest, if any") are plain HTTP.

use apache_avro::Schema;
use apache_avro::schema_compatibility::SchemaCompatibility;
use reqwest::StatusCode;
use schema_registry_converter::async_impl::schema_registry::{
    SrSettings, get_all_subjects, is_compatible_schema, post_schema,
};
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{SchemaType, SuppliedSchema};
use serde::Deserialize;

use crate::topics::{Topics, value_subject};

/// The compatibility level every Stockflow subject is pinned to.
pub const COMPATIBILITY: &str = "BACKWARD";

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// Why a registry call failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("schema registry at {url} is unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("schema registry refused {what}: {reason}")]
    Refused { what: String, reason: String },
    #[error(
        "{subject}: the new schema is not {COMPATIBILITY} compatible with version {version}: {reason}"
    )]
    Incompatible {
        subject: String,
        version: u32,
        reason: String,
    },
    #[error("invalid Avro schema for {subject}: {reason}")]
    InvalidSchema { subject: String, reason: String },
}

impl From<SRCError> for RegistryError {
    fn from(e: SRCError) -> Self {
        if e.retriable {
            RegistryError::Unreachable {
                url: String::new(),
                reason: e.to_string(),
            }
        } else {
            RegistryError::Refused {
                what: e.error,
                reason: e.cause.unwrap_or_default(),
            }
        }
    }
}

/// What [`Registry::check`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compatibility {
    /// The subject has no versions yet.
    NewSubject,
    /// The latest version is this very schema.
    Unchanged { version: u32 },
    /// A new version that readers of the latest one can follow.
    Compatible { version: u32 },
}

/// One subject's state after [`Registry::register_all`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub subject: String,
    pub id: u32,
    pub change: Compatibility,
}

#[derive(Debug, Deserialize)]
struct SubjectVersion {
    version: u32,
    schema: String,
}

/// A client of the registry's Confluent-compatible API.
#[derive(Debug, Clone)]
pub struct Registry {
    url: String,
    settings: SrSettings,
    http: reqwest::Client,
}

impl Registry {
    /// A client of the Confluent-compatible API at `url` (for Apicurio: `.../apis/ccompat/v7`).
    pub fn new(url: &str) -> Result<Self, RegistryError> {
        let url = url.trim_end_matches('/').to_owned();
        let timeout = std::time::Duration::from_secs(10);
        let settings = SrSettings::new_builder(url.clone())
            .set_timeout(timeout)
            .build()
            .map_err(|e| RegistryError::Refused {
                what: "settings".into(),
                reason: e.to_string(),
            })?;
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| RegistryError::Refused {
                what: "settings".into(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            url,
            settings,
            http,
        })
    }

    /// The registry's address, as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn unreachable(&self, e: impl std::fmt::Display) -> RegistryError {
        RegistryError::Unreachable {
            url: self.url.clone(),
            reason: e.to_string(),
        }
    }

    /// Fails fast with [`RegistryError::Unreachable`] when nothing answers at the URL.
    pub async fn ping(&self) -> Result<(), RegistryError> {
        self.subjects().await.map(|_| ())
    }

    /// Every subject the registry holds.
    pub async fn subjects(&self) -> Result<Vec<String>, RegistryError> {
        get_all_subjects(&self.settings).await.map_err(|e| {
            if e.retriable {
                self.unreachable(e.cause.unwrap_or(e.error))
            } else {
                e.into()
            }
        })
    }

    /// The latest version of `subject`, or `None` if it has none.
    async fn latest(&self, subject: &str) -> Result<Option<SubjectVersion>, RegistryError> {
        let response = self
            .http
            .get(format!("{}/subjects/{subject}/versions/latest", self.url))
            .header(reqwest::header::ACCEPT, CONTENT_TYPE)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        match response.status() {
            StatusCode::NOT_FOUND => Ok(None),
            status if status.is_success() => Ok(Some(
                response.json().await.map_err(|e| self.unreachable(e))?,
            )),
            status => Err(RegistryError::Refused {
                what: format!("GET latest {subject}"),
                reason: format!("{status}: {}", response.text().await.unwrap_or_default()),
            }),
        }
    }

    /// Pins `subject` to [`COMPATIBILITY`].
    pub async fn set_compatibility(&self, subject: &str) -> Result<(), RegistryError> {
        let response = self
            .http
            .put(format!("{}/config/{subject}", self.url))
            .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
            .body(format!(r#"{{"compatibility":"{COMPATIBILITY}"}}"#))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(RegistryError::Refused {
                what: format!("compatibility {COMPATIBILITY} for {subject}"),
                reason: format!(
                    "{}: {}",
                    response.status(),
                    response.text().await.unwrap_or_default()
                ),
            })
        }
    }

    /// Checks that `schema` may become the next version of `subject`: refused with the reason
    /// (naming the field) when readers using it could not read what the latest version wrote.
    pub async fn check(&self, subject: &str, schema: &str) -> Result<Compatibility, RegistryError> {
        let new = Schema::parse_str(schema).map_err(|e| RegistryError::InvalidSchema {
            subject: subject.to_owned(),
            reason: e.to_string(),
        })?;
        let Some(latest) = self.latest(subject).await? else {
            return Ok(Compatibility::NewSubject);
        };
        let old = Schema::parse_str(&latest.schema).map_err(|e| RegistryError::InvalidSchema {
            subject: format!("{subject} (registered version {})", latest.version),
            reason: e.to_string(),
        })?;
        if old.canonical_form() == new.canonical_form() {
            return Ok(Compatibility::Unchanged {
                version: latest.version,
            });
        }
        let incompatible = |reason: String| RegistryError::Incompatible {
            subject: subject.to_owned(),
            version: latest.version,
            reason,
        };
        // BACKWARD: a reader with the new schema must read data written with the old one.
        SchemaCompatibility::can_read(&old, &new).map_err(|e| incompatible(e.to_string()))?;
        let supplied = SuppliedSchema::new(None, SchemaType::Avro, schema.to_owned());
        if !is_compatible_schema(&self.settings, subject.to_owned(), supplied).await? {
            return Err(incompatible(
                "the registry's own check refused it".to_owned(),
            ));
        }
        Ok(Compatibility::Compatible {
            version: latest.version + 1,
        })
    }

    /// Checks, then registers `schema` under `subject` and pins the subject to BACKWARD.
    pub async fn register(&self, subject: &str, schema: &str) -> Result<Registered, RegistryError> {
        let change = self.check(subject, schema).await?;
        let supplied = SuppliedSchema::new(None, SchemaType::Avro, schema.to_owned());
        let registered = post_schema(&self.settings, subject.to_owned(), supplied).await?;
        self.set_compatibility(subject).await?;
        Ok(Registered {
            subject: subject.to_owned(),
            id: registered.id,
            change,
        })
    }

    /// Registers every contract under its topic's subject (TopicNameStrategy).
    pub async fn register_all(&self, topics: &Topics) -> Result<Vec<Registered>, RegistryError> {
        let mut out = Vec::with_capacity(crate::events::ALL.len());
        for (_, schema, role) in crate::events::ALL {
            out.push(
                self.register(&value_subject(topics.name(role)), schema)
                    .await?,
            );
        }
        Ok(out)
    }

    /// Checks every contract against its subject without registering anything.
    pub async fn check_all(
        &self,
        topics: &Topics,
    ) -> Result<Vec<(String, Compatibility)>, RegistryError> {
        let mut out = Vec::with_capacity(crate::events::ALL.len());
        for (_, schema, role) in crate::events::ALL {
            let subject = value_subject(topics.name(role));
            let change = self.check(&subject, schema).await?;
            out.push((subject, change));
        }
        Ok(out)
    }
}
