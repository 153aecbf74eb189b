//! The clerk: a single-threaded execution of the rules over the input records, one at a time,
//! in canonical order. It is the reference that event-time decisions must equal (the topology
//! driver's property tests and `processor audit` compare against it).
//!
//! The canonical order is the merge of every input partition, each read in offset order, that
//! always takes next the partition head with the lowest (timestamp, topic, partition). Each
//! order is taken to its end before the next record: its lines are reserved one by one against
//! the stock, and the order is confirmed, or rejected with what it reserved given back, by the
//! same functions the tasks call ([`order`], [`inventory`]).
//!
//! Retention is modelled as the tasks apply it: the clerk keeps each input partition's time
//! (the highest timestamp read from it so far), and an order record whose partition time is
//! `M` finds a decided order of its id forgotten if that order's time is below `M` minus the
//! retention ([`order::expired`]); it is then a new order, decided again.

use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::time::Duration;

use schemas::{InventoryAdjusted, OrderCreated, RejectedLine, RejectionReason};

use super::inventory::{self, Reservation, SkuRecord};
use super::order::{self, OrderDecision, OrderRecord, Outcome};
use super::{Change, LineCommand};

/// One input record, decoded.
#[derive(Debug, Clone)]
pub struct InputRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp: i64,
    pub input: Input,
}

/// What an input record holds.
#[derive(Debug, Clone)]
pub enum Input {
    Order(OrderCreated),
    Adjustment(InventoryAdjusted),
    /// A record that does not decode: dead-lettered, it changes nothing.
    Poison,
    /// An order on a partition other than its id's: the processor re-produces it to its id's
    /// partition, where the copy is decided. Here it only moves its partition's time.
    Rerouted,
}

/// An order's outcome as the audit compares it: status, reason and lines, not timestamps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Confirmed,
    Rejected {
        reason: RejectionReason,
        lines: Vec<RejectedLine>,
    },
}

impl From<&Outcome> for Decision {
    fn from(outcome: &Outcome) -> Self {
        match outcome {
            Outcome::Confirmed(_) => Decision::Confirmed,
            Outcome::Rejected(rejected) => Decision::Rejected {
                reason: rejected.reason,
                lines: rejected.lines.clone(),
            },
        }
    }
}

/// What the clerk ends with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SerialResult {
    /// Every order id's decisions, in canonical order: one, unless a record of the id came
    /// after the retention of its decided order had passed.
    pub decisions: BTreeMap<String, Vec<Decision>>,
    /// Every sku's available stock.
    pub stock: BTreeMap<String, i64>,
    /// Order ids seen again after their first record.
    pub duplicates: u64,
}

/// `records` in canonical order (see the module's documentation).
pub fn canonical_order(records: Vec<InputRecord>) -> Vec<InputRecord> {
    let mut partitions: BTreeMap<(String, i32), Vec<InputRecord>> = BTreeMap::new();
    for record in records {
        partitions
            .entry((record.topic.clone(), record.partition))
            .or_default()
            .push(record);
    }
    let mut queues: Vec<std::vec::IntoIter<InputRecord>> = Vec::new();
    for (_, mut records) in partitions {
        records.sort_by_key(|r| r.offset);
        queues.push(records.into_iter());
    }
    // Min-heap of heads by (timestamp, topic, partition), with the queue's index.
    let mut heads = BinaryHeap::new();
    let mut held: Vec<Option<InputRecord>> = Vec::with_capacity(queues.len());
    for (i, queue) in queues.iter_mut().enumerate() {
        let head = queue.next();
        if let Some(r) = &head {
            heads.push(std::cmp::Reverse((
                r.timestamp,
                r.topic.clone(),
                r.partition,
                i,
            )));
        }
        held.push(head);
    }
    let mut merged = Vec::new();
    while let Some(std::cmp::Reverse((_, _, _, i))) = heads.pop() {
        let record = held[i]
            .take()
            .expect("invariant: a head in the heap is held");
        merged.push(record);
        if let Some(next) = queues[i].next() {
            heads.push(std::cmp::Reverse((
                next.timestamp,
                next.topic.clone(),
                next.partition,
                i,
            )));
            held[i] = Some(next);
        }
    }
    merged
}

/// The clerk's state: every order seen, the inventory store, and every input partition's time.
#[derive(Debug, Default)]
pub struct Clerk {
    retention_ms: i64,
    times: HashMap<(String, i32), i64>,
    orders: HashMap<String, OrderRecord>,
    skus: HashMap<String, SkuRecord>,
    reservations: HashMap<(String, u32), Reservation>,
    applied: HashSet<String>,
    result: SerialResult,
}

impl Clerk {
    /// A clerk that remembers a decided order for `retention` of event time.
    pub fn new(retention: Duration) -> Self {
        Self {
            retention_ms: i64::try_from(retention.as_millis()).unwrap_or(i64::MAX),
            ..Self::default()
        }
    }

    /// Applies one record (the next in canonical order), taking an order to its decision.
    pub fn apply(&mut self, record: InputRecord) {
        let time = self
            .times
            .entry((record.topic, record.partition))
            .or_insert(i64::MIN);
        *time = (*time).max(record.timestamp);
        let time = *time;
        match record.input {
            Input::Order(created) => self.order(created, time),
            Input::Adjustment(adjustment) => self.adjustment(adjustment),
            Input::Poison | Input::Rerouted => {}
        }
    }

    fn order(&mut self, created: OrderCreated, time: i64) {
        if order::oversized(&created).is_some() {
            return; // dead-lettered, as the tasks do: it changes nothing
        }
        let order_id = created.order_id.clone();
        let forgotten = match self.orders.get(&order_id) {
            Some(old) if order::expired(old, time, self.retention_ms) => {
                order::forget(&order_id, old)
            }
            _ => Vec::new(),
        };
        // As the tasks do: the old order's reservations go before the new one reserves.
        for command in forgotten {
            self.command(command);
        }
        let existing = self
            .orders
            .get(&order_id)
            .filter(|r| !order::expired(r, time, self.retention_ms));
        let decision = order::on_order_created(existing, created, time, 0);
        if decision.duplicate {
            self.result.duplicates += 1;
            return;
        }
        // The reserves go out line by line, each result is taken in as it comes, and the
        // releases of a rejection go out after every line has answered, as in the tasks.
        let mut pending = std::collections::VecDeque::from([decision]);
        while let Some(decision) = pending.pop_front() {
            let OrderDecision {
                record,
                commands,
                outcome,
                ..
            } = decision;
            if let Some(record) = record {
                self.orders.insert(order_id.clone(), record);
            }
            if let Some(outcome) = &outcome {
                self.result
                    .decisions
                    .entry(order_id.clone())
                    .or_default()
                    .push(Decision::from(outcome));
            }
            for command in commands {
                if let Some(result) = self.command(command) {
                    let record = self.orders.get(&order_id).cloned();
                    let next = order::on_line_result(record, result, 0);
                    if let Some(record) = &next.record {
                        self.orders.insert(order_id.clone(), record.clone());
                    }
                    pending.push_back(next);
                }
            }
        }
    }

    /// A reserve or release against the inventory; the line result of a reserve.
    fn command(&mut self, command: LineCommand) -> Option<super::LineResult> {
        let (order_id, line) = match &command {
            LineCommand::Reserve { order_id, line, .. }
            | LineCommand::Release { order_id, line, .. }
            | LineCommand::Confirm { order_id, line, .. }
            | LineCommand::Forget { order_id, line, .. } => (order_id.clone(), *line),
        };
        let sku = command.sku().to_owned();
        let key = (order_id, line);
        let decision =
            inventory::on_command(self.skus.get(&sku), self.reservations.get(&key), command, 0);
        match decision.sku {
            Change::Put(record) => {
                self.skus.insert(sku, record);
            }
            Change::Delete => {
                self.skus.remove(&sku);
            }
            Change::Keep => {}
        }
        match decision.reservation {
            Change::Put(reservation) => {
                self.reservations.insert(key, reservation);
            }
            Change::Delete => {
                self.reservations.remove(&key);
            }
            Change::Keep => {}
        }
        decision.result
    }

    fn adjustment(&mut self, adjustment: InventoryAdjusted) {
        let sku = adjustment.sku.clone();
        let id = adjustment.adjustment_id.clone();
        let applied = self.applied.contains(&id);
        let decision = inventory::on_adjustment(self.skus.get(&sku), applied, adjustment, 0);
        if decision.applied.is_some() {
            self.applied.insert(id);
        }
        if let Change::Put(record) = decision.sku {
            self.skus.insert(sku, record);
        }
    }

    /// The decisions and the stock.
    pub fn finish(mut self) -> SerialResult {
        self.result.stock = self
            .skus
            .into_iter()
            .map(|(sku, record)| (sku, record.available))
            .collect();
        self.result
    }
}

/// The clerk's result over `records` (in any order: they are put in canonical order first),
/// remembering a decided order for `retention`.
pub fn run(records: Vec<InputRecord>, retention: Duration) -> SerialResult {
    let mut clerk = Clerk::new(retention);
    for record in canonical_order(records) {
        clerk.apply(record);
    }
    clerk.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::{AdjustmentMode, AdjustmentReason, OrderLine};

    fn order(id: &str, lines: &[(&str, i32)]) -> Input {
        Input::Order(OrderCreated {
            order_id: id.into(),
            customer_id: "c".into(),
            created_at: 0,
            currency: "EUR".into(),
            lines: lines
                .iter()
                .map(|(sku, quantity)| OrderLine {
                    sku: (*sku).into(),
                    quantity: *quantity,
                    unit_price_cents: 100,
                })
                .collect(),
        })
    }

    fn stock(id: &str, sku: &str, quantity: i64) -> Input {
        Input::Adjustment(InventoryAdjusted {
            adjustment_id: id.into(),
            sku: sku.into(),
            mode: AdjustmentMode::Absolute,
            quantity,
            reason: AdjustmentReason::Initial,
            adjusted_at: 0,
            product_name: None,
            unit_price_cents: None,
        })
    }

    fn at(topic: &str, partition: i32, offset: i64, timestamp: i64, input: Input) -> InputRecord {
        InputRecord {
            topic: topic.into(),
            partition,
            offset,
            timestamp,
            input,
        }
    }

    const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);

    fn weekly(records: Vec<InputRecord>) -> SerialResult {
        run(records, WEEK)
    }

    fn ids(records: &[InputRecord]) -> Vec<(String, i32, i64)> {
        records
            .iter()
            .map(|r| (r.topic.clone(), r.partition, r.offset))
            .collect()
    }

    #[test]
    fn the_merge_takes_the_lowest_head_and_keeps_offset_order_in_a_partition() {
        let records = vec![
            at("orders", 0, 0, 5, Input::Poison),
            at("orders", 0, 1, 1, Input::Poison), // backwards: stays after offset 0
            at("orders", 1, 0, 3, Input::Poison),
            at("adjustments", 1, 0, 5, Input::Poison), // ties on time: topic name first
        ];
        let merged = canonical_order(records);
        assert_eq!(
            ids(&merged),
            vec![
                ("orders".into(), 1, 0),
                ("adjustments".into(), 1, 0),
                ("orders".into(), 0, 0),
                ("orders".into(), 0, 1),
            ]
        );
    }

    #[test]
    fn a_doomed_order_holds_nothing_and_a_later_order_gets_the_stock() {
        // o1 wants A (available) and B (short): rejected, and A stays for o2.
        let result = weekly(vec![
            at("adj", 0, 0, 1, stock("s-a", "A", 2)),
            at("adj", 0, 1, 2, stock("s-b", "B", 1)),
            at("orders", 0, 0, 10, order("o1", &[("A", 2), ("B", 5)])),
            at("orders", 0, 1, 11, order("o2", &[("A", 2)])),
            at("orders", 0, 2, 12, order("o2", &[("A", 2)])),
        ]);
        assert_eq!(
            result.decisions["o1"][..],
            [Decision::Rejected {
                reason: RejectionReason::InsufficientStock,
                lines: vec![RejectedLine {
                    sku: "B".into(),
                    requested: 5,
                    available: Some(1),
                }],
            }]
        );
        assert_eq!(result.decisions["o2"], [Decision::Confirmed]);
        assert_eq!(result.duplicates, 1);
        assert_eq!(
            result.stock,
            BTreeMap::from([("A".into(), 0), ("B".into(), 1)])
        );
    }

    #[test]
    fn lines_of_one_order_on_one_sku_add_up() {
        let result = weekly(vec![
            at("adj", 0, 0, 1, stock("s-a", "A", 3)),
            at("orders", 0, 0, 10, order("o1", &[("A", 2), ("A", 2)])),
        ]);
        assert_eq!(
            result.decisions["o1"][..],
            [Decision::Rejected {
                reason: RejectionReason::InsufficientStock,
                lines: vec![RejectedLine {
                    sku: "A".into(),
                    requested: 2,
                    available: Some(1),
                }],
            }]
        );
        assert_eq!(result.stock["A"], 3);
    }

    #[test]
    fn a_decided_order_is_forgotten_by_its_partitions_time_after_the_retention() {
        let retention = Duration::from_millis(100);
        let result = run(
            vec![
                at("adj", 0, 0, 1, stock("s-a", "A", 3)),
                at("orders", 0, 0, 1_000, order("o1", &[("A", 1)])),
                // Within the retention: a duplicate.
                at("orders", 0, 1, 1_100, order("o1", &[("A", 1)])),
                // Another partition's time does not count: still a duplicate of o1's time.
                at("orders", 1, 0, 5_000, order("o2", &[("A", 1)])),
                at("orders", 0, 2, 1_050, order("o1", &[("A", 1)])),
                // Partition 0's time passes 1,100: o1 is forgotten and decided again, once.
                at("orders", 0, 3, 1_101, order("o1", &[("A", 1)])),
                at("orders", 0, 4, 1_102, order("o1", &[("A", 1)])),
                // Again past the retention of the second one (time 1,101): decided a third
                // time, on the stock left then (o2, at 5,000, comes after).
                at("orders", 0, 5, 1_300, order("o1", &[("A", 5)])),
                // Backwards in time: the partition's time stays 1,300, so a duplicate.
                at("orders", 0, 6, 900, order("o1", &[("A", 1)])),
            ],
            retention,
        );
        let short = Decision::Rejected {
            reason: RejectionReason::InsufficientStock,
            lines: vec![RejectedLine {
                sku: "A".into(),
                requested: 5,
                available: Some(1),
            }],
        };
        assert_eq!(
            result.decisions["o1"],
            [Decision::Confirmed, Decision::Confirmed, short]
        );
        assert_eq!(result.decisions["o2"], [Decision::Confirmed]);
        assert_eq!(result.duplicates, 4);
        assert_eq!(result.stock["A"], 0);
    }
}
