//! Sub-topology B, by sku: the stream-table join of line commands and inventory adjustments
//! against each sku's stock.
//!
//! Store `inventory`, three kinds of keys (see [`keys`]):
//! - `s/<sku>` -> [`SkuRecord`]: available and reserved units;
//! - `r/<order_id>/<line>` -> [`Reservation`]: what a line holds, so reserving and releasing
//!   are idempotent (keyed by order id and line);
//! - `a/<adjustment_id>` -> [`Applied`]: adjustments already applied, so each applies once.
//!
//! Invariant: `available >= 0` always. A reserve takes stock only if `available >= quantity`.

use schemas::{
    AdjustmentMode, AdjustmentReason, InventoryAdjusted, InventoryChangeReason, InventoryUpdated,
};
use serde::{Deserialize, Serialize};

use super::{Change, LineCommand, LineOutcome, LineResult};

/// The store keys of sub-topology B.
pub mod keys {
    /// The prefix of every sku key.
    pub const SKU_PREFIX: &str = "s/";

    pub fn sku(sku: &str) -> String {
        format!("{SKU_PREFIX}{sku}")
    }
    pub fn reservation(order_id: &str, line: u32) -> String {
        format!("r/{order_id}/{line}")
    }
    pub fn adjustment(adjustment_id: &str) -> String {
        format!("a/{adjustment_id}")
    }

    /// Event-time mode: the prefix of pending holds, `h/<order_id>/<line>` -> [`super::Hold`].
    pub const HOLD_PREFIX: &str = "h/";
    pub fn hold(order_id: &str, line: u32) -> String {
        format!("{HOLD_PREFIX}{order_id}/{line}")
    }

    /// Event-time mode: the prefix of the merge buffer, `q/<sortable position>`.
    pub const QUEUED_PREFIX: &[u8] = b"q/";
    pub fn queued(position: crate::topology::Position) -> Vec<u8> {
        let mut key = QUEUED_PREFIX.to_vec();
        key.extend_from_slice(&position.to_sortable());
        key
    }

    /// Event-time mode: the adjustments partition's time and last offset.
    pub const ADJUSTMENTS_TIME: &[u8] = b"t/adjustments";
}

/// Event-time mode: what a reserved line holds until its order is decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub sku: String,
    pub quantity: i64,
}

/// The most units a sku may hold (available plus reserved): a billion. An adjustment that
/// would take a sku past it, or that moves more than that in one go, is dead-lettered, so
/// stock arithmetic can never overflow.
pub const MAX_STOCK: i64 = 1_000_000_000;

/// Why an adjustment is refused whatever the stock (it goes to the dead-letter topic).
pub fn invalid_adjustment(adjustment: &InventoryAdjusted) -> Option<String> {
    let (sku, quantity) = (&adjustment.sku, adjustment.quantity);
    match adjustment.mode {
        AdjustmentMode::Absolute if quantity < 0 => Some(format!(
            "absolute stock level {quantity} for {sku} is negative"
        )),
        AdjustmentMode::Absolute if quantity > MAX_STOCK => Some(format!(
            "absolute stock level {quantity} for {sku} is over the maximum stock {MAX_STOCK}"
        )),
        AdjustmentMode::Delta if quantity.unsigned_abs() > MAX_STOCK.unsigned_abs() => Some(
            format!("delta {quantity} for {sku} moves more than the maximum stock {MAX_STOCK}"),
        ),
        _ => None,
    }
}

/// Why an adjustment is refused given the sku's stock: it would raise the units the sku holds
/// (available plus reserved) past [`MAX_STOCK`].
fn over_max_stock(
    adjustment: &InventoryAdjusted,
    sku: &SkuRecord,
    available: i64,
) -> Option<String> {
    let held = available.saturating_add(sku.reserved);
    (held > MAX_STOCK && available > sku.available).then(|| {
        format!(
            "{} {} for {} would leave {held} units (available {available}, reserved {}), over the maximum stock {MAX_STOCK}",
            match adjustment.mode {
                AdjustmentMode::Delta => "delta",
                AdjustmentMode::Absolute => "absolute stock level",
            },
            adjustment.quantity,
            adjustment.sku,
            sku.reserved
        )
    })
}

/// Whether an adjustment gives the same stock whether pending holds are released before or
/// after it: a positive delta does; an absolute level or a negative delta (which stops at
/// zero) does not, so it waits for the holds to settle (event-time mode).
pub fn commutes_with_releases(adjustment: &InventoryAdjusted) -> bool {
    adjustment.mode == AdjustmentMode::Delta && adjustment.quantity >= 0
}

/// A sku's stock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkuRecord {
    /// Units that can still be reserved; never negative.
    pub available: i64,
    /// Units held by orders (pending or confirmed).
    pub reserved: i64,
    pub product_name: Option<String>,
    pub unit_price_cents: Option<i64>,
    pub updated_at: i64,
}

/// What one order line holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub sku: String,
    pub quantity: i64,
}

/// An adjustment that was applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub at: i64,
}

/// What deciding one record produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InventoryDecision {
    pub sku: Change<SkuRecord>,
    pub reservation: Change<Reservation>,
    /// Mark the adjustment as applied.
    pub applied: Option<Applied>,
    /// The answer to a reserve command (to the order's task).
    pub result: Option<LineResult>,
    pub update: Option<InventoryUpdated>,
    /// The record is well-formed but makes no sense; it goes to the dead-letter topic.
    pub dead_letter: Option<String>,
    /// A replay of something already applied.
    pub duplicate: bool,
}

impl Default for InventoryDecision {
    fn default() -> Self {
        Self {
            sku: Change::Keep,
            reservation: Change::Keep,
            applied: None,
            result: None,
            update: None,
            dead_letter: None,
            duplicate: false,
        }
    }
}

fn update(
    sku: &str,
    record: &SkuRecord,
    change: i64,
    reason: InventoryChangeReason,
    now: i64,
) -> InventoryUpdated {
    InventoryUpdated {
        sku: sku.to_owned(),
        order_id: None,
        adjustment_id: None,
        change,
        available_after: record.available,
        reserved_after: record.reserved,
        reason,
        updated_at: now,
    }
}

/// A reserve or release command for a line.
pub fn on_command(
    sku_record: Option<&SkuRecord>,
    reservation: Option<&Reservation>,
    command: LineCommand,
    now: i64,
) -> InventoryDecision {
    match command {
        LineCommand::Reserve {
            order_id,
            line,
            sku,
            quantity,
        } => {
            let answer = |outcome| {
                Some(LineResult {
                    order_id: order_id.clone(),
                    line,
                    outcome,
                })
            };
            if reservation.is_some() {
                // Already reserved (a replayed command): answer the same again, change nothing.
                return InventoryDecision {
                    result: answer(LineOutcome::Reserved),
                    duplicate: true,
                    ..Default::default()
                };
            }
            let Some(current) = sku_record else {
                return InventoryDecision {
                    result: answer(LineOutcome::UnknownSku),
                    ..Default::default()
                };
            };
            if quantity <= 0 || current.available < quantity {
                let outcome = LineOutcome::Insufficient {
                    available: current.available,
                };
                return InventoryDecision {
                    result: answer(outcome),
                    ..Default::default()
                };
            }
            let mut next = current.clone();
            next.available -= quantity;
            next.reserved += quantity;
            next.updated_at = now;
            let mut updated = update(&sku, &next, -quantity, InventoryChangeReason::Reserved, now);
            updated.order_id = Some(order_id.clone());
            InventoryDecision {
                reservation: Change::Put(Reservation { sku, quantity }),
                sku: Change::Put(next),
                result: answer(LineOutcome::Reserved),
                update: Some(updated),
                ..Default::default()
            }
        }
        // A confirmed line keeps its stock: nothing changes here (the event-time wiring
        // settles its pending hold).
        LineCommand::Confirm { .. } => InventoryDecision::default(),
        // A forgotten order's line: its reservation key goes; its units stay taken (reserved
        // counts units of confirmed orders).
        LineCommand::Forget { .. } => InventoryDecision {
            reservation: Change::Delete,
            duplicate: reservation.is_none(),
            ..Default::default()
        },
        LineCommand::Release { order_id, sku, .. } => {
            let (Some(held), Some(current)) = (reservation, sku_record) else {
                // Nothing held (a replayed release): nothing to give back.
                return InventoryDecision {
                    duplicate: true,
                    ..Default::default()
                };
            };
            let mut next = current.clone();
            next.available += held.quantity;
            next.reserved -= held.quantity;
            next.updated_at = now;
            let mut updated = update(
                &sku,
                &next,
                held.quantity,
                InventoryChangeReason::Released,
                now,
            );
            updated.order_id = Some(order_id);
            InventoryDecision {
                sku: Change::Put(next),
                reservation: Change::Delete,
                update: Some(updated),
                ..Default::default()
            }
        }
    }
}

/// An inventory adjustment: initial stock, a restock or a correction, applied once per id.
pub fn on_adjustment(
    sku_record: Option<&SkuRecord>,
    already_applied: bool,
    adjustment: InventoryAdjusted,
    now: i64,
) -> InventoryDecision {
    if already_applied {
        return InventoryDecision {
            duplicate: true,
            ..Default::default()
        };
    }
    if let Some(reason) = invalid_adjustment(&adjustment) {
        return InventoryDecision {
            dead_letter: Some(reason),
            ..Default::default()
        };
    }
    let mut next = sku_record.cloned().unwrap_or(SkuRecord {
        available: 0,
        reserved: 0,
        product_name: None,
        unit_price_cents: None,
        updated_at: now,
    });
    let before = next.available;
    let available = match adjustment.mode {
        // Stock never goes negative: a delta larger than what is available empties the sku.
        AdjustmentMode::Delta => before.saturating_add(adjustment.quantity).max(0),
        AdjustmentMode::Absolute => adjustment.quantity,
    };
    if let Some(reason) = over_max_stock(&adjustment, &next, available) {
        return InventoryDecision {
            dead_letter: Some(reason),
            ..Default::default()
        };
    }
    next.available = available;
    next.product_name = adjustment.product_name.or(next.product_name);
    next.unit_price_cents = adjustment.unit_price_cents.or(next.unit_price_cents);
    next.updated_at = now;
    let reason = match adjustment.reason {
        AdjustmentReason::Initial | AdjustmentReason::Restock => InventoryChangeReason::Restocked,
        AdjustmentReason::Correction => InventoryChangeReason::Corrected,
    };
    let mut updated = update(&adjustment.sku, &next, next.available - before, reason, now);
    updated.adjustment_id = Some(adjustment.adjustment_id);
    InventoryDecision {
        sku: Change::Put(next),
        applied: Some(Applied { at: now }),
        update: Some(updated),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stock(available: i64) -> SkuRecord {
        SkuRecord {
            available,
            reserved: 0,
            product_name: None,
            unit_price_cents: None,
            updated_at: 0,
        }
    }

    fn reserve(order: &str, line: u32, quantity: i64) -> LineCommand {
        LineCommand::Reserve {
            order_id: order.into(),
            line,
            sku: "A".into(),
            quantity,
        }
    }

    fn adjust(id: &str, mode: AdjustmentMode, quantity: i64) -> InventoryAdjusted {
        InventoryAdjusted {
            adjustment_id: id.into(),
            sku: "A".into(),
            mode,
            quantity,
            reason: AdjustmentReason::Restock,
            adjusted_at: 0,
            product_name: None,
            unit_price_cents: None,
        }
    }

    #[test]
    fn reserve_takes_stock_only_when_there_is_enough() {
        let d = on_command(Some(&stock(1)), None, reserve("o1", 0, 1), 5);
        assert_eq!(
            d.result.as_ref().map(|r| r.outcome),
            Some(LineOutcome::Reserved)
        );
        let Change::Put(after) = &d.sku else {
            panic!("stock changes")
        };
        assert_eq!((after.available, after.reserved), (0, 1));
        let updated = d.update.expect("an InventoryUpdated");
        assert_eq!(
            (updated.change, updated.available_after, updated.reason),
            (-1, 0, InventoryChangeReason::Reserved)
        );

        let short = on_command(Some(after), None, reserve("o2", 0, 1), 6);
        assert_eq!(
            short.result.map(|r| r.outcome),
            Some(LineOutcome::Insufficient { available: 0 })
        );
        assert_eq!(short.sku, Change::Keep);
        assert!(short.update.is_none());
    }

    #[test]
    fn an_unstocked_sku_is_unknown() {
        let d = on_command(None, None, reserve("o", 0, 1), 5);
        assert_eq!(d.result.map(|r| r.outcome), Some(LineOutcome::UnknownSku));
    }

    #[test]
    fn reserve_and_release_are_idempotent() {
        let held = Reservation {
            sku: "A".into(),
            quantity: 2,
        };
        let again = on_command(Some(&stock(5)), Some(&held), reserve("o", 0, 2), 5);
        assert!(again.duplicate);
        assert_eq!(again.sku, Change::Keep);
        assert_eq!(again.result.map(|r| r.outcome), Some(LineOutcome::Reserved));

        let release = LineCommand::Release {
            order_id: "o".into(),
            line: 0,
            sku: "A".into(),
            quantity: 2,
        };
        let mut record = stock(3);
        record.reserved = 2;
        let d = on_command(Some(&record), Some(&held), release.clone(), 6);
        let Change::Put(after) = d.sku else {
            panic!("stock changes")
        };
        assert_eq!((after.available, after.reserved), (5, 0));
        assert_eq!(d.reservation, Change::Delete);
        let replay = on_command(Some(&after), None, release, 7);
        assert!(replay.duplicate && replay.sku == Change::Keep);
    }

    #[test]
    fn adjustments_apply_once_and_never_go_negative() {
        let d = on_adjustment(
            Some(&stock(3)),
            false,
            adjust("a1", AdjustmentMode::Delta, -10),
            5,
        );
        let Change::Put(after) = d.sku else {
            panic!("stock changes")
        };
        assert_eq!(after.available, 0);
        assert_eq!(d.update.expect("update").change, -3);
        assert!(
            on_adjustment(
                Some(&stock(3)),
                true,
                adjust("a1", AdjustmentMode::Delta, 1),
                6
            )
            .duplicate
        );

        let absolute = on_adjustment(None, false, adjust("a2", AdjustmentMode::Absolute, 7), 5);
        let Change::Put(after) = absolute.sku else {
            panic!("stock created")
        };
        assert_eq!(after.available, 7);
        let bad = on_adjustment(None, false, adjust("a3", AdjustmentMode::Absolute, -1), 5);
        assert!(bad.dead_letter.expect("dead-lettered").contains("negative"));
        assert_eq!(bad.sku, Change::Keep);
    }

    #[test]
    fn no_adjustment_takes_a_sku_past_the_maximum_stock() {
        let stock = SkuRecord {
            available: 10,
            reserved: 5,
            product_name: None,
            unit_price_cents: None,
            updated_at: 0,
        };
        let refused = |mode, quantity| {
            let decision = on_adjustment(Some(&stock), false, adjust("a", mode, quantity), 5);
            assert_eq!(decision.sku, Change::Keep, "{mode:?} {quantity}");
            decision.dead_letter.expect("dead-lettered")
        };
        // Whatever the stock: a level over the maximum, a delta moving more than it.
        assert!(refused(AdjustmentMode::Absolute, MAX_STOCK + 1).contains("maximum stock"));
        assert!(refused(AdjustmentMode::Delta, i64::MAX).contains("maximum stock"));
        assert!(refused(AdjustmentMode::Delta, i64::MIN).contains("maximum stock"));
        // Given the stock: available plus reserved past the maximum.
        assert!(refused(AdjustmentMode::Delta, MAX_STOCK - 10).contains("would leave"));
        assert!(refused(AdjustmentMode::Absolute, MAX_STOCK).contains("would leave"));
        // Up to the maximum, and any decrease, are applied.
        let to_max = on_adjustment(
            Some(&stock),
            false,
            adjust("b", AdjustmentMode::Delta, MAX_STOCK - 15),
            5,
        );
        let Change::Put(full) = to_max.sku else {
            panic!("applied: {:?}", to_max.dead_letter)
        };
        assert_eq!(full.available + full.reserved, MAX_STOCK);
        let down = on_adjustment(
            Some(&full),
            false,
            adjust("c", AdjustmentMode::Delta, -MAX_STOCK),
            5,
        );
        assert!(matches!(down.sku, Change::Put(ref s) if s.available == 0));
    }

    proptest! {
        /// Any interleaving of reserves, releases and adjustments keeps stock >= 0 and
        /// conserves units: available + reserved moves only with adjustments.
        #[test]
        fn stock_is_conserved_and_never_negative(ops in proptest::collection::vec((0u8..3, 0u32..6, -5i64..8), 1..200)) {
            let mut sku: Option<SkuRecord> = None;
            let mut held: std::collections::HashMap<String, Reservation> = Default::default();
            let mut applied = std::collections::HashSet::new();
            let mut adjusted_total = 0i64;
            for (i, (kind, order, qty)) in ops.into_iter().enumerate() {
                let order_id = format!("o{order}");
                let key = keys::reservation(&order_id, 0);
                let decision = match kind {
                    0 => on_command(sku.as_ref(), held.get(&key), reserve(&order_id, 0, qty), 0),
                    1 => on_command(sku.as_ref(), held.get(&key), LineCommand::Release { order_id: order_id.clone(), line: 0, sku: "A".into(), quantity: qty }, 0),
                    _ => {
                        let id = format!("adj{}", i % 7);
                        let d = on_adjustment(sku.as_ref(), applied.contains(&id), adjust(&id, AdjustmentMode::Delta, qty), 0);
                        if d.applied.is_some() { applied.insert(id); }
                        d
                    }
                };
                let before = sku.as_ref().map_or(0, |s| s.available + s.reserved);
                if let Some(u) = &decision.update
                    && kind == 2
                {
                    adjusted_total += u.change;
                }
                match decision.sku { Change::Put(s) => sku = Some(s), Change::Delete => sku = None, Change::Keep => {} }
                match decision.reservation { Change::Put(r) => { held.insert(key, r); } Change::Delete => { held.remove(&key); } Change::Keep => {} }
                if let Some(s) = &sku {
                    prop_assert!(s.available >= 0, "available went negative: {s:?}");
                    prop_assert_eq!(s.reserved, held.values().map(|r| r.quantity).sum::<i64>());
                    if kind != 2 { prop_assert_eq!(s.available + s.reserved, before); }
                    prop_assert_eq!(s.available + s.reserved, adjusted_total);
                }
            }
        }
    }
}
