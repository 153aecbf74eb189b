//! The two processors: the order/inventory wiring between records, state and the pure rules.
//! Each decodes a record (Avro through the registry for external topics, the internal format
//! for repartition topics), loads the state its rule needs from its task's store, calls the
//! rule, and writes back what the rule decided, all through the runtime's [`TaskContext`].
//! Undecodable records and nonsense adjustments are dead-lettered; a registry that cannot be
//! reached is not the record's fault and is retried ([`ProcessError::Retry`]).

use std::sync::Arc;

use schemas::{Codec, CodecError, Contract, InventoryAdjusted, OrderCreated, RejectionReason};
use serde::Serialize;

use super::inventory::{self, InventoryDecision, keys};
use super::order::{self, OrderDecision, OrderRecord, Outcome};
use super::{Change, CommandEnvelope, LineCommand, LineResult, Wiring};
use crate::metrics::Metrics;
use crate::runtime::format;
use crate::runtime::topology::{ProcessError, Processor, Record, StoreId, TaskContext};

thread_local! {
    /// The codec's registry calls (cached after the first lookup of each schema) run on a
    /// small runtime of each processing thread's own, so processing never depends on a
    /// caller's runtime, and a test's runtime never waits for it.
    static RUNTIME: Result<tokio::runtime::Runtime, String> =
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string());
}

/// The Avro codec, called synchronously.
#[derive(Debug, Clone)]
pub struct Avro {
    codec: Arc<Codec>,
}

/// The thread's runtime could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the codec's runtime: {0}")]
struct NoRuntime(String);

impl Avro {
    pub fn new(codec: Arc<Codec>) -> Self {
        Self { codec }
    }

    fn block_on<T>(&self, f: impl Future<Output = T>) -> Result<T, ProcessError> {
        RUNTIME.with(|runtime| match runtime {
            Ok(runtime) => Ok(runtime.block_on(f)),
            Err(e) => Err(ProcessError::fatal(NoRuntime(e.clone()))),
        })
    }

    /// Decodes a record's value: the contract, or why the record is poison.
    fn decode<C: Contract>(
        &self,
        bytes: Option<&[u8]>,
    ) -> Result<Result<C, CodecError>, ProcessError> {
        let bytes = bytes.unwrap_or_default();
        match self.block_on(self.codec.decode::<C>(bytes))? {
            Ok(value) => Ok(Ok(value)),
            Err(e) if e.is_retriable() => Err(ProcessError::Retry(e.to_string())),
            Err(e) => Ok(Err(e)),
        }
    }

    fn encode<C: Contract>(&self, event: &C) -> Result<Vec<u8>, ProcessError> {
        match self.block_on(self.codec.encode(event))? {
            Ok(bytes) => Ok(bytes),
            Err(e) if e.is_retriable() => Err(ProcessError::Retry(e.to_string())),
            Err(e) => Err(ProcessError::fatal(e)),
        }
    }
}

/// Sub-topology A's processor (see [`super::order`]).
pub fn orders(wiring: Wiring, avro: Avro, metrics: Metrics) -> Box<dyn Processor> {
    Box::new(Orders {
        wiring,
        avro,
        metrics,
    })
}

/// Sub-topology B's processor (see [`super::inventory`]).
pub fn inventory(wiring: Wiring, avro: Avro) -> Box<dyn Processor> {
    Box::new(Inventory { wiring, avro })
}

struct Orders {
    wiring: Wiring,
    avro: Avro,
    metrics: Metrics,
}

impl Processor for Orders {
    fn process(
        &mut self,
        ctx: &mut dyn TaskContext,
        record: &Record<'_>,
    ) -> Result<(), ProcessError> {
        let store = self.wiring.orders_store;
        if record.source == self.wiring.orders {
            let order: OrderCreated = match self.avro.decode(record.value)? {
                Ok(order) => order,
                Err(error) => return ctx.dead_letter("undecodable", &error.to_string()),
            };
            let order_id = order.order_id.clone();
            let existing: Option<OrderRecord> = ctx.get_value(store, order_id.as_bytes())?;
            let decision = order::on_order_created(existing.as_ref(), order, ctx.wall_clock());
            self.apply(ctx, &order_id, decision)
        } else {
            let result: LineResult = match format::decode(record.value.unwrap_or_default()) {
                Ok(result) => result,
                Err(error) => return ctx.dead_letter("undecodable", &error.to_string()),
            };
            let order_id = result.order_id.clone();
            let existing: Option<OrderRecord> = ctx.get_value(store, order_id.as_bytes())?;
            let decision = order::on_line_result(existing, result, ctx.wall_clock());
            self.apply(ctx, &order_id, decision)
        }
    }
}

impl Orders {
    fn apply(
        &self,
        ctx: &mut dyn TaskContext,
        order_id: &str,
        decision: OrderDecision,
    ) -> Result<(), ProcessError> {
        let w = &self.wiring;
        if decision.duplicate {
            self.metrics.duplicate_orders.inc();
        }
        if let Some(record) = &decision.record {
            ctx.put_value(w.orders_store, order_id.as_bytes(), record);
        }
        let reply_partition = ctx.task().partition;
        for command in decision.commands {
            let sku = command.sku().to_owned();
            let envelope = CommandEnvelope {
                reply_partition,
                command,
            };
            ctx.send(
                w.line_commands,
                sku.as_bytes(),
                &format::encode(&envelope),
                None,
            )?;
        }
        let (event, sink, created_at, outcome, reason) = match &decision.outcome {
            None => return Ok(()),
            Some(Outcome::Confirmed(confirmed)) => (
                self.avro.encode(confirmed)?,
                w.confirmed,
                confirmed.created_at,
                "confirmed",
                "none",
            ),
            Some(Outcome::Rejected(rejected)) => (
                self.avro.encode(rejected)?,
                w.rejected,
                rejected.created_at,
                "rejected",
                match rejected.reason {
                    RejectionReason::InsufficientStock => "insufficient_stock",
                    RejectionReason::UnknownSku => "unknown_sku",
                    RejectionReason::InvalidOrder => "invalid_order",
                },
            ),
        };
        ctx.send(sink, order_id.as_bytes(), &event, None)?;
        self.metrics
            .order_outcomes
            .with_label_values(&[outcome, reason])
            .inc();
        let latency_ms = (ctx.wall_clock() - created_at).max(0);
        self.metrics
            .order_e2e_latency
            .observe(latency_ms as f64 / 1000.0);
        Ok(())
    }
}

struct Inventory {
    wiring: Wiring,
    avro: Avro,
}

impl Processor for Inventory {
    fn process(
        &mut self,
        ctx: &mut dyn TaskContext,
        record: &Record<'_>,
    ) -> Result<(), ProcessError> {
        let store = self.wiring.inventory_store;
        if record.source == self.wiring.adjustments {
            let adjustment: InventoryAdjusted = match self.avro.decode(record.value)? {
                Ok(adjustment) => adjustment,
                Err(error) => return ctx.dead_letter("undecodable", &error.to_string()),
            };
            let sku = adjustment.sku.clone();
            let applied_key = keys::adjustment(&adjustment.adjustment_id);
            let sku_record = ctx.get_value(store, keys::sku(&sku).as_bytes())?;
            let already_applied = ctx.get(store, applied_key.as_bytes())?.is_some();
            let decision = inventory::on_adjustment(
                sku_record.as_ref(),
                already_applied,
                adjustment,
                ctx.wall_clock(),
            );
            self.apply(ctx, &sku, None, Some(&applied_key), decision)
        } else {
            let envelope: CommandEnvelope = match format::decode(record.value.unwrap_or_default()) {
                Ok(envelope) => envelope,
                Err(error) => return ctx.dead_letter("undecodable", &error.to_string()),
            };
            let (order_id, line) = match &envelope.command {
                LineCommand::Reserve { order_id, line, .. }
                | LineCommand::Release { order_id, line, .. } => (order_id.clone(), *line),
            };
            let sku = envelope.command.sku().to_owned();
            let reservation_key = keys::reservation(&order_id, line);
            let sku_record = ctx.get_value(store, keys::sku(&sku).as_bytes())?;
            let reservation = ctx.get_value(store, reservation_key.as_bytes())?;
            let decision = inventory::on_command(
                sku_record.as_ref(),
                reservation.as_ref(),
                envelope.command,
                ctx.wall_clock(),
            );
            if let Some(result) = &decision.result {
                ctx.send(
                    self.wiring.line_results,
                    order_id.as_bytes(),
                    &format::encode(result),
                    Some(envelope.reply_partition),
                )?;
            }
            self.apply(ctx, &sku, Some(&reservation_key), None, decision)
        }
    }
}

impl Inventory {
    fn apply(
        &self,
        ctx: &mut dyn TaskContext,
        sku: &str,
        reservation_key: Option<&str>,
        applied_key: Option<&str>,
        decision: InventoryDecision,
    ) -> Result<(), ProcessError> {
        if let Some(reason) = &decision.dead_letter {
            return ctx.dead_letter("invalid", reason);
        }
        let store = self.wiring.inventory_store;
        apply_change(ctx, store, &keys::sku(sku), decision.sku);
        if let Some(key) = reservation_key {
            apply_change(ctx, store, key, decision.reservation);
        }
        if let (Some(key), Some(applied)) = (applied_key, &decision.applied) {
            ctx.put_value(store, key.as_bytes(), applied);
        }
        if let Some(update) = &decision.update {
            let payload = self.avro.encode(update)?;
            ctx.send(
                self.wiring.inventory_updated,
                sku.as_bytes(),
                &payload,
                None,
            )?;
        }
        Ok(())
    }
}

fn apply_change<T: Serialize>(
    ctx: &mut dyn TaskContext,
    store: StoreId,
    key: &str,
    change: Change<T>,
) {
    match change {
        Change::Keep => {}
        Change::Put(value) => ctx.put_value(store, key.as_bytes(), &value),
        Change::Delete => ctx.delete(store, key.as_bytes()),
    }
}
