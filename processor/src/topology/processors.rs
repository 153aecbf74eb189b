//! The two processors: the order/inventory wiring between records, state and the pure rules.
//! Each decodes a record (Avro through the registry for external topics, the internal format
//! for repartition topics), loads the state its rule needs from its task's store, calls the
//! rule, and writes back what the rule decided, all through the runtime's [`TaskContext`].
//! Undecodable records and nonsense adjustments are dead-lettered; a registry that cannot be
//! reached is not the record's fault and is retried ([`ProcessError::Retry`]).
//!
//! The order processor keeps its partition's time in both modes: a decided order is forgotten
//! once it is more than the retention behind it ([`order::expired`]), and a punctuation
//! deletes such orders from the store in batches, oldest first, through the retention index
//! ([`order::keys`]). In event-time mode ([`Sequencing`]) it also places each reserve in the
//! canonical order and sends watermarks; the inventory processor
//! merges its origins and lets reserves wait for earlier orders' holds ([`super::event_time`];
//! ARCHITECTURE.md, "Decision order").

use std::sync::Arc;

use schemas::{Codec, CodecError, Contract, InventoryAdjusted, OrderCreated, RejectionReason};
use serde::Serialize;

use super::event_time::{Merge, PartitionTime, Queued, WATERMARK_INTERVAL};
use super::inventory::{self, Hold, InventoryDecision, keys};
use super::order::{self, OrderDecision, OrderRecord, Outcome};
use super::{
    Change, CommandEnvelope, LineCommand, LinesRecord, Position, ResultEnvelope, ResultsRecord,
    Watermark, WatermarkRequest, Wiring,
};
use crate::metrics::Metrics;
use crate::runtime::format;
use crate::runtime::partitioner::partition_for;
use crate::runtime::topology::{ProcessError, Processor, Record, StoreId, TaskContext};

/// Event-time mode's settings: how long an idle partition may hold the others back, and the
/// ranks of the two input topics' names (the canonical order's tie-break).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sequencing {
    pub max_idle_ms: i64,
    pub orders_rank: u8,
    pub adjustments_rank: u8,
}

/// An order task's partition time, in its `orders` store (a key no order id can take: order
/// ids are not empty and are compared by bytes, and the read model skips keys starting with
/// a zero byte).
pub const PARTITION_TIME: &[u8] = b"\0partition-time";

/// How often an order task deletes expired orders from its store (wall clock), unless its
/// last batch was full; and a batch's size.
const SWEEP_EVERY_MS: i64 = 200;
const SWEEP_BATCH: usize = 2_000;

/// An arrival-mode order task's punctuation (for the sweep only).
const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

/// How long an inventory task waits on an order task's watermark that does not move before it
/// asks for it ([`super::WatermarkRequest`]), and again between two requests.
const REQUEST_AFTER_MS: i64 = 40;

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

/// Sub-topology A's processor (see [`super::order`]); `sequencing` for event-time mode; a
/// decided order is remembered for `retention_ms` of its partition's time.
pub fn orders(
    wiring: Wiring,
    avro: Avro,
    metrics: Metrics,
    sequencing: Option<Sequencing>,
    retention_ms: i64,
) -> Box<dyn Processor> {
    Box::new(Orders {
        wiring,
        avro,
        metrics,
        sequencing,
        retention_ms,
        time: PartitionTime::default(),
        sent: None,
        requested: None,
        swept_at: i64::MIN,
    })
}

/// Sub-topology B's processor (see [`super::inventory`]); `sequencing` for event-time mode.
pub fn inventory(
    wiring: Wiring,
    adjustments_topic: Arc<str>,
    avro: Avro,
    metrics: Metrics,
    sequencing: Option<Sequencing>,
) -> Box<dyn Processor> {
    Box::new(Inventory {
        wiring,
        adjustments_topic,
        avro,
        metrics,
        sequencing,
        merge: Merge::default(),
        adjustments: PartitionTime::default(),
        origins: 0,
        moved_at: Vec::new(),
        requested_at: Vec::new(),
    })
}

struct Orders {
    wiring: Wiring,
    avro: Avro,
    metrics: Metrics,
    sequencing: Option<Sequencing>,
    retention_ms: i64,
    /// The `orders` partition's time.
    time: PartitionTime,
    /// The last watermark sent.
    sent: Option<Position>,
    /// The highest position an inventory task asked this task's watermark to pass.
    requested: Option<Position>,
    /// When (wall clock) the last sweep of expired orders ran.
    swept_at: i64,
}

impl Processor for Orders {
    fn init(&mut self, ctx: &mut dyn TaskContext) -> Result<(), ProcessError> {
        let store = self.wiring.orders_store;
        self.time = ctx.get_value(store, PARTITION_TIME)?.unwrap_or_default();
        ctx.schedule(match self.sequencing {
            Some(_) => WATERMARK_INTERVAL,
            None => SWEEP_INTERVAL,
        });
        Ok(())
    }

    fn process(
        &mut self,
        ctx: &mut dyn TaskContext,
        record: &Record<'_>,
    ) -> Result<(), ProcessError> {
        let store = self.wiring.orders_store;
        if record.source == self.wiring.orders {
            // Decoded first: a registry that cannot be reached leaves nothing changed, so the
            // engine can pause the partition and take the record again.
            let decoded = self.avro.decode::<OrderCreated>(record.value)?;
            // Every record moves the partition's time, undecodable ones too: the clerk's
            // merge sees them. (Arrival mode keeps it too, for retention.)
            let rank = self.sequencing.map_or(0, |s| s.orders_rank);
            let time = &mut self.time;
            let at = place(
                ctx,
                store,
                PARTITION_TIME,
                time,
                rank,
                record,
                &self.metrics,
            );
            let position = self.sequencing.map(|_| at);
            let order = match decoded {
                Ok(order) => order,
                Err(error) => return ctx.dead_letter("undecodable", &error.to_string()),
            };
            if let Some(reason) = order::oversized(&order) {
                return ctx.dead_letter("invalid", &reason);
            }
            // An order id is decided by the task of its partition only, whatever key or
            // partition a producer gave its record: one on another partition is re-produced
            // to its own, keyed by its id, with its timestamp, in this transaction
            // (ARCHITECTURE.md, "Orders on the wrong partition"). Its copy is decided there, as
            // a record of that partition.
            let sink = self.wiring.orders_rerouted;
            let owner = partition_for(order.order_id.as_bytes(), ctx.partitions(sink));
            if owner != ctx.task().partition {
                self.metrics.rerouted_orders.inc();
                let value = record.value.unwrap_or_default();
                let (key, at) = (order.order_id.as_bytes(), record.timestamp);
                return ctx.send_at(sink, key, value, Some(owner), at);
            }
            let order_id = order.order_id.clone();
            // A decided order past its retention counts as gone, deleted yet or not; its
            // reservations are forgotten before the new order's reserves go out.
            let stored: Option<OrderRecord> = ctx.get_value(store, order_id.as_bytes())?;
            let (existing, forgotten) = match stored {
                Some(old) if order::expired(&old, at.time, self.retention_ms) => {
                    (None, order::forget(&order_id, &old))
                }
                stored => (stored, Vec::new()),
            };
            let mut decision =
                order::on_order_created(existing.as_ref(), order, at.time, ctx.wall_clock());
            decision.commands.splice(0..0, forgotten);
            self.apply(ctx, &order_id, decision, position)
        } else {
            let value = record.value.unwrap_or_default();
            let ResultEnvelope { result, hold } = match ResultsRecord::decode(record.key, value) {
                Ok(ResultsRecord::Result(envelope)) => envelope,
                Ok(ResultsRecord::Request(request)) => {
                    self.requested = self.requested.max(Some(request.position));
                    self.sent = None; // the asker may have restarted: send even if unchanged
                    return Ok(());
                }
                Err(error) => return ctx.dead_letter("undecodable", &error.to_string()),
            };
            let order_id = result.order_id.clone();
            let existing: Option<OrderRecord> = ctx.get_value(store, order_id.as_bytes())?;
            let mut decision = order::on_line_result(existing, result, ctx.wall_clock());
            // An only line that kept no hold has nothing for a confirm to settle. (A line of a
            // longer order always keeps one, whichever line's result completes the order.)
            let sole_line = decision.record.as_ref().is_some_and(|r| r.lines.len() == 1);
            if sole_line && !hold {
                decision
                    .commands
                    .retain(|c| !matches!(c, LineCommand::Confirm { .. }));
            }
            self.apply(ctx, &order_id, decision, None)
        }
    }

    /// Deletes expired orders ([`Orders::sweep`]). Event-time mode: sends the watermark to
    /// every inventory task when it has moved; when an inventory task waits for it and the
    /// partition is idle, moves the partition's time on.
    fn punctuate(&mut self, ctx: &mut dyn TaskContext, now: i64) -> Result<(), ProcessError> {
        self.sweep(ctx, now)?;
        let Some(s) = self.sequencing else {
            return Ok(());
        };
        if self.requested.is_some()
            && let Some(since) = ctx.idle_since(self.wiring.orders)
            && now - since >= s.max_idle_ms
            && self.time.advance_to(now - s.max_idle_ms)
        {
            ctx.put_value(self.wiring.orders_store, PARTITION_TIME, &self.time);
        }
        let origin = ctx.task().partition;
        let Some(mark) = self.time.watermark(s.orders_rank, origin) else {
            return Ok(());
        };
        if self.requested.is_some_and(|wanted| mark >= wanted) {
            self.requested = None;
        }
        if self.sent == Some(mark) {
            return Ok(());
        }
        self.sent = Some(mark);
        let watermark = format::encode(&Watermark {
            origin,
            position: mark,
        });
        for partition in 0..ctx.partitions(self.wiring.line_commands) {
            ctx.send(self.wiring.line_commands, b"", &watermark, Some(partition))?;
        }
        Ok(())
    }
}

impl Orders {
    /// Sends a command to the inventory task of its sku, answering to this task.
    fn send_command(
        &self,
        ctx: &mut dyn TaskContext,
        command: LineCommand,
        position: Option<Position>,
        sole_line: bool,
    ) -> Result<(), ProcessError> {
        let sku = command.sku().to_owned();
        let envelope = CommandEnvelope {
            reply_partition: ctx.task().partition,
            command,
            position,
            sole_line,
        };
        let bytes = format::encode(&envelope);
        ctx.send(self.wiring.line_commands, sku.as_bytes(), &bytes, None)
    }

    /// Deletes, oldest first and at most [`SWEEP_BATCH`] at a time, the decided orders that
    /// have expired at the partition's time (a store delete, so a changelog tombstone), with
    /// their index keys. Only index keys that are committed and applied are read: a decided
    /// order is then in RocksDB, so the read model has been handed it, and a delete never
    /// meets its put in one commit (which would leave the read model without it).
    fn sweep(&mut self, ctx: &mut dyn TaskContext, now: i64) -> Result<(), ProcessError> {
        if self.time.time == i64::MIN || now.saturating_sub(self.swept_at) < SWEEP_EVERY_MS {
            return Ok(());
        }
        let store = self.wiring.orders_store;
        // Index keys of times below this have expired (`order::expired`).
        let below = self.time.time.saturating_sub(self.retention_ms);
        let from = order::keys::EXPIRY_PREFIX;
        let to = order::keys::expiry_below(below);
        let batch = ctx.scan_settled(store, from, &to, SWEEP_BATCH)?;
        for (key, _) in &batch {
            ctx.delete(store, key);
            let Some((time, order_id)) = order::keys::parse_expiry(key) else {
                continue;
            };
            // The id may have been taken again by a newer order since: only this one goes.
            let record: Option<OrderRecord> = ctx.get_value(store, order_id.as_bytes())?;
            if let Some(record) = record.filter(|r| {
                r.time == Some(time) && order::expired(r, self.time.time, self.retention_ms)
            }) {
                ctx.delete(store, order_id.as_bytes());
                for command in order::forget(order_id, &record) {
                    self.send_command(ctx, command, None, false)?;
                }
                self.metrics.expired_orders.inc();
            }
        }
        // A full batch: more are due, at the next punctuation.
        if batch.len() < SWEEP_BATCH {
            self.swept_at = now;
        }
        Ok(())
    }

    fn apply(
        &self,
        ctx: &mut dyn TaskContext,
        order_id: &str,
        decision: OrderDecision,
        position: Option<Position>,
    ) -> Result<(), ProcessError> {
        let w = &self.wiring;
        if decision.duplicate {
            self.metrics.duplicate_orders.inc();
        }
        if let Some(record) = &decision.record {
            ctx.put_value(w.orders_store, order_id.as_bytes(), record);
            // Decided: indexed for expiry by its time.
            if decision.outcome.is_some()
                && let Some(time) = record.time
            {
                ctx.put_value(w.orders_store, &order::keys::expiry(time, order_id), &());
            }
        }
        let reserves = decision
            .commands
            .iter()
            .filter(|c| matches!(c, LineCommand::Reserve { .. }))
            .count();
        for command in decision.commands {
            let position = match &command {
                LineCommand::Reserve { line, .. } => {
                    position.map(|p| Position { line: *line, ..p })
                }
                // Only event-time mode settles holds.
                LineCommand::Confirm { .. } if self.sequencing.is_none() => continue,
                LineCommand::Release { .. }
                | LineCommand::Confirm { .. }
                | LineCommand::Forget { .. } => None,
            };
            // A new order's reserves are all sent together: one is its only line. (Its confirm
            // is sent only if the inventory task says it kept a hold, as builds before
            // `sole_line` did.)
            let sole_line = position.is_some() && reserves == 1;
            self.send_command(ctx, command, position, sole_line)?;
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
    /// The name of source `wiring.adjustments` (for a dead letter decided in the merge).
    adjustments_topic: Arc<str>,
    avro: Avro,
    metrics: Metrics,
    sequencing: Option<Sequencing>,
    /// Event-time mode: the merge of the origins, and the adjustments partition's time.
    merge: Merge,
    adjustments: PartitionTime,
    /// The number of order partitions (the adjustments origin comes after them).
    origins: usize,
    /// Per order partition: when its watermark last moved, and when it was last asked for.
    moved_at: Vec<i64>,
    requested_at: Vec<i64>,
}

impl Processor for Inventory {
    fn init(&mut self, ctx: &mut dyn TaskContext) -> Result<(), ProcessError> {
        let Some(s) = self.sequencing else {
            return Ok(());
        };
        let store = self.wiring.inventory_store;
        self.origins = usize::try_from(ctx.partitions(self.wiring.line_results)).unwrap_or(0);
        self.merge = Merge::new(self.origins + 1);
        self.moved_at = vec![ctx.wall_clock(); self.origins];
        self.requested_at = vec![i64::MIN; self.origins];
        self.adjustments = ctx
            .get_value(store, keys::ADJUSTMENTS_TIME)?
            .unwrap_or_default();
        if let Some(mark) = self
            .adjustments
            .watermark(s.adjustments_rank, ctx.task().partition)
        {
            self.merge.promise(self.origins, mark);
        }
        // Entries that waited before the restart wait again once the frontier passes them:
        // the queues are rebuilt in canonical order, as they were.
        for (_, bytes) in ctx.scan(store, keys::QUEUED_PREFIX)? {
            let (position, entry) = Queued::decode_stored(&bytes).map_err(ProcessError::fatal)?;
            self.merge.buffer.insert(position, entry);
        }
        for (_, bytes) in ctx.scan(store, keys::HOLD_PREFIX.as_bytes())? {
            let hold: Hold = decode_stored(&bytes)?;
            self.merge.hold(&hold.sku, hold.quantity);
        }
        ctx.schedule(WATERMARK_INTERVAL);
        Ok(())
    }

    fn process(
        &mut self,
        ctx: &mut dyn TaskContext,
        record: &Record<'_>,
    ) -> Result<(), ProcessError> {
        if let Some(s) = self.sequencing {
            return self.sequenced(ctx, record, s);
        }
        if record.source == self.wiring.adjustments {
            let adjustment: InventoryAdjusted = match self.avro.decode(record.value)? {
                Ok(adjustment) => adjustment,
                Err(error) => return ctx.dead_letter("undecodable", &error.to_string()),
            };
            self.adjust(ctx, adjustment, None)
        } else {
            let value = record.value.unwrap_or_default();
            match LinesRecord::decode(record.key, value) {
                Ok(LinesRecord::Command(envelope)) => {
                    self.command(ctx, envelope, false).map(|_| ())
                }
                Ok(LinesRecord::Watermark(_)) => Ok(()), // sent while in event-time mode
                Err(error) => ctx.dead_letter("undecodable", &error.to_string()),
            }
        }
    }

    /// Event-time mode, while entries wait for the frontier: moves an idle adjustments
    /// partition's time on, decides what that lets through, and asks the order tasks whose
    /// watermarks hold the rest back and have not moved for a while.
    fn punctuate(&mut self, ctx: &mut dyn TaskContext, now: i64) -> Result<(), ProcessError> {
        let Some(s) = self.sequencing else {
            return Ok(());
        };
        if self.merge.buffer.is_empty() {
            return Ok(());
        }
        if let Some(since) = ctx.idle_since(self.wiring.adjustments)
            && now - since >= s.max_idle_ms
            && self.adjustments.advance_to(now - s.max_idle_ms)
        {
            let store = self.wiring.inventory_store;
            ctx.put_value(store, keys::ADJUSTMENTS_TIME, &self.adjustments);
        }
        if let Some(mark) = self
            .adjustments
            .watermark(s.adjustments_rank, ctx.task().partition)
        {
            self.merge.promise(self.origins, mark);
        }
        self.drain(ctx)?;
        let Some(&head) = self.merge.buffer.keys().next() else {
            return Ok(());
        };
        let request = format::encode(&WatermarkRequest { position: head });
        for origin in 0..self.origins {
            if self.merge.watermarks[origin] < head
                && now.saturating_sub(self.moved_at[origin]) >= REQUEST_AFTER_MS
                && now.saturating_sub(self.requested_at[origin]) >= REQUEST_AFTER_MS
            {
                self.requested_at[origin] = now;
                let partition = origin as i32;
                ctx.send(self.wiring.line_results, b"", &request, Some(partition))?;
            }
        }
        Ok(())
    }
}

impl Inventory {
    /// Applies an adjustment (arrival mode, or its turn in the merge).
    /// Applies an adjustment: the record at hand (`merged` is `None`), or one the event-time
    /// merge buffered at `merged` and decides now, while another record is at hand (a refusal
    /// then dead-letters the adjustment under its own record's coordinates).
    fn adjust(
        &self,
        ctx: &mut dyn TaskContext,
        adjustment: InventoryAdjusted,
        merged: Option<Position>,
    ) -> Result<(), ProcessError> {
        let store = self.wiring.inventory_store;
        let sku = adjustment.sku.clone();
        let applied_key = keys::adjustment(&adjustment.adjustment_id);
        let sku_record = ctx.get_value(store, keys::sku(&sku).as_bytes())?;
        let already_applied = ctx.get(store, applied_key.as_bytes())?.is_some();
        let kept = merged.map(|_| adjustment.clone());
        let decision = inventory::on_adjustment(
            sku_record.as_ref(),
            already_applied,
            adjustment,
            ctx.wall_clock(),
        );
        if let (Some(reason), Some(position), Some(adjustment)) =
            (&decision.dead_letter, merged, &kept)
        {
            // The record was read earlier: its coordinates are the merge's position; its
            // value, the adjustment as this binary encodes it; its key, the sku (the key the
            // contract gives adjustments).
            let value = self.avro.encode(adjustment)?;
            let record = Record {
                source: self.wiring.adjustments,
                topic: &self.adjustments_topic,
                partition: position.partition,
                offset: position.offset,
                timestamp: position.time,
                key: Some(sku.as_bytes()),
                value: Some(&value),
            };
            return ctx.dead_letter_record(&record, "invalid", reason);
        }
        self.apply(ctx, &sku, None, Some(&applied_key), decision)
    }

    /// Applies a line command (arrival mode, a release or confirm, or a reserve's turn in the
    /// merge); whether it reserved. `hold`: a reserve's result says that its line keeps a
    /// pending hold if reserved (the caller keeps it), so the order's confirm must settle it.
    fn command(
        &self,
        ctx: &mut dyn TaskContext,
        envelope: CommandEnvelope,
        hold: bool,
    ) -> Result<bool, ProcessError> {
        let store = self.wiring.inventory_store;
        let (order_id, line) = envelope.command.order_line();
        let order_id = order_id.to_owned();
        let sku = envelope.command.sku().to_owned();
        let reservation_key = keys::reservation(&order_id, line);
        let sku_record = ctx.get_value(store, keys::sku(&sku).as_bytes())?;
        let reservation = ctx.get_value(store, reservation_key.as_bytes())?;
        let mut decision = inventory::on_command(
            sku_record.as_ref(),
            reservation.as_ref(),
            envelope.command,
            ctx.wall_clock(),
        );
        if let Some(result) = decision.result.take() {
            ctx.send(
                self.wiring.line_results,
                order_id.as_bytes(),
                &format::encode(&ResultEnvelope { result, hold }),
                Some(envelope.reply_partition),
            )?;
        }
        let reserved = matches!(decision.reservation, Change::Put(_));
        self.apply(ctx, &sku, Some(&reservation_key), None, decision)?;
        Ok(reserved)
    }

    /// Event-time mode: a record joins the merge, or settles a hold.
    fn sequenced(
        &mut self,
        ctx: &mut dyn TaskContext,
        record: &Record<'_>,
        s: Sequencing,
    ) -> Result<(), ProcessError> {
        let store = self.wiring.inventory_store;
        if record.source == self.wiring.adjustments {
            // Decoded first, as in the order processor.
            let decoded = self.avro.decode::<InventoryAdjusted>(record.value)?;
            // Every record moves the partition's time, undecodable ones too.
            let time = &mut self.adjustments;
            let rank = s.adjustments_rank;
            let key = keys::ADJUSTMENTS_TIME;
            let position = place(ctx, store, key, time, rank, record, &self.metrics);
            self.merge.promise(self.origins, position);
            let adjustment = match decoded {
                Ok(adjustment) => adjustment,
                Err(error) => {
                    ctx.dead_letter("undecodable", &error.to_string())?;
                    return self.drain(ctx);
                }
            };
            // Refused whatever the stock: dead-lettered now, while it is the record at hand.
            if let Some(reason) = inventory::invalid_adjustment(&adjustment) {
                ctx.dead_letter("invalid", &reason)?;
                return self.drain(ctx);
            }
            self.enqueue(ctx, position, Queued::Adjustment(adjustment));
            return self.drain(ctx);
        }
        let value = record.value.unwrap_or_default();
        match LinesRecord::decode(record.key, value) {
            Err(error) => ctx.dead_letter("undecodable", &error.to_string()),
            Ok(LinesRecord::Watermark(mark)) => {
                let origin = usize::try_from(mark.origin).unwrap_or(usize::MAX);
                self.promise(ctx, origin, mark.position);
                self.drain(ctx)
            }
            Ok(LinesRecord::Command(envelope)) => match (&envelope.command, envelope.position) {
                (LineCommand::Reserve { .. }, Some(position)) => {
                    let origin = usize::try_from(position.partition).unwrap_or(usize::MAX);
                    self.promise(ctx, origin, position);
                    let entry = Queued::Reserve {
                        reply_partition: envelope.reply_partition,
                        command: envelope.command,
                        sole_line: envelope.sole_line,
                    };
                    self.enqueue(ctx, position, entry);
                    self.drain(ctx)
                }
                // Sent in arrival mode (before a switch): decided as it arrives.
                (LineCommand::Reserve { .. }, None) => {
                    self.command(ctx, envelope, false).map(|_| ())
                }
                (
                    LineCommand::Release { .. }
                    | LineCommand::Confirm { .. }
                    | LineCommand::Forget { .. },
                    _,
                ) => self.settle(ctx, envelope),
            },
        }
    }

    /// Order partition `origin` promises nothing at or below `position` any more.
    fn promise(&mut self, ctx: &dyn TaskContext, origin: usize, position: Position) {
        if origin >= self.origins {
            return; // not an order partition of this topology
        }
        if self.merge.watermarks[origin] < position {
            self.moved_at[origin] = ctx.wall_clock();
        }
        self.merge.promise(origin, position);
    }

    fn enqueue(&mut self, ctx: &mut dyn TaskContext, position: Position, entry: Queued) {
        let store = self.wiring.inventory_store;
        ctx.put_value(store, &keys::queued(position), &(position, &entry));
        self.merge.buffer.insert(position, entry);
    }

    /// Decides, in canonical order, every buffered entry the frontier has passed, unless its
    /// sku has entries waiting (it queues behind them) or it must wait itself.
    fn drain(&mut self, ctx: &mut dyn TaskContext) -> Result<(), ProcessError> {
        while let Some((position, entry)) = self.merge.next_ready() {
            if self.merge.is_waiting(entry.sku()) {
                self.merge.wait(position, entry);
            } else if !self.try_decide(ctx, position, &entry)? {
                self.metrics.waits.inc();
                self.merge.wait(position, entry);
            }
        }
        Ok(())
    }

    /// Decides the entries waiting for `sku`, in order, until one must still wait.
    fn resume(&mut self, ctx: &mut dyn TaskContext, sku: &str) -> Result<(), ProcessError> {
        while let Some((position, entry)) = self
            .merge
            .waiting
            .get(sku)
            .and_then(|queue| queue.front())
            .cloned()
        {
            if !self.try_decide(ctx, position, &entry)? {
                return Ok(());
            }
            if let Some(queue) = self.merge.waiting.get_mut(sku) {
                queue.pop_front();
            }
        }
        self.merge.waiting.remove(sku);
        Ok(())
    }

    /// Decides an entry whose turn has come, or says it must wait: a reserve that is short
    /// while other orders' holds on its sku are pending, an adjustment that does not commute
    /// with releases while any are.
    fn try_decide(
        &mut self,
        ctx: &mut dyn TaskContext,
        position: Position,
        entry: &Queued,
    ) -> Result<bool, ProcessError> {
        let store = self.wiring.inventory_store;
        match entry {
            Queued::Adjustment(adjustment) => {
                if !inventory::commutes_with_releases(adjustment)
                    && self.merge.held(&adjustment.sku) > 0
                {
                    return Ok(false);
                }
                self.adjust(ctx, adjustment.clone(), Some(position))?;
            }
            Queued::Reserve {
                reply_partition,
                command,
                sole_line,
            } => {
                let (order_id, line) = command.order_line();
                let sku = command.sku();
                let LineCommand::Reserve { quantity, .. } = command else {
                    return Ok(true); // only reserves are queued
                };
                let held = self.merge.held(sku);
                if held > 0 {
                    let reservation =
                        ctx.get(store, keys::reservation(order_id, line).as_bytes())?;
                    let stock: Option<inventory::SkuRecord> =
                        ctx.get_value(store, keys::sku(sku).as_bytes())?;
                    let short = stock.is_some_and(|s| s.available < *quantity);
                    if reservation.is_none()
                        && short
                        && held > self.own_holds(ctx, order_id, line, sku)?
                    {
                        return Ok(false);
                    }
                }
                let envelope = CommandEnvelope {
                    reply_partition: *reply_partition,
                    command: command.clone(),
                    position: Some(position),
                    sole_line: *sole_line,
                };
                // An only line, reserved, is its order confirmed: nothing pending to hold.
                if self.command(ctx, envelope, !sole_line)? && !sole_line {
                    let hold = Hold {
                        sku: sku.to_owned(),
                        quantity: *quantity,
                    };
                    ctx.put_value(store, keys::hold(order_id, line).as_bytes(), &hold);
                    self.merge.hold(sku, *quantity);
                }
            }
        }
        ctx.delete(store, &keys::queued(position));
        Ok(true)
    }

    /// Units of `sku` held by the earlier lines of the same order (they settle only when the
    /// order does, so they never make a line wait).
    fn own_holds(
        &self,
        ctx: &mut dyn TaskContext,
        order_id: &str,
        line: u32,
        sku: &str,
    ) -> Result<i64, ProcessError> {
        let store = self.wiring.inventory_store;
        let mut own = 0;
        for earlier in 0..line {
            let hold: Option<Hold> =
                ctx.get_value(store, keys::hold(order_id, earlier).as_bytes())?;
            if let Some(hold) = hold.filter(|h| h.sku == sku) {
                own += hold.quantity;
            }
        }
        Ok(own)
    }

    /// A release or confirm: applied as it arrives; the line's pending hold is settled, and
    /// what waited on the sku gets its turn.
    fn settle(
        &mut self,
        ctx: &mut dyn TaskContext,
        envelope: CommandEnvelope,
    ) -> Result<(), ProcessError> {
        let store = self.wiring.inventory_store;
        let (order_id, line) = envelope.command.order_line();
        let hold_key = keys::hold(order_id, line);
        let sku = envelope.command.sku().to_owned();
        let hold: Option<Hold> = ctx.get_value(store, hold_key.as_bytes())?;
        self.command(ctx, envelope, false)?;
        if let Some(hold) = hold {
            ctx.delete(store, hold_key.as_bytes());
            self.merge.settle(&hold.sku, hold.quantity);
        }
        self.resume(ctx, &sku)
    }

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

/// Event-time mode: reads `record` into its partition's `time`, kept in `store` under `key`,
/// and gives its position in the canonical order (a late record is counted).
fn place(
    ctx: &mut dyn TaskContext,
    store: StoreId,
    key: &[u8],
    time: &mut PartitionTime,
    rank: u8,
    record: &Record<'_>,
    metrics: &Metrics,
) -> Position {
    let (position, late) = time.read(rank, record.partition, record.offset, record.timestamp);
    if late {
        metrics.late_records.inc();
    }
    ctx.put_value(store, key, time);
    position
}

/// A value of the processor's own in the store, decoded; a value that does not decode is a
/// corrupt store.
fn decode_stored<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ProcessError> {
    format::decode(bytes).map_err(|e| {
        ProcessError::fatal(crate::runtime::topology::CorruptValue {
            key: "(scanned)".to_owned(),
            reason: e.to_string(),
        })
    })
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
