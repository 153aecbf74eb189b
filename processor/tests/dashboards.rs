//! Every Grafana panel's query returns data from the local stack's Prometheus while a real
//! processor runs and is scraped (the stack's Prometheus scrapes 127.0.0.1:9400-9403; this test
//! serves the processor's metrics on 9403).

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::World;

const METRICS_ADDR: &str = "127.0.0.1:9403";

fn prometheus_url() -> String {
    std::env::var("PROMETHEUS_URL").unwrap_or_else(|_| {
        panic!("PROMETHEUS_URL is not set: start the local stack (`scripts/stack.sh start`, then `eval \"$(scripts/stack.sh env)\"`)")
    })
}

/// Every PromQL expression of every panel (rows included), with the panel's title.
fn panel_queries() -> Vec<(String, String)> {
    fn walk(panels: &[Value], out: &mut Vec<(String, String)>) {
        for panel in panels {
            let title = panel["title"].as_str().unwrap_or_default().to_owned();
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    out.push((title.clone(), expr.to_owned()));
                }
            }
            walk(
                panel["panels"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default(),
                out,
            );
        }
    }
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../grafana/dashboards");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("the dashboards directory") {
        let path = entry.expect("a dashboard file").path();
        let dashboard: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("readable")).expect("JSON");
        walk(dashboard["panels"].as_array().expect("panels"), &mut out);
    }
    out
}

async fn query(prometheus: &str, expr: &str) -> Vec<Value> {
    let url =
        reqwest::Url::parse_with_params(&format!("{prometheus}/api/v1/query"), &[("query", expr)])
            .expect("a query URL");
    let response: Value = reqwest::get(url)
        .await
        .expect("Prometheus answers")
        .json()
        .await
        .expect("a JSON answer");
    assert_eq!(response["status"], "success", "{expr}: {response}");
    response["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_query_returns_data_from_a_running_processor() {
    let prometheus = prometheus_url();
    let world = World::new("dashboards").await;
    world.seed(20, 1000).await;
    let token = tokio_util::sync::CancellationToken::new();
    let mut args = world.run_args(&[]);
    args.metrics_addr = METRICS_ADDR.parse().expect("an address");
    let running = processor::app::start(&world.connection, &args, token.clone())
        .await
        .unwrap_or_else(|e| {
            panic!("the processor starts on {METRICS_ADDR} (is the port free?): {e:#}")
        });

    // Traffic for the whole observation: orders, duplicates, invalid ones and a dead letter.
    world
        .send_raw(&world.topics.orders, "garbage", b"not avro")
        .await;
    let traffic = world.spawn_generator(&[
        "--rate",
        "200",
        "--duration",
        "40s",
        "--synthetic-skus",
        "20",
        "--duplicate-rate",
        "0.05",
        "--invalid-rate",
        "0.05",
    ]);

    // Wait until Prometheus has scraped this processor a few times while orders flow.
    let started = Instant::now();
    let selector = format!("stockflow_order_outcomes_total{{instance=\"{METRICS_ADDR}\"}}");
    loop {
        let rate = query(&prometheus, &format!("sum(rate({selector}[1m]))")).await;
        let flowing = rate
            .first()
            .and_then(|r| r["value"][1].as_str()?.parse::<f64>().ok())
            .is_some_and(|v| v > 0.0);
        if flowing && started.elapsed() > Duration::from_secs(20) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "Prometheus never scraped outcomes from {METRICS_ADDR}"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    let queries = panel_queries();
    assert!(
        queries.len() > 20,
        "the dashboards have their panels: {}",
        queries.len()
    );
    let mut empty = Vec::new();
    for (title, expr) in &queries {
        if query(&prometheus, expr).await.is_empty() {
            empty.push(format!("{title}: {expr}"));
        }
    }
    assert!(
        empty.is_empty(),
        "panels without data:\n{}",
        empty.join("\n")
    );

    token.cancel();
    running.wait().await.expect("stops cleanly");
    traffic.await.expect("traffic sent");
}
