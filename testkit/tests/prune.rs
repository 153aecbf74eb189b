//! `scripts/stack.sh prune` deletes what the tests and benchmarks made, by its reserved prefix,
//! and nothing else: a user's topic with a dated name (`shop-20261201-orders`, which the old
//! pattern `[a-z0-9-]+-[0-9]{6,}-.+` matched) and a user's schema (`t_shop`, which `t_%`
//! matched) survive it.
//!
//! Prune deletes every test's topics and schemas, those of tests still running too: this test
//! is a test binary of its own, which cargo runs after or before the others, never beside them.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use testkit::{pg_schema, stack, unique};

const TIMEOUT: Duration = Duration::from_secs(30);

/// A user's topic and schema, named as the old prune pattern would have deleted them.
const USER_TOPIC: &str = "shop-20261201-orders";
const USER_SCHEMA: &str = "t_shop_20261201";

fn topic_exists(config: &ClientConfig, topic: &str) -> bool {
    let consumer: BaseConsumer = config.create().expect("a metadata client");
    consumer
        .fetch_metadata(None, TIMEOUT)
        .expect("Kafka answers")
        .topics()
        .iter()
        .any(|t| t.name() == topic && t.error().is_none())
}

async fn schema_exists(pool: &sqlx::PgPool, schema: &str) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
        .bind(schema)
        .fetch_one(pool)
        .await
        .expect("PostgreSQL answers")
}

#[tokio::test]
async fn prune_deletes_only_the_reserved_prefix() {
    let stack = stack().await;
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &stack.bootstrap_servers);
    let admin: AdminClient<DefaultClientContext> = config.create().expect("an admin client");
    let options = AdminOptions::new().operation_timeout(Some(TIMEOUT));
    let pool = testkit::postgres::pool(&stack.database_url, "public").await;

    // A user's topic and schema that this test did not make are left as they are, after it too.
    let user_topic_was_there = topic_exists(&config, USER_TOPIC);
    let user_schema_was_there = schema_exists(&pool, USER_SCHEMA).await;
    let test_topic = format!("{}-orders", unique("prune"));
    let test_schema = pg_schema(&unique("prune"));
    let mut topics = vec![NewTopic::new(&test_topic, 1, TopicReplication::Fixed(1))];
    if !user_topic_was_there {
        topics.push(NewTopic::new(USER_TOPIC, 1, TopicReplication::Fixed(1)));
    }
    for result in admin
        .create_topics(&topics, &options)
        .await
        .expect("creates the topics")
    {
        result.expect("a topic is created");
    }
    for schema in [USER_SCHEMA, &test_schema] {
        sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
            .execute(&pool)
            .await
            .expect("creates the schema");
    }
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !(topic_exists(&config, &test_topic) && topic_exists(&config, USER_TOPIC)) {
        assert!(tokio::time::Instant::now() < deadline, "topics visible");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let pruned = stack.prune();
    // Checked, then cleaned up, then asserted: a failure leaves no user-like names behind.
    let user_topic_kept = topic_exists(&config, USER_TOPIC);
    let user_schema_kept = schema_exists(&pool, USER_SCHEMA).await;
    let mut test_topic_gone = false;
    let mut test_schema_gone = false;
    if pruned {
        // Topic deletion is asynchronous: the test's topic goes soon after.
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while !test_topic_gone && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            test_topic_gone = !topic_exists(&config, &test_topic);
        }
        test_schema_gone = !schema_exists(&pool, &test_schema).await;
    } else {
        eprintln!("services in containers: scripts/stack.sh prune works on the local stack only");
    }

    let mut cleanup = vec![];
    if !user_topic_was_there {
        cleanup.push(USER_TOPIC);
    }
    if !pruned {
        cleanup.push(&test_topic);
    }
    if !cleanup.is_empty() {
        admin
            .delete_topics(&cleanup, &options)
            .await
            .expect("deletes the topics this test made");
    }
    for (schema, made) in [
        (USER_SCHEMA, !user_schema_was_there),
        (test_schema.as_str(), !pruned),
    ] {
        if made {
            sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\""))
                .execute(&pool)
                .await
                .expect("drops a schema this test made");
        }
    }

    assert!(user_topic_kept, "prune keeps the user's topic {USER_TOPIC}");
    assert!(
        user_schema_kept,
        "prune keeps the user's schema {USER_SCHEMA}"
    );
    if pruned {
        assert!(
            test_topic_gone,
            "prune deletes the test's topic {test_topic}"
        );
        assert!(
            test_schema_gone,
            "prune drops the test's schema {test_schema}"
        );
    }
}
