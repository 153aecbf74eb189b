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
//!
//! [`Codec::offline`] is a codec without a registry, for benchmarks and tests: each contract is
//! pre-resolved to a fixed schema id ([`Codec::offline_id`]), so it writes and reads the same
//! framed bytes as the registry-backed codec, never touching the network.

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
use crate::registry::Registered;
use crate::topics::Topics;
use crate::topics::value_subject;

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
    /// The registry, through `schema_registry_converter`; `None` for an offline codec.
    converter: Option<Converter>,
    /// Per topic role: the TopicNameStrategy carrying this binary's schema (used until the
    /// subject has given the schema its id), and then the id and a writer for the schema.
    subjects: HashMap<TopicRole, Subject>,
}

/// The converter's two halves, sharing the registry's settings and caches.
struct Converter {
    encoder: AvroEncoder,
    decoder: AvroDecoder,
}

struct Subject {
    /// The subject's name (`<topic>-value`).
    name: String,
    /// The contract's full name, to name it in a wrong-contract error.
    full_name: &'static str,
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
    /// Records `id` as this binary's schema's id under the subject (the first one stays).
    fn resolve(&self, id: u32) {
        let writer = GenericDatumWriter::builder(self.schema)
            .build()
            .expect("invariant: a parsed contract has a writer");
        let _ = self.resolved.set(Resolved { id, writer });
    }

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
            .field("offline", &self.converter.is_none())
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
        Ok(Self {
            converter: Some(Converter {
                encoder: AvroEncoder::new(settings.clone()),
                decoder: AvroDecoder::new(settings),
            }),
            subjects: subjects(topics),
        })
    }

    /// A codec without a registry, for benchmarks and tests (an in-memory topology driver, a
    /// codec micro-benchmark): every contract is pre-resolved to [`Codec::offline_id`], so
    /// encoding and decoding never touch the network. The bytes are framed exactly as the
    /// registry-backed codec frames them, with these ids instead of the registry's.
    ///
    /// Decoding a record whose id is another contract's fails with
    /// [`CodecError::WrongContract`]; any other id or framing is [`CodecError::Undecodable`]
    /// (an offline codec knows no other schema versions).
    pub fn offline(topics: &Topics) -> Self {
        let subjects = subjects(topics);
        for (role, subject) in &subjects {
            let id = Self::offline_id(*role);
            subject.resolve(id);
            subject
                .checked_ids
                .write()
                .expect("invariant: no panic while holding the lock")
                .insert(id, true);
        }
        Self {
            converter: None,
            subjects,
        }
    }

    /// Takes the ids the registry gave this binary's contracts when they were registered, so
    /// that encoding them never needs the registry again: the first output of a kind may come
    /// while it is down. (Registrations of other subjects are ignored.)
    pub fn learn(&self, registered: &[Registered]) {
        for registered in registered {
            if let Some(subject) = self
                .subjects
                .values()
                .find(|s| s.name == registered.subject)
            {
                subject.resolve(registered.id);
            }
        }
    }

    /// The schema id an offline codec gives the contract of topic `role`: its position in
    /// [`crate::events::ALL`], from 1.
    pub fn offline_id(role: TopicRole) -> u32 {
        let position = crate::events::ALL
            .iter()
            .position(|(_, _, r)| *r == role)
            .expect("invariant: every topic role has its contract in ALL");
        position as u32 + 1
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
        // frames the record with its id. (An offline codec resolved every contract up front.)
        let Some(converter) = &self.converter else {
            unreachable!("invariant: an offline codec resolves every contract when it is built")
        };
        let encoded = converter
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
        subject.resolve(id);
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
        let Some(converter) = &self.converter else {
            return Err(self.offline_miss::<C>(id));
        };
        let decoded = converter.decoder.decode(Some(bytes)).await.map_err(|e| {
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
            && let Ok(writer) = converter.decoder.get_schema(id).await
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

impl Codec {
    /// Why an offline codec cannot read a record with schema id `id` as a `C`: the id is
    /// another contract's, or unknown.
    fn offline_miss<C: Contract>(&self, id: Option<u32>) -> CodecError {
        let other = self.subjects.values().find(|s| {
            s.resolved
                .get()
                .is_some_and(|resolved| Some(resolved.id) == id)
        });
        match (id, other) {
            (Some(_), Some(other)) => CodecError::WrongContract {
                expected: C::FULL_NAME,
                found: other.full_name.to_owned(),
            },
            (Some(id), None) => {
                CodecError::Undecodable(format!("schema id {id} is unknown to the offline codec"))
            }
            (None, _) => CodecError::Undecodable("not a Confluent-framed record".to_owned()),
        }
    }
}

/// Every contract's subject under `topics`, none resolved yet.
fn subjects(topics: &Topics) -> HashMap<TopicRole, Subject> {
    crate::events::ALL
        .iter()
        .zip(contract_schemas())
        .map(|((full_name, schema, role), parsed)| {
            let supplied = SuppliedSchema::new(None, SchemaType::Avro, (*schema).to_owned());
            let topic = topics.name(*role).to_owned();
            let subject = Subject {
                name: value_subject(&topic),
                full_name,
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
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::samples;
    use crate::{InventoryAdjusted, InventoryUpdated, OrderConfirmed, OrderCreated};

    /// Encodes `value`, checks the framing, and decodes it back (twice: the reader is reused).
    async fn round_trip<C: Contract + PartialEq + std::fmt::Debug>(codec: &Codec, value: C) {
        let bytes = codec.encode(&value).await.expect("encodes offline");
        assert_eq!(bytes[0], 0, "Confluent magic byte");
        assert_eq!(schema_id(&bytes), Some(Codec::offline_id(C::TOPIC)));
        for _ in 0..2 {
            let back: C = codec.decode(&bytes).await.expect("decodes offline");
            assert_eq!(back, value);
        }
    }

    #[tokio::test]
    async fn every_contract_round_trips_offline() {
        // No registry listens anywhere: the offline codec must never ask one.
        let codec = Codec::offline(&Topics::with_prefix("offline-"));
        round_trip(&codec, samples::order_created()).await;
        round_trip(&codec, samples::inventory_adjusted()).await;
        round_trip(&codec, samples::inventory_updated()).await;
        round_trip(&codec, samples::order_confirmed()).await;
        round_trip(&codec, samples::order_rejected()).await;
    }

    #[tokio::test]
    async fn registered_ids_encode_without_the_registry() {
        // Nothing listens on port 9: any call to the registry would fail.
        let topics = Topics::with_prefix("learned-");
        let codec = Codec::new("http://127.0.0.1:9", &topics).expect("a codec");
        codec.learn(&[
            Registered {
                subject: value_subject(&topics.orders_rejected),
                id: 77,
                change: crate::registry::Compatibility::NewSubject,
            },
            Registered {
                subject: "another-topic-value".to_owned(),
                id: 78,
                change: crate::registry::Compatibility::NewSubject,
            },
        ]);
        let rejected = codec
            .encode(&samples::order_rejected())
            .await
            .expect("encoded with the learned id");
        assert_eq!(rejected[..5], [0, 0, 0, 0, 77]);
        let unknown = codec.encode(&samples::order_created()).await;
        assert!(
            unknown.as_ref().is_err_and(CodecError::is_retriable),
            "a contract whose id was not learned still asks the registry: {unknown:?}"
        );
    }

    #[test]
    fn offline_ids_are_distinct() {
        let mut ids: Vec<u32> = crate::events::ALL
            .iter()
            .map(|(_, _, role)| Codec::offline_id(*role))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids, vec![1, 2, 3, 4, 5]);
    }

    #[tokio::test]
    async fn offline_decoding_names_what_it_cannot_read() {
        let codec = Codec::offline(&Topics::default());
        let adjustment = codec
            .encode(&samples::inventory_adjusted())
            .await
            .expect("encodes");
        let wrong = codec
            .decode::<OrderCreated>(&adjustment)
            .await
            .expect_err("another contract's record");
        assert!(
            matches!(&wrong, CodecError::WrongContract { expected, found }
                if *expected == OrderCreated::FULL_NAME && found == InventoryAdjusted::FULL_NAME),
            "{wrong:?}"
        );
        let unknown = codec
            .decode::<OrderCreated>(&[0, 0, 0, 0, 99, 2])
            .await
            .expect_err("unknown id");
        assert!(unknown.is_poison() && !unknown.is_retriable(), "{unknown}");
        let garbage = codec
            .decode::<OrderConfirmed>(b"not avro")
            .await
            .expect_err("garbage");
        assert!(garbage.is_poison(), "{garbage}");
        let mut truncated = codec
            .encode(&samples::inventory_updated())
            .await
            .expect("encodes");
        truncated.truncate(7);
        let error = codec
            .decode::<InventoryUpdated>(&truncated)
            .await
            .expect_err("truncated");
        assert!(error.is_poison(), "{error}");
    }
}
