//! The processor's topics: the external ones it reads and writes, and the internal
//! repartition and changelog topics it creates, named `<application.id>-<name>-repartition`
//! and `<application.id>-<store>-changelog` as in Kafka Streams.
//!
//! Co-partitioning: each sub-topology's sources must have equal partition counts (A: `orders`
//! and the line-results repartition topic; B: `inventory-adjustments` and the order-lines
//! repartition topic), and each store's changelog has one partition per task. The processor
//! creates what is missing with the right counts and refuses to start on a mismatch.

use plumbing::admin::{AdminError, TopicSpec, ensure_topics};
use rdkafka::ClientConfig;
use schemas::Topics;

use super::task::{Source, SubTopology};

/// Why the topics are not usable.
#[derive(Debug, thiserror::Error)]
pub enum TopicsError {
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error(
        "topic {topic} has {found} partitions but must have {expected} to be co-partitioned with {with}; \
         recreate it (see `processor reset`) or fix {with}"
    )]
    CoPartitioning {
        topic: String,
        found: i32,
        expected: i32,
        with: String,
    },
}

/// Every topic the topology touches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopologyTopics {
    pub external: Topics,
    /// B's command input, keyed by sku.
    pub order_lines: String,
    /// A's result input, keyed by order_id.
    pub line_results: String,
    pub orders_changelog: String,
    pub inventory_changelog: String,
}

/// Where the topology writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    OrderLines,
    LineResults,
    Changelog(SubTopology),
    OrdersConfirmed,
    OrdersRejected,
    InventoryUpdated,
    Dlq,
}

impl Sink {
    pub const ALL: [Sink; 8] = [
        Sink::OrderLines,
        Sink::LineResults,
        Sink::Changelog(SubTopology::Orders),
        Sink::Changelog(SubTopology::Inventory),
        Sink::OrdersConfirmed,
        Sink::OrdersRejected,
        Sink::InventoryUpdated,
        Sink::Dlq,
    ];

    /// Its position in [`Sink::ALL`] (for per-sink arrays).
    pub fn index(self) -> usize {
        match self {
            Sink::OrderLines => 0,
            Sink::LineResults => 1,
            Sink::Changelog(SubTopology::Orders) => 2,
            Sink::Changelog(SubTopology::Inventory) => 3,
            Sink::OrdersConfirmed => 4,
            Sink::OrdersRejected => 5,
            Sink::InventoryUpdated => 6,
            Sink::Dlq => 7,
        }
    }
}

impl TopologyTopics {
    pub fn new(application_id: &str, external: Topics) -> Self {
        Self {
            order_lines: format!("{application_id}-order-lines-repartition"),
            line_results: format!("{application_id}-line-results-repartition"),
            orders_changelog: format!("{application_id}-orders-changelog"),
            inventory_changelog: format!("{application_id}-inventory-changelog"),
            external,
        }
    }

    /// Which source `topic` is, if the topology reads it.
    pub fn source(&self, topic: &str) -> Option<Source> {
        if topic == self.external.orders {
            Some(Source::Orders)
        } else if topic == self.line_results {
            Some(Source::LineResults)
        } else if topic == self.external.inventory_adjustments {
            Some(Source::Adjustments)
        } else if topic == self.order_lines {
            Some(Source::LineCommands)
        } else {
            None
        }
    }

    /// The topics the consumer subscribes to.
    pub fn sources(&self) -> [&str; 4] {
        [
            &self.external.orders,
            &self.line_results,
            &self.external.inventory_adjustments,
            &self.order_lines,
        ]
    }

    /// The topic of `sink`.
    pub fn sink(&self, sink: Sink) -> &str {
        match sink {
            Sink::OrderLines => &self.order_lines,
            Sink::LineResults => &self.line_results,
            Sink::Changelog(sub) => self.changelog(sub),
            Sink::OrdersConfirmed => &self.external.orders_confirmed,
            Sink::OrdersRejected => &self.external.orders_rejected,
            Sink::InventoryUpdated => &self.external.inventory_updated,
            Sink::Dlq => &self.external.orders_dlq,
        }
    }

    pub fn changelog(&self, sub: SubTopology) -> &str {
        match sub {
            SubTopology::Orders => &self.orders_changelog,
            SubTopology::Inventory => &self.inventory_changelog,
        }
    }

    /// The internal topics, for reset.
    pub fn internal(&self) -> [&str; 4] {
        [
            &self.order_lines,
            &self.line_results,
            &self.orders_changelog,
            &self.inventory_changelog,
        ]
    }

    /// Creates every missing topic and checks co-partitioning. Input and output topics that
    /// do not exist get `default_partitions`; internal topics get their sub-topology's count.
    /// Returns the partition count of each sub-topology.
    pub async fn ensure(
        &self,
        config: &ClientConfig,
        default_partitions: i32,
    ) -> Result<[i32; 2], TopicsError> {
        let external = &self.external;
        let outside: Vec<TopicSpec> = [
            &external.orders,
            &external.inventory_adjustments,
            &external.inventory_updated,
            &external.orders_confirmed,
            &external.orders_rejected,
            &external.orders_dlq,
        ]
        .into_iter()
        .map(|t| TopicSpec::new(t, default_partitions))
        .collect();
        let counts = ensure_topics(config, &outside).await?;
        let a = counts[&external.orders];
        let b = counts[&external.inventory_adjustments];
        let compacted =
            |name: &str, n| TopicSpec::new(name, n).with_config("cleanup.policy", "compact");
        let internal = [
            (TopicSpec::new(&self.line_results, a), &external.orders),
            (compacted(&self.orders_changelog, a), &external.orders),
            (
                TopicSpec::new(&self.order_lines, b),
                &external.inventory_adjustments,
            ),
            (
                compacted(&self.inventory_changelog, b),
                &external.inventory_adjustments,
            ),
        ];
        let specs: Vec<TopicSpec> = internal.iter().map(|(s, _)| s.clone()).collect();
        let counts = ensure_topics(config, &specs).await?;
        for (spec, with) in &internal {
            let found = counts[&spec.name];
            if found != spec.partitions {
                return Err(TopicsError::CoPartitioning {
                    topic: spec.name.clone(),
                    found,
                    expected: spec.partitions,
                    with: (*with).clone(),
                });
            }
        }
        Ok([a, b])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_names_follow_kafka_streams() {
        let topics = TopologyTopics::new("app", Topics::default());
        assert_eq!(topics.order_lines, "app-order-lines-repartition");
        assert_eq!(
            topics.changelog(SubTopology::Inventory),
            "app-inventory-changelog"
        );
        assert_eq!(topics.source("orders"), Some(Source::Orders));
        assert_eq!(
            topics.source("app-line-results-repartition"),
            Some(Source::LineResults)
        );
        assert_eq!(topics.source("orders-confirmed"), None);
    }
}
