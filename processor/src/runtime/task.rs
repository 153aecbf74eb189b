//! Tasks: one per (sub-topology, partition), each with its own store, and the explicit state
//! machine a task goes through as partitions are assigned and revoked:
//!
//! ```text
//! assigned --open store--> restoring --changelog tail replayed--> running --revoked--> closed
//! ```

use std::fmt;

/// The two sub-topologies (see [`crate::topology`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SubTopology {
    /// A: orders and line results, by order_id; store `orders`.
    Orders,
    /// B: inventory adjustments and line commands, by sku; store `inventory`.
    Inventory,
}

impl SubTopology {
    pub const ALL: [SubTopology; 2] = [SubTopology::Orders, SubTopology::Inventory];

    /// The sub-topology's number in task ids (`0_3` is A's partition 3), as in Kafka Streams.
    pub fn index(self) -> u8 {
        match self {
            SubTopology::Orders => 0,
            SubTopology::Inventory => 1,
        }
    }

    /// The name of its store (and of the store's changelog topic).
    pub fn store(self) -> &'static str {
        match self {
            SubTopology::Orders => "orders",
            SubTopology::Inventory => "inventory",
        }
    }
}

/// A task: a sub-topology on one partition of its co-partitioned sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId {
    pub sub: SubTopology,
    pub partition: i32,
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{}", self.sub.index(), self.partition)
    }
}

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    /// Its partitions are assigned; its store is not open yet.
    Assigned,
    /// Replaying its changelog's tail into the store.
    Restoring,
    /// Processing records.
    Running,
    /// Its partitions were revoked; its work is committed and its store closed.
    Closed,
}

impl TaskState {
    /// The legal transitions; anything else is a bug in the runtime.
    pub fn advance(self, next: TaskState) -> TaskState {
        use TaskState::*;
        match (self, next) {
            (Assigned, Restoring)
            | (Restoring, Running)
            | (Assigned | Restoring | Running, Closed) => next,
            (from, to) => panic!("invariant: a task cannot go from {from:?} to {to:?}"),
        }
    }
}

/// Which input a topic is for its sub-topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// `orders`: OrderCreated (Avro), into A.
    Orders,
    /// `<app>-line-results-repartition`: line results (JSON), into A.
    LineResults,
    /// `inventory-adjustments`: InventoryAdjusted (Avro), into B.
    Adjustments,
    /// `<app>-order-lines-repartition`: reserve/release commands (JSON), into B.
    LineCommands,
}

impl Source {
    pub fn sub_topology(self) -> SubTopology {
        match self {
            Source::Orders | Source::LineResults => SubTopology::Orders,
            Source::Adjustments | Source::LineCommands => SubTopology::Inventory,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_read_like_kafka_streams() {
        assert_eq!(
            TaskId {
                sub: SubTopology::Inventory,
                partition: 3
            }
            .to_string(),
            "1_3"
        );
    }

    #[test]
    fn tasks_move_forward_only() {
        let state = TaskState::Assigned
            .advance(TaskState::Restoring)
            .advance(TaskState::Running);
        assert_eq!(state.advance(TaskState::Closed), TaskState::Closed);
        let backwards =
            std::panic::catch_unwind(|| TaskState::Running.advance(TaskState::Restoring));
        assert!(backwards.is_err());
    }
}
