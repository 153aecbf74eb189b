//! Topic and subject names. The external topics carry a configurable prefix, so that several
//! deployments (or tests) can share one cluster without sharing data.

use crate::events::TopicRole;

/// The external topics: inputs, outputs and the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub orders: String,
    pub inventory_adjustments: String,
    pub inventory_updated: String,
    pub orders_confirmed: String,
    pub orders_rejected: String,
    pub orders_dlq: String,
}

impl Default for Topics {
    fn default() -> Self {
        Self::with_prefix("")
    }
}

impl Topics {
    /// The standard names, each preceded by `prefix` (empty for the standard names).
    pub fn with_prefix(prefix: &str) -> Self {
        Self {
            orders: format!("{prefix}orders"),
            inventory_adjustments: format!("{prefix}inventory-adjustments"),
            inventory_updated: format!("{prefix}inventory-updated"),
            orders_confirmed: format!("{prefix}orders-confirmed"),
            orders_rejected: format!("{prefix}orders-rejected"),
            orders_dlq: format!("{prefix}orders-dlq"),
        }
    }

    /// The topic that plays `role`.
    pub fn name(&self, role: TopicRole) -> &str {
        match role {
            TopicRole::Orders => &self.orders,
            TopicRole::InventoryAdjustments => &self.inventory_adjustments,
            TopicRole::InventoryUpdated => &self.inventory_updated,
            TopicRole::OrdersConfirmed => &self.orders_confirmed,
            TopicRole::OrdersRejected => &self.orders_rejected,
        }
    }

    /// Every topic that carries Avro records (all but the dead-letter topic).
    pub fn avro_topics(&self) -> [&str; 5] {
        [
            &self.orders,
            &self.inventory_adjustments,
            &self.inventory_updated,
            &self.orders_confirmed,
            &self.orders_rejected,
        ]
    }
}

/// The registry subject of a topic's record values (TopicNameStrategy).
pub fn value_subject(topic: &str) -> String {
    format!("{topic}-value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixed_names_and_subjects() {
        let topics = Topics::with_prefix("t1-");
        assert_eq!(topics.name(TopicRole::Orders), "t1-orders");
        assert_eq!(topics.orders_dlq, "t1-orders-dlq");
        assert_eq!(
            value_subject(&topics.orders_confirmed),
            "t1-orders-confirmed-value"
        );
        assert_eq!(
            Topics::default().inventory_adjustments,
            "inventory-adjustments"
        );
    }
}
