//! Scaling (`--scaling`): orders/s and latency with 1, 2 and 3 instances on this machine, and
//! what a scale-out costs while orders flow: the dip in decisions per second, how long it lasts,
//! and the new instance's time from start to ready.

use std::time::{Duration, Instant};

use testkit::prometheus::{is_ready, scrape};

use crate::Config;
use crate::latency::latency_on;
use crate::setup::{
    DECIDED, Processor, RunNames, publish, seed, settled, start_instances, start_processor,
};

/// One instance count's figures.
pub struct ScaleRow {
    pub instances: usize,
    pub orders: u64,
    /// Publishing and deciding `orders`, from the moment the group settled.
    pub seconds: f64,
    pub p50: f64,
    pub p99: f64,
    /// The latency run's rate.
    pub rate: u64,
}

/// A scale-out from one instance to two while orders flow at `rate`.
pub struct ScaleOut {
    pub protocol: String,
    pub rate: u64,
    /// Decisions per second before the second instance started (mean of whole seconds).
    pub before: f64,
    /// The lowest decisions per second in a whole second after it started.
    pub lowest: f64,
    /// How long decisions stayed below 90% of the rate, from the first second below it.
    pub below_seconds: f64,
    /// From the second instance's start to its `/ready` with tasks assigned.
    pub join_to_ready: f64,
}

/// Orders decided so far by `processors` together (a dead one counts nothing).
async fn decided(processors: &[&Processor]) -> f64 {
    let mut sum = 0.0;
    for processor in processors {
        sum += scrape(processor.metrics)
            .await
            .unwrap_or_default()
            .sum(DECIDED);
    }
    sum
}

/// Orders/s with `instances` instances: the group settles first, then `config.orders`
/// single-line orders are published at full speed with the clock running (the publisher's CPU
/// is the same in every row), until all are decided. Then the latency at a fixed rate.
pub async fn scale_row(config: &Config, instances: usize, rate: u64) -> ScaleRow {
    let run = RunNames::new("scale");
    let connection = run.connection(config);
    seed(&connection).await;
    let processors = start_instances(config, &run, instances, "exactly_once_v2").await;
    let handles: Vec<&Processor> = processors.iter().map(|(p, _)| p).collect();
    let started = Instant::now();
    let summary = publish(&connection, config.orders, 1, 0, 42).await;
    let target = (summary.valid + summary.invalid) as f64;
    while decided(&handles).await < target {
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "{instances} instances: not done in 15 minutes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    for (processor, _) in processors {
        processor.process.kill();
    }
    let latency = latency_on(config, instances, rate).await;
    ScaleRow {
        instances,
        orders: target as u64,
        seconds,
        p50: latency.p50,
        p99: latency.p99,
        rate,
    }
}

/// One instance decides orders arriving at `rate` for `seconds`; a second one starts a third
/// of the way in. Decisions are sampled every 250 ms from both instances' metrics.
pub async fn scale_out(config: &Config, rate: u64, seconds: u64, extra: &[&str]) -> ScaleOut {
    let run = RunNames::new("scale-out");
    let connection = run.connection(config);
    seed(&connection).await;
    let mut with_extra = config.clone();
    with_extra
        .processor_args
        .extend(extra.iter().map(|s| (*s).to_owned()));
    let config = &with_extra;
    let first = start_instances(config, &run, 1, "exactly_once_v2").await;
    let publisher = {
        let connection = connection.clone();
        tokio::spawn(async move { publish(&connection, rate * seconds, 1, rate, 9).await })
    };
    let started = Instant::now();
    let join_at = Duration::from_secs(seconds / 3);
    let second_state = tempfile::tempdir().expect("state dir");
    let mut second: Option<(Processor, Instant)> = None;
    let mut join_to_ready = None;
    // (seconds since start, decided so far)
    let mut samples: Vec<(f64, f64)> = Vec::new();
    let expected = (rate * seconds) as f64;
    loop {
        let now = started.elapsed();
        if second.is_none() && now >= join_at {
            let processor =
                start_processor(config, &run, second_state.path(), "exactly_once_v2", None);
            second = Some((processor, Instant::now()));
        }
        let mut handles = vec![&first[0].0];
        if let Some((processor, launched)) = &second {
            handles.push(processor);
            if join_to_ready.is_none()
                && is_ready(processor.metrics).await
                && settled(&handles).await
            {
                join_to_ready = Some(launched.elapsed().as_secs_f64());
            }
        }
        let total = decided(&handles).await;
        samples.push((started.elapsed().as_secs_f64(), total));
        if total >= expected && join_to_ready.is_some() {
            break;
        }
        assert!(
            now < Duration::from_secs(seconds + 300),
            "scale-out: {total} of {expected} decided"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    publisher.await.expect("publisher");
    // Decisions per whole second.
    let per_second: Vec<f64> = (1..)
        .map(|s| s as f64)
        .take_while(|&s| s <= samples.last().map_or(0.0, |l| l.0))
        .map(|s| at(&samples, s) - at(&samples, s - 1.0))
        .collect();
    let join = join_at.as_secs_f64() as usize;
    // Before: after a few seconds of warm-up, up to the join.
    let before = mean(&per_second[3.min(join)..join]);
    let after = &per_second[join..per_second.len().min(join + 60)];
    let lowest = after.iter().copied().fold(f64::INFINITY, f64::min);
    let threshold = 0.9 * rate as f64;
    let below_seconds = after
        .iter()
        .skip_while(|&&r| r >= threshold)
        .take_while(|&&r| r < threshold)
        .count() as f64;
    let protocol = extra
        .windows(2)
        .find(|w| w[0] == "--group-protocol")
        .map_or("classic (eager range)".to_owned(), |w| w[1].to_owned());
    if let Some((processor, _)) = second {
        processor.process.kill();
    }
    for (processor, _) in first {
        processor.process.kill();
    }
    ScaleOut {
        protocol,
        rate,
        before,
        lowest,
        below_seconds,
        join_to_ready: join_to_ready.unwrap_or(f64::NAN),
    }
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

/// Decisions at `time`, interpolated between samples.
fn at(samples: &[(f64, f64)], time: f64) -> f64 {
    let i = samples.partition_point(|&(t, _)| t < time);
    match (i.checked_sub(1).map(|j| samples[j]), samples.get(i)) {
        (Some((t0, d0)), Some(&(t1, d1))) if t1 > t0 => d0 + (d1 - d0) * (time - t0) / (t1 - t0),
        (_, Some(&(_, d))) | (Some((_, d)), None) => d,
        (None, None) => 0.0,
    }
}

/// The scaling tables.
pub fn print_scaling(rows: &[ScaleRow], outs: &[ScaleOut]) {
    println!();
    println!(
        "| instances | orders | seconds | orders/s | vs 1 instance | latency p50 ms | p99 ms (at orders/s) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let one = rows
        .first()
        .map_or(f64::NAN, |r| r.orders as f64 / r.seconds);
    for row in rows {
        let rate = row.orders as f64 / row.seconds;
        println!(
            "| {} | {} | {:.1} | {:.0} | {:.2} | {:.0} | {:.0} ({}) |",
            row.instances,
            row.orders,
            row.seconds,
            rate,
            rate / one,
            row.p50,
            row.p99,
            row.rate
        );
    }
    println!();
    println!(
        "| scale-out 1 -> 2, protocol | offered orders/s | decided/s before | lowest 1 s after | seconds below 90% | start to ready s |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for out in outs {
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.1} |",
            out.protocol, out.rate, out.before, out.lowest, out.below_seconds, out.join_to_ready
        );
    }
}
