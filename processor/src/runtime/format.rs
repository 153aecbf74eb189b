//! The format of the records only Stockflow reads: store values (and so changelog records)
//! and the repartition topics' records.
//!
//! A version byte, then the value in [postcard](https://docs.rs/postcard): serde's compact,
//! non-self-describing binary format (varints, no field names). An order record is about a
//! quarter of its JSON size, and encoding and decoding it is several times cheaper; every
//! record is written to RocksDB, a changelog and, for the read model, decoded again, so both
//! count. External topics are Avro through the registry; these are the processor's private
//! business, as Kafka Streams' internal serdes are.
//!
//! The version byte is there for a later change of the stored types: postcard has no field
//! names, so a new field means a new version and a decoder that still reads the old one.
//! Values written before the format existed (JSON, first byte `{`) are refused with an error
//! that says to reset the application.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The first byte of every value in this format.
const VERSION: u8 = 1;

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("empty value")]
    Empty,
    #[error(
        "a JSON value written by a Stockflow build before 2026-11-22; reprocess with `processor reset`"
    )]
    Json,
    #[error("unknown format version {0}")]
    Version(u8),
    #[error("{0}")]
    Postcard(#[from] postcard::Error),
}

/// Encodes `value`.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_extend(value, vec![VERSION]).expect(
        "invariant: internal records serialize (postcard refuses only sequences of unknown length)",
    )
}

/// Decodes what [`encode`] wrote.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, FormatError> {
    match bytes.split_first() {
        None => Err(FormatError::Empty),
        Some((&VERSION, value)) => Ok(postcard::from_bytes(value)?),
        Some((b'{', _)) => Err(FormatError::Json),
        Some((&version, _)) => Err(FormatError::Version(version)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::order::{OrderRecord, OrderStatus};
    use crate::topology::{LineCommand, LineOutcome};
    use schemas::{OrderLine, RejectedLine, RejectionReason};

    fn record(status: OrderStatus) -> OrderRecord {
        OrderRecord {
            customer_id: "customer-0042".into(),
            currency: "EUR".into(),
            created_at: 1_795_331_857_000,
            lines: vec![OrderLine {
                sku: "SKU-000123".into(),
                quantity: 2,
                unit_price_cents: 1999,
            }],
            total_cents: 3998,
            status,
            decided_at: Some(1_795_331_857_123),
        }
    }

    #[test]
    fn every_status_round_trips_and_is_much_smaller_than_json() {
        let statuses = [
            OrderStatus::Pending {
                results: vec![None, Some(LineOutcome::Insufficient { available: 3 })],
            },
            OrderStatus::Confirmed,
            OrderStatus::Rejected {
                reason: RejectionReason::InsufficientStock,
                message: "line 1: 3 available".into(),
                lines: vec![RejectedLine {
                    sku: "SKU-000123".into(),
                    requested: 2,
                    available: Some(1),
                }],
            },
        ];
        for status in statuses {
            let value = record(status);
            let bytes = encode(&value);
            assert_eq!(decode::<OrderRecord>(&bytes), Ok(value.clone()));
            let json = serde_json::to_vec(&value).expect("JSON");
            assert!(
                bytes.len() * 2 < json.len(),
                "{} bytes against {} in JSON",
                bytes.len(),
                json.len()
            );
        }
        let command = LineCommand::Release {
            order_id: "o-1".into(),
            line: 1,
            sku: "SKU-1".into(),
            quantity: 5,
        };
        assert_eq!(decode::<LineCommand>(&encode(&command)), Ok(command));
    }

    #[test]
    fn refuses_json_unknown_versions_and_garbage_with_a_reason() {
        let json = serde_json::to_vec(&record(OrderStatus::Confirmed)).expect("JSON");
        assert_eq!(decode::<OrderRecord>(&json), Err(FormatError::Json));
        assert_eq!(decode::<OrderRecord>(&[]), Err(FormatError::Empty));
        assert_eq!(
            decode::<OrderRecord>(&[7, 1, 2]),
            Err(FormatError::Version(7))
        );
        let mut truncated = encode(&record(OrderStatus::Confirmed));
        truncated.truncate(10);
        assert!(matches!(
            decode::<OrderRecord>(&truncated),
            Err(FormatError::Postcard(_))
        ));
    }
}
