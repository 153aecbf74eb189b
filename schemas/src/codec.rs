//! The Confluent-framed Avro codec: magic byte 0, a 4-byte big-endian schema id, then the Avro
//! body. Encoding and decoding go through `schema_registry_converter`, which caches schema ids
//! and parsed schemas, so the registry is asked once per subject and once per id.
//!
//! Encoding always uses the contract compiled into this binary (registering it under the
//! topic's subject if the registry does not have it yet), never "whatever is latest", so a
//! newer schema registered by someone else cannot change what this binary writes. Decoding
//! uses the writer's schema named by the id in the record, and checks that the record is the
//! contract the caller expects.
//!
//! Once a subject has given this binary's schema its id, records are written straight with
//! `apache_avro`'s schema-aware serializer and a writer built once per contract (the
//! converter rebuilds its schema resolution on every call, which made encoding the largest
//! single cost of the processor's hot path). Likewise, once the converter has decoded a record
//! whose writer schema is this binary's contract, later records with that schema id are read
//! straight into the type by a reader built once per contract; records written with any
//! other schema (an older or newer version) keep going through the converter, which resolves
//! them against it.

use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};

use crate::events::{Contract, TopicRole};
use crate::topics::Topics;

/// Why a record could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The registry could not be reached or answered with a server error: try again later.
    #[error("schema registry unavailable: {0}")]
    RegistryUnavailable(SRCError),
    /// The bytes are not a record this codec can read: not Confluent-framed, an unknown schema
    /// id, or a body that does not match its schema. Retrying will not help (poison).
    #[error("undecodable record: {0}")]
    Undecodable(String),
    /// A well-formed record of another contract than the one expected (poison).
    #[error("expected a {expected} record, found {found}")]
    WrongContract {
        expected: &'static str,
        found: String,
    },
    /// The registry refused to register or resolve this binary's schema (fatal).
    #[error("cannot encode {contract}: {reason}")]
    Encode {
        contract: &'static str,
        reason: String,
    },
}

impl CodecError {
    /// Whether the same call may succeed later (the registry was unreachable).
    pub fn is_retriable(&self) -> bool {
        matches!(self, CodecError::RegistryUnavailable(_))
    }

    /// Whether the record itself is bad and belongs in a dead-letter topic.
    pub fn is_poison(&self) -> bool {
        matches!(
            self,
            CodecError::Undecodable(_) | CodecError::WrongContract { .. }
        )
    }
}

/// Encodes and decodes the contracts for one set of [`Topics`].
pub struct Codec {
    encoder: AvroEncoder,
    decoder: AvroDecoder,
    /// Per topic role: the TopicNameStrategy carrying this binary's schema (used until the
    /// subject has given the schema its id), and then the id and a writer for the schema.
    subjects: HashMap<TopicRole, Subject>,
}

struct Subject {
    with_schema: SubjectNameStrategy,
    schema: &'static Schema,
    resolved: OnceLock<Resolved>,
    /// Reads a record written with this binary's schema straight into the type.
    reader: GenericDatumReader<'static>,
    /// The schema's Parsing Canonical Form, to recognise it under any id.
    canonical: String,
    /// Schema ids already checked, and whether each names exactly this binary's schema (read
    /// by `reader`) or another version (resolved by the converter).
    checked_ids: RwLock<HashMap<u32, bool>>,
}

impl Subject {
    /// Whether `id` names this binary's schema; `None` until a record with it was decoded.
    fn is_own(&self, id: u32) -> Option<bool> {
        self.checked_ids
            .read()
            .expect("invariant: no panic while holding the lock")
            .get(&id)
            .copied()
    }
}

/// A contract's schema id under its subject, and a writer for the schema.
struct Resolved {
    id: u32,
    writer: GenericDatumWriter<'static>,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec")
            .field("subjects", &self.subjects.len())
            .finish()
    }
}

impl Codec {
    /// A codec talking to the registry's Confluent-compatible API at `registry_url`.
    pub fn new(registry_url: &str, topics: &Topics) -> Result<Self, CodecError> {
        let settings = SrSettings::new_builder(registry_url.trim_end_matches('/').to_owned())
            .set_timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| CodecError::Encode {
                contract: "any",
                reason: e.to_string(),
            })?;
        let subjects = crate::events::ALL
            .iter()
            .zip(contract_schemas())
            .map(|((_, schema, role), parsed)| {
                let supplied = SuppliedSchema::new(None, SchemaType::Avro, (*schema).to_owned());
                let topic = topics.name(*role).to_owned();
                let subject = Subject {
                    with_schema: SubjectNameStrategy::TopicNameStrategyWithSchema(
                        topic, false, supplied,
                    ),
                    schema: parsed,
                    resolved: OnceLock::new(),
                    reader: GenericDatumReader::builder(parsed)
                        .build()
                        .expect("invariant: a parsed contract resolves"),
                    canonical: parsed.canonical_form(),
                    checked_ids: RwLock::default(),
                };
                (*role, subject)
            })
            .collect();
        Ok(Self {
            encoder: AvroEncoder::new(settings.clone()),
            decoder: AvroDecoder::new(settings),
            subjects,
        })
    }

    /// Encodes `event` with this binary's schema for its topic's subject.
    pub async fn encode<C: Contract>(&self, event: &C) -> Result<Vec<u8>, CodecError> {
        let subject = &self.subjects[&C::TOPIC];
        let encode_error = |reason: String| CodecError::Encode {
            contract: C::FULL_NAME,
            reason,
        };
        if let Some(resolved) = subject.resolved.get() {
            let mut framed = Vec::with_capacity(64);
            framed.push(0);
            framed.extend_from_slice(&resolved.id.to_be_bytes());
            resolved
                .writer
                .write_ser(&mut framed, event)
                .map_err(|e| encode_error(e.to_string()))?;
            return Ok(framed);
        }
        // First record of this contract: the converter registers the schema (or finds it) and
        // frames the record with its id.
        let encoded = self
            .encoder
            .encode_struct(event, &subject.with_schema)
            .await
            .map_err(|e| {
                if e.retriable {
                    CodecError::RegistryUnavailable(e)
                } else {
                    encode_error(e.to_string())
                }
            })?;
        let id = encoded
            .get(1..5)
            .and_then(|id| <[u8; 4]>::try_from(id).ok())
            .map(u32::from_be_bytes)
            .ok_or_else(|| encode_error("the converter wrote no schema id".into()))?;
        let writer = GenericDatumWriter::builder(subject.schema)
            .build()
            .map_err(|e| encode_error(e.to_string()))?;
        let _ = subject.resolved.set(Resolved { id, writer });
        Ok(encoded)
    }

    /// Decodes a Confluent-framed record that must be a `C`.
    pub async fn decode<C: Contract>(&self, bytes: &[u8]) -> Result<C, CodecError> {
        let subject = &self.subjects[&C::TOPIC];
        let undecodable =
            |e: apache_avro::Error| CodecError::Undecodable(format!("{} body: {e}", C::FULL_NAME));
        let id = schema_id(bytes);
        if let Some(id) = id
            && subject.is_own(id) == Some(true)
        {
            return subject
                .reader
                .read_deser(&mut &bytes[5..])
                .map_err(undecodable);
        }
        let decoded = self.decoder.decode(Some(bytes)).await.map_err(|e| {
            if e.retriable {
                CodecError::RegistryUnavailable(e)
            } else {
                CodecError::Undecodable(e.error)
            }
        })?;
        let found = decoded
            .name
            .map(|n| n.fullname(None))
            .unwrap_or_else(|| "a non-record".to_owned());
        if found != C::FULL_NAME {
            return Err(CodecError::WrongContract {
                expected: C::FULL_NAME,
                found,
            });
        }
        let value = apache_avro::from_value::<C>(&decoded.value).map_err(undecodable)?;
        // The converter has the writer's schema now: if it is this binary's, the next records
        // with its id take the direct path. Either way the id is compared only once.
        if let Some(id) = id
            && subject.is_own(id).is_none()
            && let Ok(writer) = self.decoder.get_schema(id).await
        {
            let own = writer.parsed.canonical_form() == subject.canonical;
            subject
                .checked_ids
                .write()
                .expect("invariant: no panic while holding the lock")
                .insert(id, own);
        }
        Ok(value)
    }
}

/// The schema id of a Confluent-framed record (magic byte 0, then 4 bytes big-endian).
fn schema_id(bytes: &[u8]) -> Option<u32> {
    match bytes {
        [0, a, b, c, d, ..] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

/// This binary's contracts, in the order of [`crate::events::ALL`], parsed once per process
/// (the writers borrow them).
fn contract_schemas() -> &'static [Schema; crate::events::ALL.len()] {
    static PARSED: OnceLock<[Schema; crate::events::ALL.len()]> = OnceLock::new();
    PARSED.get_or_init(|| crate::events::ALL.map(|(_, schema, _)| parse_contract(schema)))
}

/// Parses a contract's schema text; the contracts are compiled in, so failure is a bug.
pub fn parse_contract(schema: &str) -> Schema {
    Schema::parse_str(schema).expect("invariant: the compiled-in .avsc files are valid Avro")
}
