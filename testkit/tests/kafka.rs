//! Reading up to the high watermarks against the real Kafka: transaction markers and aborted
//! records do not hold a reader back, read_uncommitted sees the aborted records too, a reader
//! goes on from where it stopped, and one that expects more than there is fails at its
//! deadline saying what it found.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use testkit::{Isolation, TopicReader, read_at_least, read_to_end, stack, unique};

const TIMEOUT: Duration = Duration::from_secs(30);

/// One transaction of `count` records over the topic's two partitions, committed or aborted.
fn transaction(producer: &BaseProducer, topic: &str, count: usize, commit: bool) {
    producer.begin_transaction().expect("begins");
    for i in 0..count {
        let key = format!("key-{i}");
        producer
            .send(
                BaseRecord::to(topic)
                    .partition((i % 2) as i32)
                    .key(&key)
                    .payload("value"),
            )
            .expect("queued");
    }
    // Written to the log either way: an abort leaves its records there, marked aborted.
    producer.flush(TIMEOUT).expect("delivered");
    if commit {
        producer.commit_transaction(TIMEOUT).expect("commits");
    } else {
        producer.abort_transaction(TIMEOUT).expect("aborts");
    }
}

#[tokio::test]
async fn reads_stop_at_the_high_watermarks_past_markers_and_aborted_records() {
    let stack = stack().await;
    let topic = unique("testkit-read");
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &stack.bootstrap_servers);
    let admin: AdminClient<DefaultClientContext> = config.create().expect("an admin client");
    admin
        .create_topics(
            &[NewTopic::new(&topic, 2, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(TIMEOUT)),
        )
        .await
        .expect("creates the topic")
        .into_iter()
        .for_each(|result| {
            result.expect("the topic is created");
        });
    let producer: BaseProducer = config
        .clone()
        .set("transactional.id", unique("testkit-producer"))
        .create()
        .expect("a producer");
    producer.init_transactions(TIMEOUT).expect("init");
    transaction(&producer, &topic, 3, true);
    transaction(&producer, &topic, 2, false);
    transaction(&producer, &topic, 1, true);

    let bootstrap = stack.bootstrap_servers.as_str();
    let committed = read_to_end(bootstrap, &[&topic], Isolation::ReadCommitted).await;
    assert_eq!(committed.len(), 4, "the committed records, not the aborted");
    let all = read_to_end(bootstrap, &[&topic], Isolation::ReadUncommitted).await;
    assert_eq!(
        all.len(),
        6,
        "read_uncommitted sees the aborted records too"
    );

    // A reader goes on from where it stopped.
    let mut reader = TopicReader::new(bootstrap, &[&topic], Isolation::ReadCommitted);
    assert_eq!(reader.read_to_end(TIMEOUT).await.len(), 4);
    transaction(&producer, &topic, 2, true);
    let more = reader.read_at_least(2, TIMEOUT).await;
    assert_eq!(more.len(), 2, "only the records after the first read");

    // Expecting more than there is fails at the deadline, saying what was found.
    let (bootstrap, name) = (bootstrap.to_owned(), topic.clone());
    let failed = tokio::spawn(async move {
        read_at_least(
            &bootstrap,
            &[&name],
            Isolation::ReadCommitted,
            7,
            Duration::from_secs(2),
        )
        .await
    })
    .await
    .expect_err("7 records are not there");
    let message = failed
        .into_panic()
        .downcast::<String>()
        .map(|m| *m)
        .unwrap_or_default();
    assert!(
        message.contains("read 6 records (expected at least 7)") && message.contains(&topic),
        "{message}"
    );
}
