//! Scraping a process's Prometheus `/metrics` page and reading samples from it, and waiting
//! for its `/ready` endpoint.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// One sample of a scraped page: `name{label="value",...} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// The value of label `name`, if the sample has it.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A parsed page in the Prometheus text exposition format.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape {
    pub samples: Vec<Sample>,
}

impl Scrape {
    /// Parses a page; comment lines and lines that are not samples are skipped.
    pub fn parse(text: &str) -> Self {
        Self {
            samples: text.lines().filter_map(parse_line).collect(),
        }
    }

    /// The samples of metric `name` (exactly that name: `x_sum` is another metric than `x`).
    pub fn of<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }

    /// The sum of metric `name` over all its label sets; `None` when the page does not have it.
    pub fn get(&self, name: &str) -> Option<f64> {
        let mut samples = self.of(name).peekable();
        samples.peek()?;
        Some(samples.map(|s| s.value).sum())
    }

    /// The sum of metric `name` over all its label sets (0 when the page does not have it).
    pub fn sum(&self, name: &str) -> f64 {
        self.get(name).unwrap_or(0.0)
    }

    /// The sum of metric `name` over the label sets where `label` is `value`.
    pub fn sum_where(&self, name: &str, label: &str, value: &str) -> f64 {
        self.of(name)
            .filter(|s| s.label(label) == Some(value))
            .map(|s| s.value)
            .sum()
    }
}

/// `name{labels} value [timestamp]`, or `None` for a comment, a blank or a malformed line.
fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(inner)?;
        labels = parsed;
        rest = after;
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// The labels after `{` up to the closing `}`, and what follows it. Values are quoted, with
/// `\\`, `\"` and `\n` escaped.
fn parse_labels(mut text: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        text = text.trim_start_matches([' ', ',']);
        if let Some(after) = text.strip_prefix('}') {
            return Some((labels, after));
        }
        let (key, after) = text.split_once('=')?;
        let mut chars = after.strip_prefix('"')?.char_indices();
        let mut value = String::new();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((key.trim().to_owned(), value));
        text = &after[1 + end + 1..];
    }
}

/// The `/metrics` page of the process serving on `addr`; `None` if it does not answer.
pub async fn scrape(addr: SocketAddr) -> Option<Scrape> {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    Some(Scrape::parse(&text))
}

/// Whether the process serving on `addr` answers `/ready` with a success.
pub async fn is_ready(addr: SocketAddr) -> bool {
    reqwest::get(format!("http://{addr}/ready"))
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// Waits until [`is_ready`]; panics after `deadline`.
pub async fn wait_ready(addr: SocketAddr, deadline: Duration) {
    let started = Instant::now();
    while !is_ready(addr).await {
        assert!(
            started.elapsed() < deadline,
            "the process at {addr} was not ready in {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until metric `name` (summed over its label sets) is `value` on the process serving
/// on `addr`; panics after `deadline`, saying what it was.
pub async fn wait_value(addr: SocketAddr, name: &str, value: f64, deadline: Duration) {
    let started = Instant::now();
    loop {
        let now = scrape(addr).await.and_then(|page| page.get(name));
        if now == Some(value) {
            return;
        }
        assert!(
            started.elapsed() < deadline,
            "the process at {addr}: {name} is {now:?}, not {value}, after {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"# HELP stockflow_order_outcomes_total Orders decided.
# TYPE stockflow_order_outcomes_total counter
stockflow_order_outcomes_total{outcome="confirmed",reason="none"} 7
stockflow_order_outcomes_total{outcome="rejected",reason="unknown_sku"} 2
stockflow_sync_rows_total{table="orders"} 5
stockflow_sync_rows_total{table="order_lines"} 11
stockflow_commit_latency_seconds_sum 1.5
stockflow_commit_latency_seconds_count 3
stockflow_commit_latency_seconds_bucket{le="+Inf"} 3
odd{quoted="a \"b\", c\\d",x="}"} 4 1700000000000
stockflow_assigned_tasks 8
"#;

    #[test]
    fn sums_by_exact_name_and_by_label() {
        let page = Scrape::parse(PAGE);
        assert_eq!(page.get("stockflow_order_outcomes_total"), Some(9.0));
        assert_eq!(page.sum("stockflow_sync_rows_total"), 16.0);
        assert_eq!(
            page.sum_where("stockflow_sync_rows_total", "table", "orders"),
            5.0
        );
        assert_eq!(page.get("stockflow_commit_latency_seconds_sum"), Some(1.5));
        assert_eq!(page.get("stockflow_commit_latency_seconds"), None);
        assert_eq!(page.get("stockflow_assigned_tasks"), Some(8.0));
        assert_eq!(page.sum("absent"), 0.0);
    }

    #[test]
    fn labels_with_escapes_and_timestamps() {
        let page = Scrape::parse(PAGE);
        let odd = page.of("odd").next().expect("the odd sample");
        assert_eq!(odd.label("quoted"), Some("a \"b\", c\\d"));
        assert_eq!(odd.label("x"), Some("}"));
        assert_eq!(odd.value, 4.0);
        let inf = page
            .of("stockflow_commit_latency_seconds_bucket")
            .next()
            .expect("a bucket");
        assert_eq!(inf.label("le"), Some("+Inf"));
    }
}
