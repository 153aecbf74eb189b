//! Bad input of every kind, against the real services, in event-time order (the default):
//! each record is decided, rejected with a reason, or dead-lettered with headers naming why and
//! where it came from; the processor never stops, and a good order after all of it is decided.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use processor::topology::inventory::MAX_STOCK;
use processor::topology::order::{MAX_ID_BYTES, MAX_LINES};
use schemas::{
    AdjustmentMode, AdjustmentReason, InventoryAdjusted, OrderLine, RejectionReason, now_millis,
};
use support::{MINUTE, World, order};

/// The dead-lettered records' keys, and the kind each must carry.
const DEAD: &[(&str, &str)] = &[
    ("empty-value", "undecodable"),
    ("null-value", "undecodable"),
    ("truncated", "undecodable"),
    ("wrong-contract", "undecodable"),
    ("huge-sku", "invalid"),
    ("long-order-id", "invalid"),
    ("negative-absolute", "invalid"),
    ("huge-delta", "invalid"),
    ("absolute-over-max", "invalid"),
    // Keyed by its sku, as the contract keys adjustments (see below).
    ("SKU-BT-MOUSE", "invalid"),
];

fn adjustment(id: &str, sku: &str, mode: AdjustmentMode, quantity: i64) -> InventoryAdjusted {
    InventoryAdjusted {
        adjustment_id: id.into(),
        sku: sku.into(),
        mode,
        quantity,
        reason: AdjustmentReason::Correction,
        adjusted_at: now_millis(),
        product_name: None,
        unit_price_cents: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_bad_input_is_decided_rejected_or_dead_lettered() {
    let world = World::new("bad-input").await;
    world.seed(0, 0).await;
    let (running, token) = world.start(&[]).await;
    let (orders, adjustments) = (&world.topics.orders, &world.topics.inventory_adjustments);
    let sku = "SKU-BT-MOUSE";

    // Undecodable orders: empty, null, a valid header with a truncated body, another contract.
    world.send_raw(orders, "empty-value", b"").await;
    world.send_value(orders, "null-value", None).await;
    let good = world
        .codec
        .encode(&order("truncated", &[(sku, 1)]))
        .await
        .expect("encodes");
    world
        .send_raw(orders, "truncated", &good[..good.len() - 4])
        .await;
    let wrong = world
        .codec
        .encode(&adjustment("wrong", sku, AdjustmentMode::Delta, 1))
        .await
        .expect("encodes");
    world.send_raw(orders, "wrong-contract", &wrong).await;

    // Orders too large to echo in an outcome: dead-lettered, whatever their key.
    let huge_sku = "S".repeat(900_000);
    let long_id = "L".repeat(MAX_ID_BYTES + 1);
    let mut oversized = vec![order("huge-sku", &[(huge_sku.as_str(), 1)])];
    let mut long = order("x", &[(sku, 1)]);
    long.order_id = long_id.clone();
    oversized.push(long);
    for o in &oversized {
        let bytes = world.codec.encode(o).await.expect("encodes");
        let key = if o.order_id == long_id {
            "long-order-id"
        } else {
            "huge-sku"
        };
        world.send_raw(orders, key, &bytes).await;
    }

    // Invalid orders: rejected at once with INVALID_ORDER and the reason.
    let mut many_lines = order("many-lines", &[]);
    many_lines.lines = (0..10_000)
        .map(|i| OrderLine {
            sku: format!("SKU-{i}"),
            quantity: 1,
            unit_price_cents: 100,
        })
        .collect();
    let invalid = vec![
        order("zero-quantity", &[(sku, 0)]),
        order("negative-quantity", &[(sku, -3)]),
        order("", &[(sku, 1)]),
        order("no-lines", &[]),
        many_lines,
    ];
    world.send_orders(&invalid).await;

    // Adjustments: a negative absolute level, a delta past any stock, an absolute level over
    // the maximum, and a delta that would take the stock over it.
    let bad_adjustments = [
        (
            "negative-absolute",
            adjustment("a1", sku, AdjustmentMode::Absolute, -5),
        ),
        (
            "huge-delta",
            adjustment("a2", sku, AdjustmentMode::Delta, i64::MAX),
        ),
        (
            "absolute-over-max",
            adjustment("a3", sku, AdjustmentMode::Absolute, MAX_STOCK + 1),
        ),
        (sku, adjustment("a4", sku, AdjustmentMode::Delta, MAX_STOCK)),
    ];
    for (key, adjustment) in &bad_adjustments {
        let bytes = world.codec.encode(adjustment).await.expect("encodes");
        world.send_raw(adjustments, key, &bytes).await;
    }

    // And after all of it, a good order.
    world
        .send_orders(&[order("after-bad-input", &[(sku, 1)])])
        .await;

    let outcomes = world.outcomes(invalid.len() + 1, MINUTE).await;
    assert!(
        outcomes.confirmed("after-bad-input").is_some(),
        "the good order after the bad input is confirmed"
    );
    for o in &invalid {
        let rejected = outcomes
            .rejected(&o.order_id)
            .unwrap_or_else(|| panic!("{:?} is rejected", o.order_id));
        assert_eq!(rejected.reason, RejectionReason::InvalidOrder);
        assert!(!rejected.message.is_empty(), "a reason is given");
    }
    let many = outcomes.rejected("many-lines").expect("rejected");
    assert!(
        many.message.contains(&MAX_LINES.to_string()),
        "names the limit: {}",
        many.message
    );
    assert_eq!(
        outcomes.per_order().len(),
        invalid.len() + 1,
        "the dead-lettered orders have no outcome"
    );

    let dead = world
        .read_raw(&world.topics.orders_dlq, DEAD.len(), MINUTE)
        .await;
    let kinds: HashMap<String, String> = dead
        .iter()
        .map(|r| {
            let key = String::from_utf8(r.key.clone().expect("a key")).expect("UTF-8");
            (key, r.header("stockflow.error.kind").expect("a kind"))
        })
        .collect();
    assert_eq!(dead.len(), DEAD.len(), "each dead letter once: {kinds:?}");
    for (key, kind) in DEAD {
        assert_eq!(
            kinds.get(*key).map(String::as_str),
            Some(*kind),
            "{key} is dead-lettered as {kind}: {kinds:?}"
        );
    }
    for record in &dead {
        assert!(
            record
                .header("stockflow.error")
                .is_some_and(|e| !e.is_empty())
        );
        assert!(record.header("stockflow.source.partition").is_some());
        assert!(record.header("stockflow.source.offset").is_some());
    }
    // The refusal that depends on the stock is decided by the event-time merge, whichever
    // record is at hand then: it is dead-lettered with its own record's coordinates, its
    // adjustment re-encoded, and its sku as the key.
    let over = dead
        .iter()
        .find(|r| r.key.as_deref() == Some(sku.as_bytes()))
        .expect("the delta over the maximum");
    assert!(
        over.header("stockflow.error")
            .is_some_and(|e| e.contains("maximum stock")),
        "{:?}",
        over.header("stockflow.error")
    );
    assert_eq!(
        over.header("stockflow.source.topic").as_deref(),
        Some(adjustments.as_str())
    );
    let mut source = None;
    for record in world
        .read_raw(adjustments, 0, Duration::from_secs(10))
        .await
    {
        let payload = record.payload.as_deref().unwrap_or_default();
        let decoded = world.codec.decode::<InventoryAdjusted>(payload).await;
        if decoded.is_ok_and(|a| a.adjustment_id == "a4") {
            source = Some(record);
        }
    }
    let source = source.expect("the source record");
    assert_eq!(
        over.header("stockflow.source.partition"),
        Some(source.partition.to_string())
    );
    assert_eq!(
        over.header("stockflow.source.offset"),
        Some(source.offset.to_string())
    );
    let decoded: InventoryAdjusted = world
        .codec
        .decode(over.payload.as_deref().expect("a value"))
        .await
        .expect("the dead letter holds the adjustment");
    assert_eq!(decoded, bad_adjustments[3].1);
    let huge = dead
        .iter()
        .find(|r| r.key.as_deref() == Some(b"huge-sku"))
        .expect("the huge sku");
    assert!(
        huge.payload.as_ref().is_some_and(|p| p.len() > 900_000),
        "the original bytes"
    );

    // No refused adjustment touched the stock: the seed's level, less the one confirmed unit.
    let stock = world.processor_inventory().await;
    let seeded = support::initial_stock(0, 0)[sku];
    assert_eq!(stock[sku].0, seeded - 1, "available stock of {sku}");
    assert!(running.ready.is_ready(), "still running");

    token.cancel();
    running.wait().await.expect("stops cleanly");
}
