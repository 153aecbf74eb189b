//! Where each store entry and each record in flight goes under a new partition count (pure;
//! the table in ARCHITECTURE.md, "Repartitioning").
//!
//! Every function refuses what it does not know how to place rather than guess: an entry left
//! on the wrong partition would be a second, silent copy of a sku's stock or an order.

use crate::runtime::format::{self, FormatError};
use crate::runtime::partitioner::partition_for;
use crate::topology::LinesRecord;
use crate::topology::event_time::Queued;
use crate::topology::inventory::{Hold, Reservation, keys as inventory_keys};
use crate::topology::order::keys as order_keys;
use crate::topology::processors::PARTITION_TIME;

/// Why an entry cannot be placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RekeyError {
    #[error("store {store}: key {key} is not one this build writes")]
    UnknownKey { store: &'static str, key: String },
    #[error("store {store}: the value of {key} does not decode: {source}")]
    Value {
        store: &'static str,
        key: String,
        source: FormatError,
    },
}

/// Where an entry goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// To this partition, with this value (rewritten where it names a partition).
    One(i32, Vec<u8>),
    /// To every partition, unchanged.
    Every(Vec<u8>),
}

fn printable(key: &[u8]) -> String {
    String::from_utf8_lossy(key).escape_debug().to_string()
}

/// The new partition of an order id.
fn of(key: &[u8], partitions: i32) -> i32 {
    partition_for(key, partitions)
}

/// An entry of the `orders` store, read from changelog partition `from`.
pub fn orders_entry(
    key: &[u8],
    value: Vec<u8>,
    from: i32,
    partitions: i32,
) -> Result<Destination, RekeyError> {
    if key == PARTITION_TIME {
        return Ok(Destination::One(from, value));
    }
    if let Some((_, order_id)) = order_keys::parse_expiry(key) {
        return Ok(Destination::One(of(order_id.as_bytes(), partitions), value));
    }
    if key.first().is_none_or(|&b| b == 0) {
        return Err(RekeyError::UnknownKey {
            store: crate::topology::ORDERS_STORE,
            key: printable(key),
        });
    }
    Ok(Destination::One(of(key, partitions), value))
}

/// An entry of the `inventory` store, read from changelog partition `from`.
pub fn inventory_entry(
    key: &[u8],
    value: Vec<u8>,
    from: i32,
    partitions: i32,
) -> Result<Destination, RekeyError> {
    const STORE: &str = crate::topology::INVENTORY_STORE;
    let undecodable = |source| RekeyError::Value {
        store: STORE,
        key: printable(key),
        source,
    };
    let text = |prefix: &str| key.strip_prefix(prefix.as_bytes());
    if let Some(sku) = text(inventory_keys::SKU_PREFIX) {
        return Ok(Destination::One(of(sku, partitions), value));
    }
    if text("r/").is_some() {
        let reservation: Reservation = format::decode(&value).map_err(undecodable)?;
        return Ok(Destination::One(
            of(reservation.sku.as_bytes(), partitions),
            value,
        ));
    }
    if text(inventory_keys::HOLD_PREFIX).is_some() {
        let hold: Hold = format::decode(&value).map_err(undecodable)?;
        return Ok(Destination::One(of(hold.sku.as_bytes(), partitions), value));
    }
    if text("a/").is_some() {
        return Ok(Destination::Every(value));
    }
    if key.starts_with(inventory_keys::QUEUED_PREFIX) {
        let (position, mut entry) = Queued::decode_stored(&value).map_err(undecodable)?;
        let sku = of(entry.sku().as_bytes(), partitions);
        if let Queued::Reserve {
            reply_partition,
            command,
            ..
        } = &mut entry
        {
            *reply_partition = of(command.order_line().0.as_bytes(), partitions);
        }
        return Ok(Destination::One(sku, format::encode(&(position, &entry))));
    }
    if key == inventory_keys::ADJUSTMENTS_TIME {
        return Ok(Destination::One(from, value));
    }
    Err(RekeyError::UnknownKey {
        store: STORE,
        key: printable(key),
    })
}

/// A record of the order-lines topic not yet consumed: a command goes to its sku's partition,
/// answering to its order's new partition; a watermark (`None`) is dropped. A record that does
/// not decode keeps its bytes and goes by its key, to be dead-lettered where it lands, as it
/// would have been.
pub fn order_lines_record(key: &[u8], value: &[u8], partitions: i32) -> Option<(i32, Vec<u8>)> {
    if key.is_empty() {
        return None;
    }
    let value = match LinesRecord::decode(Some(key), value) {
        Ok(LinesRecord::Command(mut envelope)) => {
            envelope.reply_partition = of(envelope.command.order_line().0.as_bytes(), partitions);
            format::encode(&envelope)
        }
        Ok(LinesRecord::Watermark(_)) => return None,
        Err(_) => value.to_vec(),
    };
    Some((of(key, partitions), value))
}

/// A record of the line-results topic not yet consumed: a result goes to its order's partition
/// (its key); a watermark request (`None`) is dropped.
pub fn line_results_record(key: &[u8], partitions: i32) -> Option<i32> {
    (!key.is_empty()).then(|| of(key, partitions))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::event_time::PartitionTime;
    use crate::topology::inventory::{Applied, SkuRecord};
    use crate::topology::order::{OrderRecord, OrderStatus};
    use crate::topology::{CommandEnvelope, LineCommand, Position, Watermark};

    const N: i32 = 12;

    fn sku_record() -> Vec<u8> {
        format::encode(&SkuRecord {
            available: 5,
            reserved: 2,
            product_name: None,
            unit_price_cents: None,
            updated_at: 1,
        })
    }

    fn reserve(order_id: &str, sku: &str) -> LineCommand {
        LineCommand::Reserve {
            order_id: order_id.into(),
            line: 1,
            sku: sku.into(),
            quantity: 2,
        }
    }

    fn one(placed: Result<Destination, RekeyError>) -> (i32, Vec<u8>) {
        match placed {
            Ok(Destination::One(partition, value)) => (partition, value),
            other => panic!("one partition expected, not {other:?}"),
        }
    }

    #[test]
    fn order_entries_follow_their_order_id_and_the_partition_time_stays() {
        let record = format::encode(&OrderRecord {
            customer_id: "c".into(),
            currency: "EUR".into(),
            created_at: 1,
            lines: vec![],
            total_cents: 0,
            status: OrderStatus::Pending {
                results: vec![None],
            },
            decided_at: None,
            time: Some(1),
        });
        let (to, value) = one(orders_entry(b"o-7", record.clone(), 3, N));
        assert_eq!((to, value), (partition_for(b"o-7", N), record));
        let index = order_keys::expiry(42, "o-7");
        assert_eq!(
            one(orders_entry(&index, vec![], 3, N)).0,
            partition_for(b"o-7", N)
        );
        let time = format::encode(&PartitionTime::default());
        assert_eq!(
            orders_entry(PARTITION_TIME, time.clone(), 3, N),
            Ok(Destination::One(3, time))
        );
        assert!(matches!(
            orders_entry(b"\0mystery", vec![], 3, N),
            Err(RekeyError::UnknownKey { .. })
        ));
    }

    #[test]
    fn inventory_entries_follow_their_sku_wherever_it_is_written() {
        let sku = b"SKU-000042";
        let to = partition_for(sku, N);
        let key = inventory_keys::sku("SKU-000042");
        assert_eq!(
            one(inventory_entry(key.as_bytes(), sku_record(), 0, N)).0,
            to
        );
        let reservation = format::encode(&Reservation {
            sku: "SKU-000042".into(),
            quantity: 2,
        });
        let key = inventory_keys::reservation("o-1", 0);
        assert_eq!(
            one(inventory_entry(key.as_bytes(), reservation, 0, N)).0,
            to
        );
        let hold = format::encode(&Hold {
            sku: "SKU-000042".into(),
            quantity: 2,
        });
        let key = inventory_keys::hold("o-1", 0);
        assert_eq!(one(inventory_entry(key.as_bytes(), hold, 0, N)).0, to);
        let applied = format::encode(&Applied { at: 1 });
        let key = inventory_keys::adjustment("adj-1");
        assert_eq!(
            inventory_entry(key.as_bytes(), applied.clone(), 0, N),
            Ok(Destination::Every(applied))
        );
        let time = format::encode(&PartitionTime::default());
        assert_eq!(
            inventory_entry(inventory_keys::ADJUSTMENTS_TIME, time.clone(), 5, N),
            Ok(Destination::One(5, time))
        );
        assert!(inventory_entry(b"x/what", vec![], 0, N).is_err());
        assert!(matches!(
            inventory_entry(b"r/o-1/0", vec![9, 9], 0, N),
            Err(RekeyError::Value { .. })
        ));
    }

    #[test]
    fn a_queued_reserve_goes_to_its_sku_and_answers_to_its_orders_new_partition() {
        let position = Position {
            time: 10,
            topic: 1,
            partition: 2,
            offset: 7,
            line: 1,
        };
        let entry = Queued::Reserve {
            reply_partition: 2,
            command: reserve("o-9", "SKU-1"),
            sole_line: false,
        };
        let key = inventory_keys::queued(position);
        let stored = format::encode(&(position, &entry));
        let (to, value) = one(inventory_entry(&key, stored, 4, N));
        assert_eq!(to, partition_for(b"SKU-1", N));
        let (kept, moved) = Queued::decode_stored(&value).expect("decodes");
        assert_eq!(
            kept, position,
            "the position names the input it was read from"
        );
        assert_eq!(
            moved,
            Queued::Reserve {
                reply_partition: partition_for(b"o-9", N),
                command: reserve("o-9", "SKU-1"),
                sole_line: false,
            }
        );
    }

    #[test]
    fn commands_and_results_in_flight_move_and_watermarks_are_dropped() {
        let envelope = CommandEnvelope {
            reply_partition: 1,
            command: reserve("o-3", "SKU-2"),
            position: None,
            sole_line: true,
        };
        let (to, value) =
            order_lines_record(b"SKU-2", &format::encode(&envelope), N).expect("a command");
        assert_eq!(to, partition_for(b"SKU-2", N));
        let Ok(LinesRecord::Command(moved)) = LinesRecord::decode(Some(b"SKU-2"), &value) else {
            panic!("a command");
        };
        assert_eq!(moved.reply_partition, partition_for(b"o-3", N));
        assert!(moved.sole_line);
        let mark = Watermark {
            origin: 1,
            position: Position::MIN,
        };
        assert_eq!(order_lines_record(b"", &format::encode(&mark), N), None);
        // Garbage keeps its bytes, to be dead-lettered where its key lands.
        assert_eq!(
            order_lines_record(b"SKU-2", &[1, 200], N),
            Some((partition_for(b"SKU-2", N), vec![1, 200]))
        );
        assert_eq!(
            line_results_record(b"o-3", N),
            Some(partition_for(b"o-3", N))
        );
        assert_eq!(line_results_record(b"", N), None);
    }
}
