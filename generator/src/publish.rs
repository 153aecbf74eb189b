//! Publishing contracts to Kafka: an idempotent producer, records keyed as the design says,
//! many sends in flight, and every delivery accounted for.

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use plumbing::admin::{AdminError, TopicSpec, ensure_topics};
use plumbing::connection::ConnectionArgs;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use schemas::registry::RegistryError;
use schemas::{Codec, CodecError, Contract, Registry, Topics};

/// How many sends may await their delivery report at once.
const MAX_IN_FLIGHT: usize = 50_000;

/// Why publishing failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Kafka(#[from] AdminError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("cannot create the Kafka producer: {0}")]
    Producer(KafkaError),
    #[error("{failed} deliveries failed; the first: {first}")]
    Deliveries { failed: u64, first: String },
}

/// Counts of what was published.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delivered {
    pub acknowledged: u64,
    pub failed: u64,
}

/// An idempotent producer of Stockflow contracts.
pub struct Publisher {
    producer: FutureProducer,
    codec: Codec,
    in_flight: FuturesUnordered<DeliveryFuture>,
    delivered: Delivered,
    first_error: Option<String>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("in_flight", &self.in_flight.len())
            .field("delivered", &self.delivered)
            .finish()
    }
}

impl Publisher {
    /// Checks that the registry and Kafka answer, registers the contracts (refusing an
    /// incompatible change before anything is produced), and creates the input topics with
    /// `partitions` partitions if they are missing.
    pub async fn connect(
        connection: &ConnectionArgs,
        partitions: i32,
    ) -> Result<Self, PublishError> {
        let topics: Topics = connection.topics();
        let registry = Registry::new(&connection.schema_registry_url)?;
        registry.ping().await?;
        // Refused contracts are refused before a topic is created: a failed start leaves
        // nothing behind (Kafka's reachability is checked before creating, in ensure_topics).
        registry.check_all(&topics).await?;
        let config = connection.client_config();
        ensure_topics(
            &config,
            &[
                TopicSpec::new(&topics.orders, partitions),
                TopicSpec::new(&topics.inventory_adjustments, partitions),
            ],
        )
        .await?;
        registry.register_all(&topics).await?;
        let producer: FutureProducer = config
            .clone()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("partitioner", plumbing::admin::PARTITIONER)
            .set("linger.ms", "5")
            .set("batch.num.messages", "10000")
            .set("queue.buffering.max.messages", "1000000")
            .create()
            .map_err(PublishError::Producer)?;
        // Connect before the first record: a record is stamped when it is handed to the
        // producer, and the first ones would otherwise wait out the connection (about 300 ms
        // here), arriving later than an event-time processor lets an idle partition wait.
        let warm = producer.clone();
        let topic = topics.orders.clone();
        tokio::task::spawn_blocking(move || {
            warm.client()
                .fetch_metadata(Some(&topic), std::time::Duration::from_secs(10))
                .map(|_| ())
        })
        .await
        .unwrap_or(Ok(()))
        .map_err(PublishError::Producer)?;
        let codec = Codec::new(&connection.schema_registry_url, &topics)?;
        Ok(Self {
            producer,
            codec,
            in_flight: FuturesUnordered::new(),
            delivered: Delivered::default(),
            first_error: None,
        })
    }

    /// What has been acknowledged or has failed so far.
    pub fn delivered(&self) -> Delivered {
        self.delivered
    }

    /// Sends awaiting their delivery report.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Encodes `event` and hands it to the producer, keyed by [`Contract::key`], on `topic`.
    pub async fn send<C: Contract>(&mut self, topic: &str, event: &C) -> Result<(), PublishError> {
        let payload = self.codec.encode(event).await?;
        let mut record = FutureRecord::to(topic).key(event.key()).payload(&payload);
        loop {
            while self.in_flight.len() >= MAX_IN_FLIGHT {
                self.reap_one().await;
            }
            match self.producer.send_result(record) {
                Ok(delivery) => {
                    self.in_flight.push(delivery);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    if self.in_flight.is_empty() {
                        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    } else {
                        self.reap_one().await;
                    }
                }
                Err((e, _)) => {
                    self.fail(e.to_string());
                    break;
                }
            }
        }
        // Collect reports that are already in, without waiting.
        while let Some(Some(result)) = futures::FutureExt::now_or_never(self.in_flight.next()) {
            self.account(result);
        }
        Ok(())
    }

    async fn reap_one(&mut self) {
        if let Some(result) = self.in_flight.next().await {
            self.account(result);
        }
    }

    fn account(
        &mut self,
        result: Result<
            rdkafka::producer::future_producer::OwnedDeliveryResult,
            futures::channel::oneshot::Canceled,
        >,
    ) {
        match result {
            Ok(Ok(_)) => self.delivered.acknowledged += 1,
            Ok(Err((e, _))) => self.fail(e.to_string()),
            Err(_) => self.fail("the producer dropped a delivery report".to_owned()),
        }
    }

    fn fail(&mut self, error: String) {
        self.delivered.failed += 1;
        self.first_error.get_or_insert(error);
    }

    /// Waits for every delivery report; fails if any send failed.
    pub async fn finish(mut self) -> Result<Delivered, PublishError> {
        while !self.in_flight.is_empty() {
            self.reap_one().await;
        }
        let _ = self.producer.flush(std::time::Duration::from_secs(30));
        match self.first_error {
            None => Ok(self.delivered),
            Some(first) => Err(PublishError::Deliveries {
                failed: self.delivered.failed,
                first,
            }),
        }
    }
}
