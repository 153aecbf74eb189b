//! The state of event-time decisions (ARCHITECTURE.md, "Decision order"): the partition time
//! of an input partition, and an inventory task's merge of its origins with its per-sku
//! queues and pending holds. Plain data over the rules; [`super::processors`] persists it
//! through the task's store and sends what it decides.

use std::collections::{BTreeMap, HashMap, VecDeque};

use schemas::InventoryAdjusted;
use serde::{Deserialize, Serialize};

use super::{LineCommand, Position};
use crate::runtime::format::{self, FormatError};

/// How often an order task sends its watermark, and an inventory task checks its idle
/// adjustments partition.
pub const WATERMARK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(20);

/// An input partition's time: the highest timestamp read from it (or the floor idleness
/// moved it to), the offset of the last record read, and the highest floor idleness set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionTime {
    pub time: i64,
    pub offset: i64,
    pub floor: i64,
}

impl Default for PartitionTime {
    fn default() -> Self {
        Self {
            time: i64::MIN,
            offset: -1,
            floor: i64::MIN,
        }
    }
}

impl PartitionTime {
    /// Reads a record: its position (`line` 0), and whether it is late (its timestamp is
    /// below a floor that idleness set, so it may be placed after records the clerk puts
    /// after it).
    pub fn read(
        &mut self,
        topic: u8,
        partition: i32,
        offset: i64,
        timestamp: i64,
    ) -> (Position, bool) {
        self.time = self.time.max(timestamp);
        self.offset = offset;
        let position = Position {
            time: self.time,
            topic,
            partition,
            offset,
            line: 0,
        };
        (position, timestamp < self.floor)
    }

    /// Moves the time to `floor` if it is behind: the partition has been idle, and a record
    /// that still comes with an older timestamp is placed at `floor`. Whether it moved.
    pub fn advance_to(&mut self, floor: i64) -> bool {
        let moved = floor > self.time;
        self.time = self.time.max(floor);
        self.floor = self.floor.max(floor);
        moved
    }

    /// The promise this partition makes: every position it gives from now on is above this.
    pub fn watermark(&self, topic: u8, partition: i32) -> Option<Position> {
        (self.time > i64::MIN).then_some(Position {
            time: self.time,
            topic,
            partition,
            offset: self.offset,
            line: u32::MAX,
        })
    }
}

/// An entry of an inventory task's merge buffer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Queued {
    Reserve {
        reply_partition: i32,
        command: LineCommand,
        /// See [`CommandEnvelope::sole_line`](crate::topology::CommandEnvelope::sole_line).
        sole_line: bool,
    },
    Adjustment(InventoryAdjusted),
}

/// [`Queued`] before `sole_line`, as buffers stored it (decoded when a store written before
/// the change is opened).
#[derive(Deserialize)]
enum QueuedBeforeSoleLine {
    Reserve {
        reply_partition: i32,
        command: LineCommand,
    },
    Adjustment(InventoryAdjusted),
}

impl Queued {
    /// Decodes a buffered entry as the store holds it: `(position, entry)`, in this format or
    /// the one before `sole_line`.
    pub fn decode_stored(bytes: &[u8]) -> Result<(Position, Queued), FormatError> {
        let error = match format::decode::<(Position, Queued)>(bytes) {
            Ok(stored) => return Ok(stored),
            Err(error) => error,
        };
        let (position, old) =
            format::decode::<(Position, QueuedBeforeSoleLine)>(bytes).map_err(|_| error)?;
        let entry = match old {
            QueuedBeforeSoleLine::Reserve {
                reply_partition,
                command,
            } => Queued::Reserve {
                reply_partition,
                command,
                sole_line: false,
            },
            QueuedBeforeSoleLine::Adjustment(adjustment) => Queued::Adjustment(adjustment),
        };
        Ok((position, entry))
    }
}

impl Queued {
    pub fn sku(&self) -> &str {
        match self {
            Queued::Reserve { command, .. } => command.sku(),
            Queued::Adjustment(adjustment) => &adjustment.sku,
        }
    }
}

/// An inventory task's merge: a watermark per origin (each order partition, then the task's
/// adjustments partition), the entries not yet at the frontier, the entries past it that wait
/// per sku, and the units of pending holds per sku.
#[derive(Debug, Default)]
pub struct Merge {
    pub watermarks: Vec<Position>,
    pub buffer: BTreeMap<Position, Queued>,
    pub waiting: HashMap<String, VecDeque<(Position, Queued)>>,
    pub held: HashMap<String, i64>,
}

impl Merge {
    /// A merge of `origins` origins, nothing known of any yet.
    pub fn new(origins: usize) -> Self {
        Self {
            watermarks: vec![Position::MIN; origins],
            ..Self::default()
        }
    }

    /// Origin `origin` promises nothing at or below `position` from now on.
    pub fn promise(&mut self, origin: usize, position: Position) {
        if let Some(mark) = self.watermarks.get_mut(origin) {
            *mark = (*mark).max(position);
        }
    }

    /// The lowest watermark: every entry at or below it can be decided.
    pub fn frontier(&self) -> Position {
        self.watermarks
            .iter()
            .copied()
            .min()
            .unwrap_or(Position::MIN)
    }

    /// The next buffered entry at or below the frontier, taken out of the buffer.
    pub fn next_ready(&mut self) -> Option<(Position, Queued)> {
        let frontier = self.frontier();
        let entry = self.buffer.first_entry()?;
        if *entry.key() > frontier {
            return None;
        }
        Some(entry.remove_entry())
    }

    /// Whether entries for `sku` already wait (a new one queues behind them).
    pub fn is_waiting(&self, sku: &str) -> bool {
        self.waiting.get(sku).is_some_and(|q| !q.is_empty())
    }

    pub fn wait(&mut self, position: Position, entry: Queued) {
        self.waiting
            .entry(entry.sku().to_owned())
            .or_default()
            .push_back((position, entry));
    }

    /// Units of `sku` held by orders not decided yet.
    pub fn held(&self, sku: &str) -> i64 {
        self.held.get(sku).copied().unwrap_or(0)
    }

    pub fn hold(&mut self, sku: &str, quantity: i64) {
        *self.held.entry(sku.to_owned()).or_default() += quantity;
    }

    pub fn settle(&mut self, sku: &str, quantity: i64) {
        if let Some(held) = self.held.get_mut(sku) {
            *held -= quantity;
            if *held <= 0 {
                self.held.remove(sku);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(time: i64, partition: i32, offset: i64) -> Position {
        Position {
            time,
            topic: 1,
            partition,
            offset,
            line: 0,
        }
    }

    /// The formats before `sole_line`, as a store or topic written by that build holds them.
    #[derive(Serialize)]
    enum OldQueued {
        Reserve {
            reply_partition: i32,
            command: LineCommand,
        },
    }

    #[derive(Serialize)]
    struct OldEnvelope {
        reply_partition: i32,
        command: LineCommand,
        position: Option<Position>,
    }

    fn reserve() -> LineCommand {
        LineCommand::Reserve {
            order_id: "o-1".into(),
            line: 0,
            sku: "SKU-1".into(),
            quantity: 2,
        }
    }

    #[test]
    fn entries_and_commands_from_before_sole_line_still_decode_as_held_reserves() {
        let stored = format::encode(&(
            at(5, 0, 1),
            OldQueued::Reserve {
                reply_partition: 3,
                command: reserve(),
            },
        ));
        let expected = Queued::Reserve {
            reply_partition: 3,
            command: reserve(),
            sole_line: false,
        };
        assert_eq!(
            Queued::decode_stored(&stored).expect("decodes"),
            (at(5, 0, 1), expected.clone())
        );
        let now = format::encode(&(at(5, 0, 1), &expected));
        assert_eq!(Queued::decode_stored(&now).expect("decodes").1, expected);

        let sent = format::encode(&OldEnvelope {
            reply_partition: 3,
            command: reserve(),
            position: Some(at(5, 0, 1)),
        });
        let Ok(crate::topology::LinesRecord::Command(envelope)) =
            crate::topology::LinesRecord::decode(Some(b"SKU-1"), &sent)
        else {
            panic!("a command");
        };
        assert_eq!(envelope.position, Some(at(5, 0, 1)));
        assert!(!envelope.sole_line, "held, as its build would have held it");
    }

    #[test]
    fn partition_time_keeps_the_highest_timestamp_and_promises_past_it() {
        let mut time = PartitionTime::default();
        assert_eq!(time.watermark(1, 0), None);
        assert_eq!(time.read(1, 0, 0, 50), (at(50, 0, 0), false));
        // Backwards: placed at 50, and not late (the clerk does the same).
        assert_eq!(time.read(1, 0, 1, 40), (at(50, 0, 1), false));
        let mark = time.watermark(1, 0).expect("a watermark");
        assert!(mark > at(50, 0, 1) && mark < at(50, 0, 2));
        assert!(time.advance_to(60));
        assert!(!time.advance_to(55));
        assert_eq!(time.read(1, 0, 2, 58), (at(60, 0, 2), true));
    }

    #[test]
    fn the_frontier_is_the_slowest_origin() {
        let mut merge = Merge::new(2);
        let entry = Queued::Adjustment(InventoryAdjusted {
            adjustment_id: "a".into(),
            sku: "A".into(),
            mode: schemas::AdjustmentMode::Delta,
            quantity: 1,
            reason: schemas::AdjustmentReason::Restock,
            adjusted_at: 0,
            product_name: None,
            unit_price_cents: None,
        });
        merge.buffer.insert(at(10, 0, 0), entry.clone());
        merge.promise(0, at(10, 0, 0));
        assert_eq!(merge.next_ready(), None, "origin 1 has promised nothing");
        merge.promise(1, at(9, 1, 5));
        assert_eq!(merge.next_ready(), None);
        merge.promise(1, at(10, 1, 0));
        assert_eq!(merge.next_ready(), Some((at(10, 0, 0), entry)));
        merge.promise(1, at(5, 1, 0)); // promises never go back
        assert_eq!(merge.watermarks[1], at(10, 1, 0));
    }
}
