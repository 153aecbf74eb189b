//! Tasks: one per (sub-topology, partition), each with its stores and its processor, and the
//! state machine a task goes through as partitions are assigned and revoked. The state is the
//! enum; [`TaskState::advance`] is the one place its transitions are checked:
//!
//! ```text
//! Restoring --changelog tails replayed--> Running --revoked--> Suspended --committed--> Closed
//!     └───────────────── restore failed, or closed at shutdown ─────────────────────────┘
//! ```
//!
//! A suspended task processes nothing more: it waits for its last records' commit before its
//! stores close and its partitions go to their new owner.

use std::fmt;

/// A task: a sub-topology (its number in the topology) on one partition of its
/// co-partitioned sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId {
    pub sub: u8,
    pub partition: i32,
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{}", self.sub, self.partition)
    }
}

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    /// Its partitions are assigned; its stores replay their changelogs' tails.
    Restoring,
    /// Processing records.
    Running,
    /// Its partitions were revoked: it processes nothing more and waits for its last commit.
    Suspended,
    /// Its work is committed and its stores are closed.
    Closed,
}

impl TaskState {
    /// The legal transitions; anything else is a bug in the runtime.
    ///
    /// # Panics
    /// On an illegal transition, naming it.
    pub fn advance(self, next: TaskState) -> TaskState {
        use TaskState::*;
        match (self, next) {
            (Restoring, Running)
            | (Running, Suspended)
            | (Restoring | Running | Suspended, Closed) => next,
            (from, to) => panic!("invariant: a task cannot go from {from:?} to {to:?}"),
        }
    }

    /// Whether the task takes records.
    pub fn is_running(self) -> bool {
        self == TaskState::Running
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_read_like_kafka_streams() {
        assert_eq!(
            TaskId {
                sub: 1,
                partition: 3
            }
            .to_string(),
            "1_3"
        );
    }

    #[test]
    fn tasks_move_forward_only() {
        use TaskState::*;
        let state = Restoring.advance(Running).advance(Suspended);
        assert_eq!(state.advance(Closed), Closed);
        assert_eq!(Restoring.advance(Closed), Closed, "a failed restore closes");
        assert_eq!(Running.advance(Closed), Closed, "shutdown closes");
        for (from, to) in [
            (Running, Restoring),
            (Suspended, Running),
            (Closed, Running),
            (Closed, Closed),
            (Restoring, Suspended),
        ] {
            let illegal = std::panic::catch_unwind(|| from.advance(to));
            assert!(illegal.is_err(), "{from:?} -> {to:?} must be refused");
        }
        assert!(Running.is_running() && !Suspended.is_running());
    }
}
