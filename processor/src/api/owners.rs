//! Which instance owns a partition: the consumer group's assignment as Kafka describes it, and
//! the address each member's client id names (the one its API is served on; see
//! `crate::status::client_id`). Kafka Streams answers the same question from the assignment
//! its members exchange (`queryMetadataForKey`); librdkafka exposes no custom assignment data,
//! but the group's description carries each member's partitions and client id.
//!
//! A description costs a broker round trip, so it is kept for [`FRESH_FOR`]; a caller that
//! finds it wrong (the owner it named does not serve the partition) drops it with
//! [`Owners::forget`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::ClientConfig;
use rdkafka::consumer::BaseConsumer;
use tokio::sync::Mutex;

use crate::group::outside_consumer;
use crate::status::{MemberName, describe_group};

/// How long a description of the group is trusted.
pub const FRESH_FOR: Duration = Duration::from_secs(2);

/// The API address of the member owning each assigned (topic, partition).
type Assignment = HashMap<(String, i32), String>;

/// The group's owners of each (topic, partition), with a short-lived cache.
pub struct Owners {
    consumer: Arc<BaseConsumer>,
    group: String,
    cache: Mutex<Option<(Instant, Assignment)>>,
}

impl std::fmt::Debug for Owners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Owners")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl Owners {
    /// Owners of `group`'s partitions, asked of the cluster `config` names.
    pub fn new(config: &ClientConfig, group: &str) -> anyhow::Result<Self> {
        Ok(Self {
            consumer: Arc::new(outside_consumer(config, group)?),
            group: group.to_owned(),
            cache: Mutex::new(None),
        })
    }

    /// The address of the API of the member that owns `topic`'s `partition` (`None`: no
    /// member does now, as during a rebalance, or its client id names no address).
    pub async fn owner(&self, topic: &str, partition: i32) -> anyhow::Result<Option<String>> {
        let mut cache = self.cache.lock().await;
        let fresh = cache
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < FRESH_FOR);
        if !fresh {
            let (consumer, group) = (self.consumer.clone(), self.group.clone());
            let owners = tokio::task::spawn_blocking(move || describe(&consumer, &group))
                .await
                .context("the group description panicked")??;
            *cache = Some((Instant::now(), owners));
        }
        Ok(cache
            .as_ref()
            .and_then(|(_, owners)| owners.get(&(topic.to_owned(), partition)).cloned()))
    }

    /// Drops the cached description: the next question asks Kafka again.
    pub async fn forget(&self) {
        *self.cache.lock().await = None;
    }
}

/// Each assigned (topic, partition) of `group` and the API address of its member.
fn describe(consumer: &BaseConsumer, group: &str) -> anyhow::Result<Assignment> {
    let Some(view) = describe_group(consumer, group)? else {
        return Ok(HashMap::new());
    };
    let mut owners = HashMap::new();
    for member in view.members {
        let Some(name) = MemberName::parse(&member.client_id) else {
            continue;
        };
        let addr = name.status_addr(&member.host);
        for partition in member.partitions {
            owners.insert(partition, addr.clone());
        }
    }
    Ok(owners)
}
