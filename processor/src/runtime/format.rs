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

    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Value {
        name: String,
        count: i64,
        parts: Vec<Option<u32>>,
    }

    #[test]
    fn values_round_trip_and_bad_bytes_are_refused_with_a_reason() {
        let value = Value {
            name: "a name".into(),
            count: -3,
            parts: vec![None, Some(7)],
        };
        let bytes = encode(&value);
        assert_eq!(bytes[0], VERSION);
        assert_eq!(decode::<Value>(&bytes), Ok(value.clone()));
        let json = serde_json::to_vec(&value).expect("JSON");
        assert_eq!(decode::<Value>(&json), Err(FormatError::Json));
        assert_eq!(decode::<Value>(&[]), Err(FormatError::Empty));
        assert_eq!(decode::<Value>(&[7, 1, 2]), Err(FormatError::Version(7)));
        assert!(matches!(
            decode::<Value>(&bytes[..4]),
            Err(FormatError::Postcard(_))
        ));
    }
}
