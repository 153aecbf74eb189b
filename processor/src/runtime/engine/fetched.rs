//! The records the consumer has handed out and the engine has not processed yet, and the order
//! the engine takes them in (Kafka Streams buffers records per partition the same way, in its
//! `PartitionGroup`).
//!
//! librdkafka hands a partition's records out a fetch at a time, and a fetch holds whole
//! producer batches: thousands of records of one partition in a row. Taken as they come, one
//! partition of a topic runs a second or more ahead of the others in event time, and event-time
//! processing makes what it sent wait for the others to catch up (ARCHITECTURE.md, "Decision
//! order"). So the engine keeps what the consumer hands out, up to [`MAX_BUFFERED`] records,
//! in one queue per partition, and takes them in *turns*: one turn per record, in the order the
//! consumer handed them out; a turn of topic T takes, of all of T's partitions, the queue head
//! with the lowest timestamp. A partition's records stay in offset order; the partitions of a
//! topic advance together in event time; the topics keep the share and the pace the consumer
//! gives them. (Ordering across topics by timestamp would not do: the internal topics carry
//! the time they were written, not their input's, and would wait behind a whole backlog.)
//!
//! A partition whose head record could not be processed for a reason that may pass (the
//! registry is down and the record names a schema id not seen yet) is *paused*: the record goes
//! back to the head of its queue, and no record of that partition is taken until the engine
//! resumes it ([`Fetched::unread`], [`Fetched::resume_due`]); the other partitions go on.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use crate::runtime::topology::SourceId;

/// How many records an engine buffers at most before it takes one for each it reads, while
/// one of the next turn's partitions still waits for its next fetch.
pub(super) const MAX_BUFFERED: usize = 200_000;

/// A partition that has given nothing while this many records were read has nothing more at
/// hand for now: the turns of its topic no longer wait for it (a topic with a partition that
/// gets no records, beside busy ones, would otherwise hold every turn of that topic until
/// [`MAX_BUFFERED`] records are queued).
const QUIET_AFTER: u64 = 100_000;

/// A partition of a source topic: (sub-topology, source, partition).
pub(super) type SourcePartition = (u8, SourceId, i32);

/// A record copied out of the consumer.
#[derive(Debug)]
pub(super) struct FetchedRecord {
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<Box<[u8]>>,
    pub value: Option<Box<[u8]>>,
}

/// The buffered records, per partition, and the turns.
#[derive(Debug, Default)]
pub(super) struct Fetched {
    queues: BTreeMap<SourcePartition, Queue>,
    /// One per record handed out, naming its topic; a turn whose topic has no record left (its
    /// partition was revoked or rewound meanwhile) is skipped.
    turns: VecDeque<(u8, SourceId)>,
    len: usize,
    /// How many records were ever buffered.
    pushed: u64,
    /// How many queues are paused.
    paused: usize,
}

/// One partition's records, when (in records buffered) it last gave one, and until when it
/// is paused.
#[derive(Debug, Default)]
struct Queue {
    records: VecDeque<FetchedRecord>,
    last_push: u64,
    paused_until: Option<Instant>,
}

impl Fetched {
    /// How many records are buffered.
    pub fn len(&self) -> usize {
        self.len
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether a record can be taken now: one is buffered in a partition that is not paused.
    pub fn has_runnable(&self) -> bool {
        if self.paused == 0 {
            return self.len > 0;
        }
        self.queues
            .values()
            .any(|q| q.paused_until.is_none() && !q.records.is_empty())
    }

    /// Puts `record`, just taken from `partition`, back at the head of its queue, and takes
    /// nothing more from that partition until [`Fetched::resume_due`] is called at or after
    /// `until`.
    pub fn unread(&mut self, partition: SourcePartition, record: FetchedRecord, until: Instant) {
        let queue = self.queues.entry(partition).or_default();
        queue.records.push_front(record);
        if queue.paused_until.replace(until).is_none() {
            self.paused += 1;
        }
        self.len += 1;
    }

    /// Resumes the paused partitions whose time has come, and returns them; each of their
    /// records gets its turn again.
    pub fn resume_due(&mut self, now: Instant) -> Vec<SourcePartition> {
        if self.paused == 0 {
            return Vec::new();
        }
        let mut resumed = Vec::new();
        for (partition, queue) in &mut self.queues {
            if queue.paused_until.is_some_and(|until| until <= now) {
                queue.paused_until = None;
                let turn = (partition.0, partition.1);
                self.turns
                    .extend(std::iter::repeat_n(turn, queue.records.len()));
                resumed.push(*partition);
            }
        }
        self.paused -= resumed.len();
        // The turns a paused partition's records had went to the other partitions of their
        // topic; each resume adds turns again, so a partition paused and resumed many times
        // beside busy ones would pile up surplus turns. Past twice what is buffered, they are
        // dealt afresh, a topic at a time (their order only spreads the topics' shares).
        if self.turns.len() > 2 * self.len + 1_024 {
            self.turns = self
                .queues
                .iter()
                .flat_map(|(p, q)| std::iter::repeat_n((p.0, p.1), q.records.len()))
                .collect();
        }
        resumed
    }

    /// The paused partitions.
    pub fn paused(&self) -> impl Iterator<Item = SourcePartition> + '_ {
        self.queues
            .iter()
            .filter(|(_, q)| q.paused_until.is_some())
            .map(|(p, _)| *p)
    }

    /// Whether the next turn can be taken in timestamp order: each partition of its topic
    /// that has given records lately has one buffered (Kafka Streams processes a task once
    /// each of its partitions has a record buffered, for the same reason).
    pub fn ready(&self) -> bool {
        let Some(&(sub, source)) = self.turns.front() else {
            return false;
        };
        self.queues
            .range((sub, source, i32::MIN)..=(sub, source, i32::MAX))
            .all(|(_, q)| !q.records.is_empty() || self.pushed - q.last_push > QUIET_AFTER)
    }

    /// Buffers a record of `partition`, which the consumer just handed out.
    pub fn push(&mut self, partition: SourcePartition, record: FetchedRecord) {
        self.pushed += 1;
        let queue = self.queues.entry(partition).or_default();
        queue.records.push_back(record);
        queue.last_push = self.pushed;
        self.turns.push_back((partition.0, partition.1));
        self.len += 1;
    }

    /// The next record to process: the next turn's topic's queue head with the lowest
    /// timestamp (the lowest partition on a tie).
    pub fn pop(&mut self) -> Option<(SourcePartition, FetchedRecord)> {
        while let Some((sub, source)) = self.turns.pop_front() {
            let topic = (sub, source, i32::MIN)..=(sub, source, i32::MAX);
            let head = self
                .queues
                .range_mut(topic)
                .filter(|(_, q)| q.paused_until.is_none())
                .filter_map(|(p, q)| Some((q.records.front()?.timestamp, *p, q)))
                .min_by_key(|(timestamp, p, _)| (*timestamp, p.2));
            if let Some((_, partition, queue)) = head {
                let record = queue.records.pop_front().expect("the head was just seen");
                self.len -= 1;
                return Some((partition, record));
            }
        }
        None
    }

    /// Whether records of `partition` are buffered.
    pub fn holds(&self, partition: SourcePartition) -> bool {
        self.queues
            .get(&partition)
            .is_some_and(|q| !q.records.is_empty())
    }

    /// Drops the buffered records of the partitions `keep` refuses (revoked, or rewound: the
    /// consumer reads them again), and returns those of them that were paused (the caller
    /// resumes them in the consumer).
    pub fn retain(
        &mut self,
        mut keep: impl FnMut(SourcePartition) -> bool,
    ) -> Vec<SourcePartition> {
        let mut unpaused = Vec::new();
        self.queues.retain(|p, q| {
            let kept = keep(*p);
            if !kept && q.paused_until.is_some() {
                unpaused.push(*p);
            }
            kept
        });
        self.paused -= unpaused.len();
        self.len = self.queues.values().map(|q| q.records.len()).sum();
        if self.len == 0 {
            self.turns.clear();
        }
        unpaused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(offset: i64, timestamp: i64) -> FetchedRecord {
        FetchedRecord {
            offset,
            timestamp,
            key: None,
            value: None,
        }
    }

    fn drain(fetched: &mut Fetched) -> Vec<(i32, i64)> {
        std::iter::from_fn(|| fetched.pop())
            .map(|(p, r)| (p.2, r.offset))
            .collect()
    }

    const ORDERS: (u8, SourceId) = (0, SourceId(0));
    const RESULTS: (u8, SourceId) = (0, SourceId(1));

    #[test]
    fn a_topic_s_partitions_are_taken_by_their_heads_timestamps() {
        let mut fetched = Fetched::default();
        // Partition 0 hands out a whole batch before partition 1's records arrive.
        for (offset, ts) in [(0, 10), (1, 20), (2, 30)] {
            fetched.push((ORDERS.0, ORDERS.1, 0), record(offset, ts));
        }
        for (offset, ts) in [(0, 15), (1, 25)] {
            fetched.push((ORDERS.0, ORDERS.1, 1), record(offset, ts));
        }
        assert_eq!(
            drain(&mut fetched),
            [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2)]
        );
        assert!(fetched.is_empty());
    }

    #[test]
    fn a_partition_keeps_its_offset_order_when_time_goes_back() {
        let mut fetched = Fetched::default();
        for (offset, ts) in [(0, 50), (1, 10)] {
            fetched.push((ORDERS.0, ORDERS.1, 0), record(offset, ts));
        }
        fetched.push((ORDERS.0, ORDERS.1, 1), record(0, 20));
        assert_eq!(drain(&mut fetched), [(1, 0), (0, 0), (0, 1)]);
    }

    #[test]
    fn topics_keep_the_consumer_s_order_whatever_their_timestamps() {
        let mut fetched = Fetched::default();
        fetched.push((RESULTS.0, RESULTS.1, 0), record(0, 1_000));
        fetched.push((ORDERS.0, ORDERS.1, 0), record(0, 1));
        fetched.push((ORDERS.0, ORDERS.1, 0), record(1, 2));
        let topics: Vec<_> = std::iter::from_fn(|| fetched.pop())
            .map(|(p, _)| p.1)
            .collect();
        assert_eq!(topics, [RESULTS.1, ORDERS.1, ORDERS.1]);
    }

    #[test]
    fn a_turn_is_ready_once_each_partition_of_its_topic_has_a_record() {
        let mut fetched = Fetched::default();
        assert!(!fetched.ready());
        fetched.push((ORDERS.0, ORDERS.1, 0), record(0, 1));
        fetched.push((ORDERS.0, ORDERS.1, 1), record(0, 2));
        assert!(fetched.ready());
        fetched.pop();
        // Partition 0 has given records and has none at hand: wait for its next fetch.
        assert!(!fetched.ready());
        fetched.push((ORDERS.0, ORDERS.1, 0), record(1, 3));
        assert!(fetched.ready());
    }

    #[test]
    fn a_partition_that_gives_nothing_for_long_stops_holding_its_topic_s_turns() {
        let mut fetched = Fetched::default();
        fetched.push((ORDERS.0, ORDERS.1, 0), record(0, 1));
        fetched.pop();
        // Partition 1 is busy; partition 0 has given nothing since.
        for offset in 0..=QUIET_AFTER as i64 {
            fetched.push((ORDERS.0, ORDERS.1, 1), record(offset, offset));
            assert_eq!(fetched.ready(), offset as u64 >= QUIET_AFTER, "{offset}");
        }
    }

    #[test]
    fn a_paused_partition_gives_nothing_until_resumed_and_keeps_its_order() {
        let mut fetched = Fetched::default();
        for (offset, ts) in [(0, 1), (1, 2)] {
            fetched.push((ORDERS.0, ORDERS.1, 0), record(offset, ts));
        }
        fetched.push((ORDERS.0, ORDERS.1, 1), record(0, 5));
        let (partition, first) = fetched.pop().expect("partition 0's head");
        assert_eq!((partition.2, first.offset), (0, 0));
        let now = Instant::now();
        let later = now + std::time::Duration::from_secs(1);
        fetched.unread(partition, first, later);
        assert_eq!(fetched.paused().collect::<Vec<_>>(), [partition]);
        // Only partition 1 is taken; partition 0's records wait.
        assert!(fetched.has_runnable());
        assert_eq!(drain(&mut fetched), [(1, 0)]);
        assert!(!fetched.has_runnable() && fetched.len() == 2);
        assert!(fetched.resume_due(now).is_empty(), "not yet");
        assert_eq!(fetched.resume_due(later), [partition]);
        assert_eq!(drain(&mut fetched), [(0, 0), (0, 1)]);
        assert!(fetched.is_empty() && fetched.paused().next().is_none());
    }

    #[test]
    fn pausing_and_resuming_beside_a_busy_partition_does_not_pile_up_turns() {
        let mut fetched = Fetched::default();
        for offset in 0..3_000 {
            fetched.push((ORDERS.0, ORDERS.1, 0), record(offset, offset));
        }
        let now = Instant::now();
        for cycle in 0..100 {
            fetched.push((ORDERS.0, ORDERS.1, 1), record(cycle, cycle));
            let (partition, head) = fetched.pop().expect("a head");
            if partition.2 == 0 {
                fetched.unread(partition, head, now);
            }
            fetched.resume_due(now);
        }
        // Partition 0's head (the lowest timestamp) is taken, paused and resumed each time: 100
        // resumes of 3,000 records would leave 300,000 turns.
        assert_eq!(fetched.len(), 3_100);
        assert!(
            fetched.turns.len() <= 2 * fetched.len() + 1_024,
            "{} turns for {} records",
            fetched.turns.len(),
            fetched.len()
        );
        assert_eq!(
            drain(&mut fetched).len(),
            3_100,
            "every record is still taken"
        );
    }

    #[test]
    fn a_dropped_paused_partition_is_named() {
        let mut fetched = Fetched::default();
        fetched.push((ORDERS.0, ORDERS.1, 0), record(0, 1));
        fetched.push((ORDERS.0, ORDERS.1, 1), record(0, 2));
        let (partition, first) = fetched.pop().expect("a head");
        fetched.unread(partition, first, Instant::now());
        assert_eq!(fetched.retain(|p| p.2 == 1), [(ORDERS.0, ORDERS.1, 0)]);
        assert!(fetched.has_runnable() && fetched.paused().next().is_none());
        assert_eq!(drain(&mut fetched), [(1, 0)]);
    }

    #[test]
    fn dropped_partitions_lose_their_records_and_their_turns() {
        let mut fetched = Fetched::default();
        fetched.push((ORDERS.0, ORDERS.1, 0), record(0, 1));
        fetched.push((ORDERS.0, ORDERS.1, 1), record(0, 2));
        fetched.push((RESULTS.0, RESULTS.1, 1), record(0, 3));
        fetched.retain(|p| p.2 != 1);
        assert_eq!(fetched.len(), 1);
        assert!(!fetched.holds((ORDERS.0, ORDERS.1, 1)));
        assert_eq!(drain(&mut fetched), [(0, 0)]);
        fetched.retain(|_| false);
        assert!(fetched.pop().is_none());
    }
}
