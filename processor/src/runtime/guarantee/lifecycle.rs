//! The transaction's life, without Kafka: the state ([`TxState`], an enum that is the state)
//! and the input positions a commit covers or an abort rewinds ([`Positions`]).
//! [`Lifecycle`]'s methods are the only transitions, unit-tested here, abort and rewind
//! included; the [`Transactor`](super::Transactor) drives the producers along them.

use std::collections::HashMap;

/// Input positions consumed, per topic and partition: (first offset, next offset). Keyed by
/// topic first so that the per-record update allocates nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Positions(HashMap<String, HashMap<i32, (i64, i64)>>);

impl Positions {
    /// Notes that `offset` of `topic[partition]` was processed.
    pub fn consumed(&mut self, topic: &str, partition: i32, offset: i64) {
        let partitions = match self.0.get_mut(topic) {
            Some(partitions) => partitions,
            None => self.0.entry(topic.to_owned()).or_default(),
        };
        partitions
            .entry(partition)
            .and_modify(|(_, next)| *next = offset + 1)
            .or_insert((offset, offset + 1));
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Puts `earlier` positions under these, so that a rewind goes back to the earliest
    /// uncommitted offset of each partition.
    fn merge_back(&mut self, earlier: Positions) {
        for (topic, partitions) in earlier.0 {
            let later = self.0.entry(topic).or_default();
            for (partition, (first, next)) in partitions {
                later
                    .entry(partition)
                    .and_modify(|(f, _)| *f = first)
                    .or_insert((first, next));
            }
        }
    }

    /// The next offset of each partition: what a commit records.
    pub(super) fn next_offsets(&self) -> Vec<(&str, i32, i64)> {
        self.0
            .iter()
            .flat_map(|(topic, partitions)| {
                partitions
                    .iter()
                    .map(move |(p, (_, next))| (topic.as_str(), *p, *next))
            })
            .collect()
    }

    /// The first offset of each partition: where a rewind seeks. Empties the positions.
    fn take_firsts(&mut self) -> Vec<(String, i32, i64)> {
        let mut firsts: Vec<_> = std::mem::take(&mut self.0)
            .into_iter()
            .flat_map(|(topic, partitions)| {
                partitions
                    .into_iter()
                    .map(move |(p, (first, _))| (topic.clone(), p, first))
            })
            .collect();
        firsts.sort();
        firsts
    }
}

/// Where the transaction stands. The enum is the state; [`Lifecycle`]'s methods are the only
/// transitions:
///
/// ```text
///          begin                start_commit                 finish(committed)
///   Idle ────────> Open ───────────────────> Committing ──────────────────────> Idle
///    ^              │ ^                          │ finish(aborted): back to Open,
///    └── abort ─────┘ └──────────────────────────┘ to be aborted
/// ```
///
/// While `Committing`, records go on being processed: their positions are kept for the next
/// transaction, which begins once the commit has finished.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub enum TxState {
    /// No transaction: nothing sent since the last commit.
    #[default]
    Idle,
    /// A transaction is open (at-least-once: records were processed since the last commit).
    Open,
    /// A commit has started; `covers` is what it commits.
    Committing { covers: Positions },
}

/// The transaction's life without Kafka: its state, and the positions consumed since the
/// last commit started. [`Transactor`] drives the producers along it.
#[derive(Debug, Default)]
pub struct Lifecycle {
    state: TxState,
    consumed: Positions,
}

impl Lifecycle {
    pub fn state(&self) -> &TxState {
        &self.state
    }

    /// Opens a transaction if none is open; `true` if the producer must begin one.
    ///
    /// # Panics
    /// While a commit is in progress: outputs are held until it has finished.
    pub fn begin(&mut self) -> bool {
        match self.state {
            TxState::Idle => {
                self.state = TxState::Open;
                true
            }
            TxState::Open => false,
            TxState::Committing { .. } => {
                panic!("invariant: no transaction begins while one commits")
            }
        }
    }

    /// Notes that `offset` of `topic[partition]` was processed (in the open transaction, or
    /// for the next one while a commit is in progress).
    pub fn consumed(&mut self, topic: &str, partition: i32, offset: i64) {
        self.consumed.consumed(topic, partition, offset);
    }

    /// Whether something was consumed or sent since the last commit finished.
    pub fn is_open(&self) -> bool {
        self.state != TxState::Idle || !self.consumed.is_empty()
    }

    pub fn is_committing(&self) -> bool {
        matches!(self.state, TxState::Committing { .. })
    }

    /// Starts a commit of what was consumed so far; `false` if no transaction is open.
    ///
    /// # Panics
    /// If a commit is already in progress.
    pub fn start_commit(&mut self) -> bool {
        match self.state {
            TxState::Idle => false,
            TxState::Open => {
                let covers = std::mem::take(&mut self.consumed);
                self.state = TxState::Committing { covers };
                true
            }
            TxState::Committing { .. } => panic!("invariant: one commit at a time"),
        }
    }

    /// What the commit in progress covers (`None`: no commit in progress).
    pub fn covers(&self) -> Option<&Positions> {
        match &self.state {
            TxState::Committing { covers } => Some(covers),
            _ => None,
        }
    }

    /// The commit in progress ended: committed (back to `Idle`), or not (back to `Open`, its
    /// positions under those consumed since, for [`Lifecycle::abort`] to rewind).
    pub fn finish(&mut self, committed: bool) {
        let TxState::Committing { covers } = std::mem::take(&mut self.state) else {
            panic!("invariant: finish follows start_commit");
        };
        if committed {
            self.state = TxState::Idle;
        } else {
            self.consumed.merge_back(covers);
            self.state = TxState::Open;
        }
    }

    /// The transaction is aborted, commit in progress or not: back to `Idle`. Returns where
    /// each partition consumed since the last finished commit must be rewound to.
    pub fn abort(&mut self) -> Vec<(String, i32, i64)> {
        if let TxState::Committing { covers } = std::mem::take(&mut self.state) {
            self.consumed.merge_back(covers);
        }
        self.consumed.take_firsts()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consume(life: &mut Lifecycle, topic: &str, partition: i32, offsets: std::ops::Range<i64>) {
        for offset in offsets {
            life.consumed(topic, partition, offset);
        }
    }

    #[test]
    fn a_commit_covers_what_was_consumed_before_it_started() {
        let mut life = Lifecycle::default();
        assert!(!life.is_open());
        assert!(!life.start_commit(), "nothing to commit while idle");
        assert!(life.begin(), "the producer begins a transaction");
        assert!(!life.begin(), "only once");
        consume(&mut life, "in", 0, 5..8);
        assert!(life.start_commit());
        assert_eq!(
            life.covers().map(Positions::next_offsets),
            Some(vec![("in", 0, 8)])
        );
        // Processed while the commit is in progress: for the next transaction.
        consume(&mut life, "in", 0, 8..10);
        life.finish(true);
        assert_eq!(*life.state(), TxState::Idle);
        assert!(life.is_open(), "records wait for the next transaction");
        assert!(life.begin());
        assert!(life.start_commit());
        assert_eq!(
            life.covers().map(Positions::next_offsets),
            Some(vec![("in", 0, 10)])
        );
    }

    #[test]
    fn an_abort_rewinds_to_the_first_uncommitted_offset() {
        let mut life = Lifecycle::default();
        life.begin();
        consume(&mut life, "in", 0, 5..8);
        consume(&mut life, "in", 1, 0..2);
        life.start_commit();
        consume(&mut life, "in", 0, 8..10);
        consume(&mut life, "other", 3, 40..41);
        // Aborted while committing: both the committing and the next transaction's records
        // are read again.
        assert_eq!(
            life.abort(),
            vec![
                ("in".to_owned(), 0, 5),
                ("in".to_owned(), 1, 0),
                ("other".to_owned(), 3, 40)
            ]
        );
        assert_eq!(*life.state(), TxState::Idle);
        assert!(!life.is_open());
    }

    #[test]
    fn a_failed_commit_leaves_the_transaction_open_to_be_aborted() {
        let mut life = Lifecycle::default();
        life.begin();
        consume(&mut life, "in", 0, 5..8);
        life.start_commit();
        consume(&mut life, "in", 0, 8..9);
        life.finish(false);
        assert_eq!(*life.state(), TxState::Open);
        assert_eq!(life.abort(), vec![("in".to_owned(), 0, 5)]);
        assert_eq!(life.abort(), vec![], "nothing left to rewind");
    }

    #[test]
    fn illegal_transitions_are_refused() {
        let committing = || {
            let mut life = Lifecycle::default();
            life.begin();
            life.start_commit();
            life
        };
        assert!(std::panic::catch_unwind(|| committing().begin()).is_err());
        assert!(std::panic::catch_unwind(|| committing().start_commit()).is_err());
        assert!(std::panic::catch_unwind(|| Lifecycle::default().finish(true)).is_err());
    }
}
