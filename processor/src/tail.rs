//! `processor tail`: follow the outputs as a person reads them, one decoded line per record,
//! with `read_committed` (what downstream consumers see).

use std::time::Duration;

use plumbing::connection::ConnectionArgs;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use schemas::{Codec, InventoryUpdated, OrderConfirmed, OrderRejected, now_millis};
use tokio_util::sync::CancellationToken;

/// Follows the output topics until `shutdown` (or, with `limit`, after that many records).
pub async fn tail(
    connection: &ConnectionArgs,
    from_beginning: bool,
    limit: Option<u64>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let topics = connection.topics();
    let codec = Codec::new(&connection.schema_registry_url, &topics)?;
    let group = format!("stockflow-tail-{}", now_millis());
    let consumer: StreamConsumer = connection
        .client_config()
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set(
            "auto.offset.reset",
            if from_beginning { "earliest" } else { "latest" },
        )
        .create()?;
    // Fail fast with one line when Kafka is not there.
    consumer
        .fetch_metadata(Some(&topics.orders_confirmed), Duration::from_secs(10))
        .map_err(|e| {
            anyhow::anyhow!(
                "Kafka at {} is unreachable: {e}",
                connection.bootstrap_servers
            )
        })?;
    consumer.subscribe(&[
        &topics.orders_confirmed,
        &topics.orders_rejected,
        &topics.inventory_updated,
        &topics.orders_dlq,
    ])?;
    let mut seen = 0u64;
    while limit.is_none_or(|l| seen < l) {
        let message = tokio::select! {
            _ = shutdown.cancelled() => break,
            message = consumer.recv() => message?,
        };
        let payload = message.payload().unwrap_or_default();
        let topic = message.topic();
        let line = if topic == topics.orders_confirmed {
            let c: OrderConfirmed = codec.decode(payload).await?;
            format!(
                "CONFIRMED  {}  {} line(s)  {}.{:02} {}  after {} ms",
                c.order_id,
                c.lines.len(),
                c.total_cents / 100,
                c.total_cents % 100,
                c.currency,
                c.confirmed_at - c.created_at
            )
        } else if topic == topics.orders_rejected {
            let r: OrderRejected = codec.decode(payload).await?;
            let lines: Vec<String> = r
                .lines
                .iter()
                .map(|l| match l.available {
                    Some(a) => format!("{} wanted {}, {} left", l.sku, l.requested, a),
                    None => format!("{} unknown", l.sku),
                })
                .collect();
            format!(
                "REJECTED   {}  {:?}: {}  [{}]",
                r.order_id,
                r.reason,
                r.message,
                lines.join("; ")
            )
        } else if topic == topics.inventory_updated {
            let u: InventoryUpdated = codec.decode(payload).await?;
            let by = u.order_id.or(u.adjustment_id).unwrap_or_default();
            format!(
                "STOCK      {}  {:?} {:+} -> {} available, {} reserved  ({by})",
                u.sku, u.reason, u.change, u.available_after, u.reserved_after
            )
        } else {
            let header = |name: &str| {
                message
                    .headers()
                    .and_then(|h| h.iter().find(|h| h.key == name).and_then(|h| h.value))
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default()
            };
            format!(
                "DEAD       {}[{}]@{}  {}",
                header("stockflow.source.topic"),
                header("stockflow.source.partition"),
                header("stockflow.source.offset"),
                header("stockflow.error")
            )
        };
        println!("{line}");
        seen += 1;
    }
    Ok(())
}
