//! Topic administration shared by the generator and the processor: create the topics a
//! program writes to if they are missing, and check the partition counts of those that exist.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::metadata::Metadata;

/// How long a metadata or admin call may take before the broker counts as unreachable.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A topic to create if it is missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    /// Topic configs, such as `cleanup.policy=compact`.
    pub config: Vec<(String, String)>,
}

impl TopicSpec {
    pub fn new(name: impl Into<String>, partitions: i32) -> Self {
        Self {
            name: name.into(),
            partitions,
            config: Vec::new(),
        }
    }

    pub fn with_config(mut self, key: &str, value: &str) -> Self {
        self.config.push((key.to_owned(), value.to_owned()));
        self
    }
}

/// Why topics could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("Kafka at {bootstrap} is unreachable: {reason}")]
    Unreachable { bootstrap: String, reason: String },
    #[error("cannot create topic {topic}: {reason}")]
    Create { topic: String, reason: String },
}

/// The partitioner of every Stockflow producer: librdkafka's name for the Java clients' default
/// (murmur2), so a key lands on the same partition whichever client produced it. Co-partitioning
/// depends on it: the processor's commands keyed by sku must land where the sku's adjustments did.
pub const PARTITIONER: &str = "murmur2_random";

/// A client config with the bootstrap servers and extra librdkafka properties applied.
pub fn client_config(bootstrap: &str, extra: &[(String, String)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    for (key, value) in extra {
        config.set(key, value);
    }
    config
}

/// A connection to the cluster for metadata requests, whose errors name the bootstrap servers.
struct Cluster {
    client: BaseConsumer,
    bootstrap: String,
}

impl Cluster {
    fn connect(config: &ClientConfig) -> Result<Self, AdminError> {
        let bootstrap = config
            .get("bootstrap.servers")
            .unwrap_or_default()
            .to_owned();
        let client = config.create().map_err(|e| unreachable(&bootstrap, e))?;
        Ok(Self { client, bootstrap })
    }

    /// The metadata of every topic, in one call.
    fn metadata(&self) -> Result<Metadata, AdminError> {
        self.client
            .fetch_metadata(None, ADMIN_TIMEOUT)
            .map_err(|e| unreachable(&self.bootstrap, e))
    }

    fn partition_counts(&self, names: &[&str]) -> Result<HashMap<String, i32>, AdminError> {
        Ok(self
            .metadata()?
            .topics()
            .iter()
            .filter(|t| names.contains(&t.name()) && t.error().is_none())
            .map(|t| (t.name().to_owned(), t.partitions().len() as i32))
            .collect())
    }
}

fn unreachable(bootstrap: &str, error: KafkaError) -> AdminError {
    AdminError::Unreachable {
        bootstrap: bootstrap.to_owned(),
        reason: error.to_string(),
    }
}

/// Whether a broker answers: one metadata call, [`AdminError::Unreachable`] if none does
/// within [`ADMIN_TIMEOUT`]. Creates nothing (a program checks every service it needs this way
/// before it creates anything).
pub fn ping(config: &ClientConfig) -> Result<(), AdminError> {
    Cluster::connect(config)?.metadata().map(drop)
}

/// The partition count of every topic in `names` that exists (metadata of the whole cluster,
/// one call). Fails with [`AdminError::Unreachable`] when no broker answers.
pub fn partition_counts(
    config: &ClientConfig,
    names: &[&str],
) -> Result<HashMap<String, i32>, AdminError> {
    Cluster::connect(config)?.partition_counts(names)
}

/// Creates each topic in `specs` that does not exist yet (replication factor 1 on a
/// single-broker cluster, else the broker default). Existing topics are left as they are;
/// their partition counts are returned so the caller can check them.
pub async fn ensure_topics(
    config: &ClientConfig,
    specs: &[TopicSpec],
) -> Result<HashMap<String, i32>, AdminError> {
    let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    let cluster = Cluster::connect(config)?;
    let existing = cluster.partition_counts(&names)?;
    let missing: Vec<&TopicSpec> = specs
        .iter()
        .filter(|s| !existing.contains_key(&s.name))
        .collect();
    if missing.is_empty() {
        return Ok(existing);
    }
    let admin: AdminClient<DefaultClientContext> = config
        .create()
        .map_err(|e| unreachable(&cluster.bootstrap, e))?;
    let new_topics: Vec<NewTopic> = missing
        .iter()
        .map(|spec| {
            let mut topic = NewTopic::new(&spec.name, spec.partitions, TopicReplication::Fixed(-1));
            for (key, value) in &spec.config {
                topic = topic.set(key, value);
            }
            topic
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
    let results = admin
        .create_topics(&new_topics, &options)
        .await
        .map_err(|e| AdminError::Create {
            topic: names.join(","),
            reason: e.to_string(),
        })?;
    for result in results {
        match result {
            Ok(_) => {}
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(AdminError::Create {
                    topic,
                    reason: code.to_string(),
                });
            }
        }
    }
    let created: Vec<&str> = missing.iter().map(|s| s.name.as_str()).collect();
    await_visible(&cluster, &created).await?;
    let mut counts = existing;
    counts.extend(missing.iter().map(|s| (s.name.clone(), s.partitions)));
    Ok(counts)
}

/// How often [`await_visible`] asks for the metadata again.
const VISIBLE_POLL: Duration = Duration::from_millis(50);

/// Waits until every topic in `names` is in the broker's metadata with a leader for each
/// partition. A topic the controller has just created may not be there yet; a consumer that
/// subscribes to it meanwhile is assigned none of its partitions and, with librdkafka, only
/// notices the topic at its next metadata refresh, minutes later. (Kafka Streams' internal
/// topic manager likewise describes the topics it created until they are ready.)
async fn await_visible(cluster: &Cluster, names: &[&str]) -> Result<(), AdminError> {
    let deadline = tokio::time::Instant::now() + ADMIN_TIMEOUT;
    loop {
        let metadata = cluster.metadata()?;
        let ready = |name: &&str| {
            metadata.topics().iter().any(|t| {
                t.name() == *name
                    && t.error().is_none()
                    && !t.partitions().is_empty()
                    && t.partitions().iter().all(|p| p.leader() >= 0)
            })
        };
        let waiting: Vec<&str> = names.iter().filter(|n| !ready(n)).copied().collect();
        if waiting.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(AdminError::Create {
                topic: waiting.join(","),
                reason: format!(
                    "created, but not in the broker's metadata after {ADMIN_TIMEOUT:?}"
                ),
            });
        }
        tokio::time::sleep(VISIBLE_POLL).await;
    }
}
