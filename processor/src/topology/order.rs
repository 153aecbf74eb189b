//! Sub-topology A, by order_id: an order's life from `OrderCreated` to its one outcome.
//!
//! Store `orders`: order_id -> [`OrderRecord`]. A record exists from the first time an order id
//! is seen, so a repeated id is recognised as a duplicate and gets no second outcome, until
//! the order is decided and its retention has passed in event time ([`expired`]): then the id
//! is forgotten, and a record of it is a new order (ARCHITECTURE.md, "Order retention").

use schemas::{
    OrderConfirmed, OrderCreated, OrderLine, OrderRejected, RejectedLine, RejectionReason,
};
use serde::{Deserialize, Serialize};

use super::{LineCommand, LineOutcome, LineResult};

/// What the order task keeps per order id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRecord {
    pub customer_id: String,
    pub currency: String,
    pub created_at: i64,
    pub lines: Vec<OrderLine>,
    pub total_cents: i64,
    pub status: OrderStatus,
    /// When the outcome was decided (milliseconds since the epoch).
    pub decided_at: Option<i64>,
    /// The order's time for retention: its partition's time (the highest record timestamp
    /// up to and including its record) when it was created. `None` in a record written by a
    /// build before retention: such an order is never forgotten. The last field, read as
    /// `None` when the bytes end before it; a build before it ignores it.
    #[serde(default, deserialize_with = "trailing")]
    pub time: Option<i64>,
}

/// A trailing optional field: `None` when the value ends before it (a record written before
/// the field existed; postcard has no field names, and an older build reads the fields it
/// knows and ignores the rest).
fn trailing<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    Ok(Option::<i64>::deserialize(deserializer).unwrap_or(None))
}

/// Whether a stored order counts as gone for a record whose partition time is
/// `partition_time`: it is decided, and its time is more than `retention_ms` behind. Pending
/// orders are never forgotten (their line results are still to come).
pub fn expired(record: &OrderRecord, partition_time: i64, retention_ms: i64) -> bool {
    let decided = !matches!(record.status, OrderStatus::Pending { .. });
    decided
        && record
            .time
            .is_some_and(|time| time < partition_time.saturating_sub(retention_ms))
}

/// Where an order stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Waiting for a result per line (`None` until it arrives).
    Pending {
        results: Vec<Option<LineOutcome>>,
    },
    Confirmed,
    Rejected {
        reason: RejectionReason,
        message: String,
        lines: Vec<RejectedLine>,
    },
}

/// The retention index's keys in the `orders` store: a zero byte (no order id starts with
/// one, and the read model skips such keys), `t/`, the order's time in 8 bytes that sort as
/// the time does (big-endian, sign bit flipped), and the order id. One per decided order
/// that has a time, so expiry reads the oldest first and never scans every order.
pub mod keys {
    /// The prefix of every index key.
    pub const EXPIRY_PREFIX: &[u8] = b"\0t/";

    /// The index key of the order `order_id` of time `time`.
    pub fn expiry(time: i64, order_id: &str) -> Vec<u8> {
        let mut key = expiry_below(time);
        key.extend_from_slice(order_id.as_bytes());
        key
    }

    /// The lowest index key of time `time`: every key of an earlier time is below it.
    pub fn expiry_below(time: i64) -> Vec<u8> {
        let mut key = Vec::with_capacity(EXPIRY_PREFIX.len() + 8 + 16);
        key.extend_from_slice(EXPIRY_PREFIX);
        key.extend_from_slice(&((time as u64) ^ (1 << 63)).to_be_bytes());
        key
    }

    /// The time and order id of an index key (`None`: not one).
    pub fn parse_expiry(key: &[u8]) -> Option<(i64, &str)> {
        let rest = key.strip_prefix(EXPIRY_PREFIX)?;
        let (time, id) = rest.split_at_checked(8)?;
        let time = u64::from_be_bytes(time.try_into().ok()?) ^ (1 << 63);
        Some((time as i64, std::str::from_utf8(id).ok()?))
    }
}

/// What deciding one record produced.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OrderDecision {
    /// The order's new record, if it changed.
    pub record: Option<OrderRecord>,
    /// Commands to inventory tasks (keyed by sku).
    pub commands: Vec<LineCommand>,
    pub outcome: Option<Outcome>,
    /// The order id had been seen before; nothing else happened.
    pub duplicate: bool,
}

/// An order's one outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Confirmed(OrderConfirmed),
    Rejected(OrderRejected),
}

/// The most lines an order may have; an order with more is rejected as `INVALID_ORDER`.
pub const MAX_LINES: usize = 1_000;

/// The longest order id or sku, in bytes. An order with a longer one is dead-lettered, not
/// rejected: its outcome (and its store record) would echo it, and could outgrow what Kafka
/// accepts in one record.
pub const MAX_ID_BYTES: usize = 256;

/// Why an order is too large to be decided, or `None`: an order id or a sku longer than
/// [`MAX_ID_BYTES`]. Such an order is dead-lettered as it was read.
pub fn oversized(order: &OrderCreated) -> Option<String> {
    if order.order_id.len() > MAX_ID_BYTES {
        return Some(format!(
            "order_id is {} bytes long (at most {MAX_ID_BYTES})",
            order.order_id.len()
        ));
    }
    let (i, line) = order
        .lines
        .iter()
        .enumerate()
        .find(|(_, l)| l.sku.len() > MAX_ID_BYTES)?;
    Some(format!(
        "line {i}'s sku is {} bytes long (at most {MAX_ID_BYTES})",
        line.sku.len()
    ))
}

/// Why an order is invalid, or `None` if it is well-formed.
pub fn validate(order: &OrderCreated) -> Option<String> {
    if order.order_id.is_empty() {
        return Some("order_id is empty".to_owned());
    }
    if order.lines.is_empty() {
        return Some("the order has no lines".to_owned());
    }
    if order.lines.len() > MAX_LINES {
        return Some(format!(
            "the order has {} lines (at most {MAX_LINES})",
            order.lines.len()
        ));
    }
    for (i, line) in order.lines.iter().enumerate() {
        if line.sku.is_empty() {
            return Some(format!("line {i} has no sku"));
        }
        if line.quantity <= 0 {
            return Some(format!(
                "line {i} ({}) has quantity {} (must be > 0)",
                line.sku, line.quantity
            ));
        }
        if line.unit_price_cents < 0 {
            return Some(format!(
                "line {i} ({}) has a negative price {}",
                line.sku, line.unit_price_cents
            ));
        }
    }
    let total = order.lines.iter().try_fold(0i64, |acc, l| {
        acc.checked_add(i64::from(l.quantity).checked_mul(l.unit_price_cents)?)
    });
    if total.is_none() {
        return Some("the order total overflows".to_owned());
    }
    None
}

/// What forgetting an expired order sends: for a confirmed order, a [`LineCommand::Forget`]
/// per line (its reservations go, its stock stays taken); a rejected order holds nothing.
pub fn forget(order_id: &str, record: &OrderRecord) -> Vec<LineCommand> {
    if record.status != OrderStatus::Confirmed {
        return Vec::new();
    }
    record
        .lines
        .iter()
        .enumerate()
        .map(|(i, line)| LineCommand::Forget {
            order_id: order_id.to_owned(),
            line: i as u32,
            sku: line.sku.clone(),
        })
        .collect()
}

/// A new `OrderCreated` at partition time `time`: a duplicate, an invalid order (rejected at
/// once), or a valid one whose lines go out as reserve commands. `existing` is the id's record
/// unless it has [`expired`].
pub fn on_order_created(
    existing: Option<&OrderRecord>,
    order: OrderCreated,
    time: i64,
    now: i64,
) -> OrderDecision {
    if existing.is_some() {
        return OrderDecision {
            duplicate: true,
            ..OrderDecision::default()
        };
    }
    if let Some(message) = validate(&order) {
        let lines = order
            .lines
            .iter()
            .map(|l| RejectedLine {
                sku: l.sku.clone(),
                requested: l.quantity,
                available: None,
            })
            .collect();
        return reject(
            record_of(&order, time),
            &order.order_id,
            RejectionReason::InvalidOrder,
            message,
            lines,
            Vec::new(),
            now,
        );
    }
    let commands = order
        .lines
        .iter()
        .enumerate()
        .map(|(i, l)| LineCommand::Reserve {
            order_id: order.order_id.clone(),
            line: i as u32,
            sku: l.sku.clone(),
            quantity: i64::from(l.quantity),
        })
        .collect();
    OrderDecision {
        record: Some(record_of(&order, time)),
        commands,
        ..OrderDecision::default()
    }
}

/// The record of a new order: pending, no line answered yet, `time` its retention time.
pub fn record_of(order: &OrderCreated, time: i64) -> OrderRecord {
    OrderRecord {
        customer_id: order.customer_id.clone(),
        currency: order.currency.clone(),
        created_at: order.created_at,
        total_cents: if validate(order).is_none() {
            order.total_cents()
        } else {
            0
        },
        status: OrderStatus::Pending {
            results: vec![None; order.lines.len()],
        },
        lines: order.lines.clone(),
        decided_at: None,
        time: Some(time),
    }
}

/// A line's result. When every line has answered, the order is confirmed, or rejected with
/// the reserved lines released.
pub fn on_line_result(
    existing: Option<OrderRecord>,
    result: LineResult,
    now: i64,
) -> OrderDecision {
    let Some(mut record) = existing else {
        // A result for an order this task never saw: nothing to do (it cannot happen unless
        // the store was lost, and then there is nothing to attach it to).
        return OrderDecision::default();
    };
    let OrderStatus::Pending { results } = &mut record.status else {
        return OrderDecision::default(); // already decided: a replayed result
    };
    let Some(slot) = results.get_mut(result.line as usize) else {
        return OrderDecision::default();
    };
    if slot.is_some() {
        return OrderDecision::default(); // a replayed result
    }
    *slot = Some(result.outcome);
    if results.iter().any(Option::is_none) {
        return OrderDecision {
            record: Some(record),
            ..OrderDecision::default()
        };
    }
    let outcomes: Vec<LineOutcome> = results.iter().flatten().copied().collect();
    let order_id = result.order_id;
    if outcomes.iter().all(|o| *o == LineOutcome::Reserved) {
        record.status = OrderStatus::Confirmed;
        record.decided_at = Some(now);
        let confirmed = OrderConfirmed {
            order_id,
            customer_id: record.customer_id.clone(),
            currency: record.currency.clone(),
            lines: record.lines.clone(),
            total_cents: record.total_cents,
            created_at: record.created_at,
            confirmed_at: now,
        };
        let confirms = record
            .lines
            .iter()
            .enumerate()
            .map(|(i, line)| LineCommand::Confirm {
                order_id: confirmed.order_id.clone(),
                line: i as u32,
                sku: line.sku.clone(),
            })
            .collect();
        return OrderDecision {
            record: Some(record),
            commands: confirms,
            outcome: Some(Outcome::Confirmed(confirmed)),
            ..OrderDecision::default()
        };
    }
    let unknown = outcomes.contains(&LineOutcome::UnknownSku);
    let reason = if unknown {
        RejectionReason::UnknownSku
    } else {
        RejectionReason::InsufficientStock
    };
    let mut failed = Vec::new();
    let mut releases = Vec::new();
    for (i, (line, outcome)) in record.lines.iter().zip(&outcomes).enumerate() {
        match outcome {
            LineOutcome::Reserved => releases.push(LineCommand::Release {
                order_id: order_id.clone(),
                line: i as u32,
                sku: line.sku.clone(),
                quantity: i64::from(line.quantity),
            }),
            LineOutcome::Insufficient { available } => failed.push(RejectedLine {
                sku: line.sku.clone(),
                requested: line.quantity,
                available: Some(*available),
            }),
            LineOutcome::UnknownSku => failed.push(RejectedLine {
                sku: line.sku.clone(),
                requested: line.quantity,
                available: None,
            }),
        }
    }
    let message = match reason {
        RejectionReason::UnknownSku => {
            let skus: Vec<&str> = failed
                .iter()
                .filter(|l| l.available.is_none())
                .map(|l| l.sku.as_str())
                .collect();
            format!("unknown sku: {}", skus.join(", "))
        }
        _ => format!(
            "{} of {} lines short of stock",
            failed.len(),
            record.lines.len()
        ),
    };
    reject(record, &order_id, reason, message, failed, releases, now)
}

fn reject(
    mut record: OrderRecord,
    order_id: &str,
    reason: RejectionReason,
    message: String,
    lines: Vec<RejectedLine>,
    releases: Vec<LineCommand>,
    now: i64,
) -> OrderDecision {
    let rejected = OrderRejected {
        order_id: order_id.to_owned(),
        customer_id: record.customer_id.clone(),
        reason,
        message: message.clone(),
        lines: lines.clone(),
        created_at: record.created_at,
        rejected_at: now,
    };
    record.status = OrderStatus::Rejected {
        reason,
        message,
        lines,
    };
    record.decided_at = Some(now);
    OrderDecision {
        record: Some(record),
        commands: releases,
        outcome: Some(Outcome::Rejected(rejected)),
        duplicate: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(id: &str, lines: &[(&str, i32)]) -> OrderCreated {
        OrderCreated {
            order_id: id.into(),
            customer_id: "c".into(),
            created_at: 10,
            currency: "EUR".into(),
            lines: lines
                .iter()
                .map(|&(sku, quantity)| OrderLine {
                    sku: sku.into(),
                    quantity,
                    unit_price_cents: 100,
                })
                .collect(),
        }
    }

    fn result(id: &str, line: u32, outcome: LineOutcome) -> LineResult {
        LineResult {
            order_id: id.into(),
            line,
            outcome,
        }
    }

    #[test]
    fn a_valid_order_fans_out_one_reserve_per_line() {
        let decision = on_order_created(None, order("o", &[("A", 1), ("B", 2)]), 5, 20);
        assert_eq!(decision.commands.len(), 2);
        assert_eq!(
            decision.commands[1],
            LineCommand::Reserve {
                order_id: "o".into(),
                line: 1,
                sku: "B".into(),
                quantity: 2
            }
        );
        assert!(decision.outcome.is_none());
        let record = decision.record.expect("stored");
        assert_eq!(record.total_cents, 300);
        assert_eq!(
            record.status,
            OrderStatus::Pending {
                results: vec![None, None]
            }
        );
    }

    #[test]
    fn orders_with_ids_too_long_to_echo_are_oversized() {
        let long = "x".repeat(MAX_ID_BYTES + 1);
        let fits = "x".repeat(MAX_ID_BYTES);
        assert!(oversized(&order(&long, &[("A", 1)])).is_some_and(|r| r.contains("order_id")));
        assert!(
            oversized(&order("o", &[("A", 1), (&long, 1)])).is_some_and(|r| r.contains("line 1"))
        );
        assert_eq!(oversized(&order(&fits, &[(&fits, 1)])), None);
    }

    #[test]
    fn invalid_orders_are_rejected_at_once() {
        for (bad, why) in [
            (order("o", &[]), "no lines"),
            (order("o", &[("A", 0)]), "quantity 0"),
            (order("o", &[("A", -2)]), "quantity -2"),
        ] {
            let decision = on_order_created(None, bad, 5, 20);
            match decision.outcome {
                Some(Outcome::Rejected(r)) => {
                    assert_eq!(r.reason, RejectionReason::InvalidOrder);
                    assert!(r.message.contains(why), "{} names {why}", r.message);
                }
                other => panic!("expected INVALID_ORDER, got {other:?}"),
            }
            assert!(decision.commands.is_empty());
        }
        let too_many: Vec<(&str, i32)> = vec![("A", 1); MAX_LINES + 1];
        assert!(
            validate(&order("o", &too_many))
                .expect("invalid")
                .contains("at most 1000")
        );
        assert_eq!(validate(&order("o", &too_many[1..])), None);
        let mut negative = order("o", &[("A", 1)]);
        negative.lines[0].unit_price_cents = -1;
        assert!(
            validate(&negative)
                .expect("invalid")
                .contains("negative price")
        );
    }

    #[test]
    fn a_repeated_order_id_is_a_duplicate_with_no_outcome() {
        let first = on_order_created(None, order("o", &[("A", 1)]), 5, 20)
            .record
            .expect("stored");
        let again = on_order_created(Some(&first), order("o", &[("A", 1)]), 5, 30);
        assert!(
            again.duplicate
                && again.record.is_none()
                && again.commands.is_empty()
                && again.outcome.is_none()
        );
    }

    #[test]
    fn all_lines_reserved_confirms() {
        let record = on_order_created(None, order("o", &[("A", 1), ("B", 2)]), 5, 20).record;
        let d1 = on_line_result(record, result("o", 1, LineOutcome::Reserved), 30);
        assert!(d1.outcome.is_none());
        let d2 = on_line_result(d1.record, result("o", 0, LineOutcome::Reserved), 40);
        match d2.outcome {
            Some(Outcome::Confirmed(c)) => {
                assert_eq!((c.total_cents, c.created_at, c.confirmed_at), (300, 10, 40));
            }
            other => panic!("expected a confirmation, got {other:?}"),
        }
        assert_eq!(d2.record.expect("stored").status, OrderStatus::Confirmed);
    }

    #[test]
    fn one_short_line_rejects_and_releases_the_others() {
        let record = on_order_created(None, order("o", &[("A", 1), ("B", 5)]), 5, 20).record;
        let d1 = on_line_result(record, result("o", 0, LineOutcome::Reserved), 30);
        let d2 = on_line_result(
            d1.record,
            result("o", 1, LineOutcome::Insufficient { available: 3 }),
            40,
        );
        match &d2.outcome {
            Some(Outcome::Rejected(r)) => {
                assert_eq!(r.reason, RejectionReason::InsufficientStock);
                assert_eq!(
                    r.lines,
                    vec![RejectedLine {
                        sku: "B".into(),
                        requested: 5,
                        available: Some(3)
                    }]
                );
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
        assert_eq!(
            d2.commands,
            vec![LineCommand::Release {
                order_id: "o".into(),
                line: 0,
                sku: "A".into(),
                quantity: 1
            }]
        );
    }

    #[test]
    fn an_unknown_sku_wins_over_short_stock() {
        let record = on_order_created(None, order("o", &[("A", 1), ("Z", 1)]), 5, 20).record;
        let d1 = on_line_result(
            record,
            result("o", 0, LineOutcome::Insufficient { available: 0 }),
            30,
        );
        let d2 = on_line_result(d1.record, result("o", 1, LineOutcome::UnknownSku), 40);
        match d2.outcome {
            Some(Outcome::Rejected(r)) => {
                assert_eq!(r.reason, RejectionReason::UnknownSku);
                assert!(r.message.contains('Z'));
            }
            other => panic!("expected UNKNOWN_SKU, got {other:?}"),
        }
        assert!(
            d2.commands.is_empty(),
            "nothing was reserved, nothing to release"
        );
    }

    #[test]
    fn replayed_results_change_nothing() {
        let record = on_order_created(None, order("o", &[("A", 1)]), 5, 20).record;
        let decided = on_line_result(record, result("o", 0, LineOutcome::Reserved), 30);
        let replay = on_line_result(decided.record, result("o", 0, LineOutcome::Reserved), 40);
        assert_eq!(replay, OrderDecision::default());
        assert_eq!(
            on_line_result(None, result("x", 0, LineOutcome::Reserved), 1),
            OrderDecision::default()
        );
    }

    #[test]
    fn only_a_decided_order_past_its_retention_is_forgotten() {
        let pending = on_order_created(None, order("o", &[("A", 1)]), 1_000, 20)
            .record
            .expect("stored");
        assert_eq!(pending.time, Some(1_000));
        let decided = on_line_result(
            Some(pending.clone()),
            result("o", 0, LineOutcome::Reserved),
            30,
        )
        .record
        .expect("decided");
        // Retention 100: forgotten once the partition's time is past 1,100, not at 1,100.
        assert!(!expired(&decided, 1_100, 100));
        assert!(expired(&decided, 1_101, 100));
        // Pending orders wait for their results, however old.
        assert!(!expired(&pending, i64::MAX, 100));
        // A record from before retention has no time: kept.
        let old = OrderRecord {
            time: None,
            ..decided.clone()
        };
        assert!(!expired(&old, i64::MAX, 100));
        // No overflow at the ends of time.
        assert!(!expired(&decided, i64::MIN, i64::MAX));
        // Forgetting it drops its reservations (a rejected order holds none).
        assert_eq!(
            forget("o", &decided),
            vec![LineCommand::Forget {
                order_id: "o".into(),
                line: 0,
                sku: "A".into()
            }]
        );
        let rejected = on_line_result(
            Some(pending.clone()),
            result("o", 0, LineOutcome::Insufficient { available: 0 }),
            30,
        )
        .record
        .expect("decided");
        assert!(forget("o", &rejected).is_empty());
        // Forgotten, the id is a new order again.
        let again = on_order_created(None, order("o", &[("A", 1)]), 1_101, 40);
        assert!(!again.duplicate && again.commands.len() == 1);
    }

    #[test]
    fn expiry_keys_sort_by_time_and_parse_back() {
        let times = [i64::MIN, -5, -1, 0, 1, 1_000, i64::MAX];
        let keys: Vec<Vec<u8>> = times.iter().map(|&t| keys::expiry(t, "o-1")).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        for (&time, key) in times.iter().zip(&keys) {
            assert_eq!(keys::parse_expiry(key), Some((time, "o-1")));
            assert!(keys::expiry_below(time) <= *key);
            if time < i64::MAX {
                assert!(*key < keys::expiry_below(time + 1));
            }
        }
        assert!(keys::expiry(9, "zzz") < keys::expiry_below(10));
        assert_eq!(keys::parse_expiry(b"o-1"), None);
        assert_eq!(keys::expiry(1, "o")[0], 0, "a key no order id takes");
    }
}
