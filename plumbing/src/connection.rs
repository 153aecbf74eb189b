//! The connection flags every Stockflow binary shares: where Kafka and the schema registry
//! are, how topics are named, and extra librdkafka properties.

use clap::Args;
use schemas::Topics;

/// Where Kafka and the schema registry are, and how topics are named.
#[derive(Debug, Clone, Args)]
pub struct ConnectionArgs {
    /// Kafka bootstrap servers.
    #[arg(
        long,
        env = "KAFKA_BOOTSTRAP_SERVERS",
        default_value = "127.0.0.1:9092",
        global = true
    )]
    pub bootstrap_servers: String,

    /// Schema registry base URL (Confluent-compatible API; for Apicurio, `.../apis/ccompat/v7`).
    #[arg(
        long,
        env = "SCHEMA_REGISTRY_URL",
        default_value = "http://127.0.0.1:8081/apis/ccompat/v7",
        global = true
    )]
    pub schema_registry_url: String,

    /// Prefix of every topic name (lets several deployments share a cluster).
    #[arg(
        long,
        env = "STOCKFLOW_TOPIC_PREFIX",
        default_value = "",
        global = true
    )]
    pub topic_prefix: String,

    /// Extra librdkafka property for every client, as KEY=VALUE (repeatable).
    #[arg(short = 'X', long = "kafka-property", value_name = "KEY=VALUE", value_parser = parse_key_value, global = true)]
    pub kafka_properties: Vec<(String, String)>,
}

impl ConnectionArgs {
    /// Connection arguments as the flags would give them, with no extra Kafka properties (for
    /// tests and benchmarks that build them by hand).
    pub fn new(bootstrap_servers: &str, schema_registry_url: &str, topic_prefix: &str) -> Self {
        Self {
            bootstrap_servers: bootstrap_servers.to_owned(),
            schema_registry_url: schema_registry_url.to_owned(),
            topic_prefix: topic_prefix.to_owned(),
            kafka_properties: Vec::new(),
        }
    }

    /// The external topics' names, under the prefix.
    pub fn topics(&self) -> Topics {
        Topics::with_prefix(&self.topic_prefix)
    }

    /// A librdkafka config with the bootstrap servers and the extra properties.
    pub fn client_config(&self) -> rdkafka::ClientConfig {
        crate::admin::client_config(&self.bootstrap_servers, &self.kafka_properties)
    }
}

/// Parses `KEY=VALUE`.
pub fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got `{s}`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_values_parse() {
        assert_eq!(
            parse_key_value("linger.ms=5"),
            Ok(("linger.ms".into(), "5".into()))
        );
        assert_eq!(parse_key_value("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(parse_key_value("novalue").is_err());
        assert!(parse_key_value("=x").is_err());
    }

    #[test]
    fn built_by_hand_like_the_flags() {
        let connection = ConnectionArgs::new("k:9092", "http://r", "t1-");
        assert_eq!(connection.topics().orders, "t1-orders");
        assert_eq!(
            connection.client_config().get("bootstrap.servers"),
            Some("k:9092")
        );
    }
}
