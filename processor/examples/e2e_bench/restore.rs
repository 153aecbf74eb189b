//! The restore rate: a new instance with an empty state dir rebuilds a throughput run's state
//! from its changelogs.

use std::time::{Duration, Instant};

use testkit::prometheus::{is_ready, scrape};

use crate::Config;
use crate::setup::{RunNames, start_processor};

/// A new instance with an empty state dir restores everything from the changelogs.
pub async fn restore_rate(config: &Config, run: &RunNames) -> (f64, f64, f64) {
    let state = tempfile::tempdir().expect("state dir");
    let log = state.path().join("processor.log");
    let started = Instant::now();
    let processor = start_processor(
        config,
        run,
        state.path(),
        "exactly_once_v2",
        Some(log.as_path()),
    );
    while !is_ready(processor.metrics).await {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let restored = scrape(processor.metrics)
        .await
        .unwrap_or_default()
        .sum("stockflow_restored_records_total");
    processor.process.kill();
    // Time spent restoring alone: the sum of the tasks' `elapsed_ms` in "task running" lines.
    let restoring_ms: f64 = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("task running"))
        .filter_map(|l| {
            l.split("elapsed_ms")
                .nth(1)?
                .trim_start_matches(|c: char| !c.is_ascii_digit())
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<f64>()
                .ok()
        })
        .sum();
    (restored, seconds, restoring_ms / 1000.0)
}
