//! Creating a topology's topics and checking that it can run on them.
//!
//! Co-partitioning: a sub-topology's sources must have equal partition counts (a task is one
//! partition of each), and each store's changelog has one partition per task. A sub-topology
//! has as many tasks as its external sources have partitions; an internal repartition topic
//! gets the count of the sub-topology that reads it. The processor creates what is missing
//! with the right counts and refuses to start on a mismatch, as Kafka Streams does.

use std::collections::BTreeMap;

use plumbing::admin::{AdminError, TopicSpec, ensure_topics};
use rdkafka::ClientConfig;

use super::topology::Topology;

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
    #[error("sub-topology {0} reads no external topic, so its partition count is unknown")]
    NoExternalSource(&'static str),
}

/// Creates every missing topic of `topology` and checks co-partitioning. External topics that
/// do not exist get `default_partitions`; internal topics get their sub-topology's count.
/// Returns the partition count of each sub-topology, and of each sink topic.
pub async fn ensure(
    topology: &Topology,
    config: &ClientConfig,
    default_partitions: i32,
) -> Result<Partitions, TopicsError> {
    let external: Vec<TopicSpec> = topology
        .subs
        .iter()
        .flat_map(|s| &s.sources)
        .chain(&topology.sinks)
        .filter(|t| !t.internal)
        .map(|t| t.name.as_str())
        .chain([topology.dead_letters.as_str()])
        .map(|name| TopicSpec::new(name, default_partitions))
        .collect();
    let counts = ensure_topics(config, &external).await?;

    let mut subs = Vec::with_capacity(topology.subs.len());
    for sub in &topology.subs {
        let mut found: Option<(i32, &str)> = None;
        for source in sub.sources.iter().filter(|t| !t.internal) {
            let n = counts[&source.name];
            match found {
                None => found = Some((n, &source.name)),
                Some((expected, with)) if expected != n => {
                    return Err(TopicsError::CoPartitioning {
                        topic: source.name.clone(),
                        found: n,
                        expected,
                        with: with.to_owned(),
                    });
                }
                Some(_) => {}
            }
        }
        subs.push(found.ok_or(TopicsError::NoExternalSource(sub.name))?);
    }

    // Internal topics: repartition topics with their reader's count, changelogs with their
    // store's sub-topology's.
    let mut internal: Vec<(TopicSpec, &str)> = Vec::new();
    for (sub, (n, with)) in topology.subs.iter().zip(&subs) {
        for source in sub.sources.iter().filter(|t| t.internal) {
            internal.push((TopicSpec::new(&source.name, *n), with));
        }
        for store in &sub.stores {
            let changelog =
                TopicSpec::new(&store.changelog, *n).with_config("cleanup.policy", "compact");
            internal.push((changelog, with));
        }
    }
    let specs: Vec<TopicSpec> = internal.iter().map(|(s, _)| s.clone()).collect();
    let internal_counts = ensure_topics(config, &specs).await?;
    for (spec, with) in &internal {
        let found = internal_counts[&spec.name];
        if found != spec.partitions {
            return Err(TopicsError::CoPartitioning {
                topic: spec.name.clone(),
                found,
                expected: spec.partitions,
                with: (*with).to_owned(),
            });
        }
    }
    let sinks = topology
        .sinks
        .iter()
        .map(|t| {
            let n = counts
                .get(&t.name)
                .or_else(|| internal_counts.get(&t.name))
                .copied()
                .unwrap_or(default_partitions);
            (t.name.clone(), n)
        })
        .collect();
    Ok(Partitions {
        subs: subs.into_iter().map(|(n, _)| n).collect(),
        sinks,
    })
}

/// Partition counts, as [`ensure`] found or made them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Partitions {
    /// Per sub-topology (its task count).
    pub subs: Vec<i32>,
    /// Per sink topic.
    pub sinks: BTreeMap<String, i32>,
}
