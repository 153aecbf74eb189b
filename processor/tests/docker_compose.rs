//! Static checks of the Docker deployment, no Docker engine needed: `docker-compose.yml`, the
//! Prometheus config and the Grafana provisioning agree with each other, with the repository and with
//! the processor's metrics contract.
//!
//! Each test catches something that would otherwise surface only at `docker compose up`, or as an
//! empty Grafana panel: a dependency on a service that does not exist, a bind mount of a file that
//! moved, a volume nobody declared, two services on one host port, a processor that cannot run as
//! several replicas (`--scale processor=3`) or whose replicas are not all scraped, a scrape target
//! that no longer matches the processor, a panel pointing at a datasource that is not provisioned,
//! or a query using a metric the processor does not export.
//!
//! One file of about a thousand lines on purpose: the tests are one checklist over the same
//! parsed deployment files, which they share.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use serde_yaml::Value as Yaml;

#[path = "support/files.rs"]
mod files;
use files::{load_yaml, read, repo_root};

/// Every service the deployment promises (README, DESIGN.md).
const REQUIRED_SERVICES: &[&str] = &[
    "kafka",
    "schema-registry",
    "postgres",
    "pgadmin",
    "kafka-ui",
    "prometheus",
    "grafana",
    "init",
    "processor",
    "generator",
];

/// The processor's metrics contract: the names dashboards may query. Histograms also expose
/// `_bucket`, `_sum` and `_count` series. Keep in step with the processor's metrics module.
const CONTRACT_METRICS: &[&str] = &[
    "stockflow_records_consumed_total",
    "stockflow_records_produced_total",
    "stockflow_order_outcomes_total",
    "stockflow_duplicate_orders_total",
    "stockflow_rerouted_orders_total",
    "stockflow_expired_orders_total",
    "stockflow_late_records_total",
    "stockflow_dlq_records_total",
    "stockflow_processing_retries_total",
    "stockflow_paused_partitions",
    "stockflow_processing_latency_seconds",
    "stockflow_order_e2e_latency_seconds",
    "stockflow_commit_latency_seconds",
    "stockflow_transactions_total",
    "stockflow_rebalances_total",
    "stockflow_assigned_tasks",
    "stockflow_restored_records_total",
    "stockflow_restore_remaining_records",
    "stockflow_consumer_lag_records",
    "stockflow_rocksdb_block_cache_usage_bytes",
    "stockflow_rocksdb_memtable_usage_bytes",
    "stockflow_sync_rows_total",
    "stockflow_sync_duration_seconds",
    "stockflow_sync_lag_seconds",
    "stockflow_sync_lag_rows",
    "stockflow_sync_errors_total",
];

const PROMETHEUS_CONFIG: &str = "grafana/prometheus/prometheus.yml";
const GRAFANA_DATASOURCES: &str = "grafana/provisioning/datasources";
const GRAFANA_DASHBOARD_PROVIDERS: &str = "grafana/provisioning/dashboards";
const GRAFANA_DASHBOARDS: &str = "grafana/dashboards";

// ---------------------------------------------------------------------------------------------
// docker-compose.yml
// ---------------------------------------------------------------------------------------------

#[test]
fn every_required_service_is_defined() {
    let compose = Compose::load();
    let missing: Vec<_> = REQUIRED_SERVICES
        .iter()
        .filter(|name| !compose.services.contains_key(**name))
        .collect();
    assert!(
        missing.is_empty(),
        "docker-compose.yml lacks the services {missing:?}; it defines {:?}",
        compose.services.keys().collect::<Vec<_>>()
    );
}

#[test]
fn depends_on_names_existing_services_with_valid_conditions() {
    let compose = Compose::load();
    for (name, service) in &compose.services {
        for (dependency, condition) in depends_on(service) {
            assert_ne!(&dependency, name, "service {name} depends on itself");
            let target = compose.services.get(&dependency).unwrap_or_else(|| {
                panic!("service {name} depends on {dependency}, which docker-compose.yml does not define")
            });
            match condition.as_str() {
                "service_started" | "service_completed_successfully" => {}
                "service_healthy" => assert!(
                    target.get("healthcheck").is_some(),
                    "service {name} waits for {dependency} to be healthy, but {dependency} has no \
                     healthcheck, so it never will be"
                ),
                other => panic!(
                    "service {name} depends on {dependency} with condition {other:?}; expected \
                     service_started, service_healthy or service_completed_successfully"
                ),
            }
        }
    }
}

#[test]
fn named_volumes_are_declared_and_used() {
    let compose = Compose::load();
    let declared: BTreeSet<String> = mapping_keys(compose.doc.get("volumes"));
    let mut used = BTreeSet::new();
    for (name, service) in &compose.services {
        for mount in mounts(service) {
            if let Mount::Volume { volume, .. } = mount {
                assert!(
                    declared.contains(&volume),
                    "service {name} mounts the named volume {volume:?}, which is not declared under \
                     the top-level `volumes:` (declared: {declared:?})"
                );
                used.insert(volume);
            }
        }
    }
    let unused: Vec<_> = declared.difference(&used).collect();
    assert!(
        unused.is_empty(),
        "the top-level volumes {unused:?} are declared but no service mounts them"
    );
}

#[test]
fn bind_mounts_exist_in_the_repository() {
    let compose = Compose::load();
    let root = canonical(&repo_root());
    for (name, service) in &compose.services {
        for mount in mounts(service) {
            if let Mount::Bind { source, target } = mount {
                assert!(
                    source.starts_with("./") || source.starts_with("../"),
                    "service {name} bind-mounts {source:?} at {target}: use a path relative to \
                     docker-compose.yml so the stack works from any clone"
                );
                let host = repo_root().join(&source);
                assert!(
                    host.exists(),
                    "service {name} bind-mounts {source:?} at {target}, but {} does not exist",
                    host.display()
                );
                assert!(
                    canonical(&host).starts_with(&root),
                    "service {name} bind-mounts {source:?}, which is outside the repository"
                );
            }
        }
    }
}

#[test]
fn configs_and_secrets_are_declared_exist_and_are_used() {
    let compose = Compose::load();
    for kind in ["configs", "secrets"] {
        let declared = compose.doc.get(kind).and_then(Yaml::as_mapping);
        let mut used = BTreeSet::new();
        for (name, service) in &compose.services {
            for reference in sequence(service.get(kind)) {
                let source = reference
                    .as_str()
                    .or_else(|| reference.get("source").and_then(Yaml::as_str))
                    .unwrap_or_else(|| {
                        panic!("service {name} has a {kind} entry without a source")
                    });
                assert!(
                    declared.is_some_and(|d| d.contains_key(source)),
                    "service {name} uses {kind} entry {source:?}, which is not declared under the \
                     top-level `{kind}:`"
                );
                used.insert(source.to_owned());
            }
        }
        for (key, definition) in declared.into_iter().flatten() {
            let key = scalar(key);
            assert!(
                used.contains(&key),
                "{kind} entry {key:?} is declared but no service uses it"
            );
            if let Some(file) = definition.get("file").and_then(Yaml::as_str) {
                let path = repo_root().join(file);
                assert!(
                    path.is_file(),
                    "{kind} entry {key:?} reads {file:?}, but {} does not exist",
                    path.display()
                );
            }
        }
    }
}

#[test]
fn build_contexts_and_dockerfiles_exist() {
    let compose = Compose::load();
    let mut builds = 0;
    for (name, service) in &compose.services {
        let Some(build) = service.get("build") else {
            continue;
        };
        builds += 1;
        let (context, dockerfile) = match build {
            Yaml::String(context) => (context.as_str(), Some("Dockerfile")),
            _ => (
                build.get("context").and_then(Yaml::as_str).unwrap_or("."),
                match build.get("dockerfile_inline") {
                    Some(_) => None,
                    None => Some(
                        build
                            .get("dockerfile")
                            .and_then(Yaml::as_str)
                            .unwrap_or("Dockerfile"),
                    ),
                },
            ),
        };
        let context = repo_root().join(context);
        assert!(
            context.is_dir(),
            "service {name} builds from context {}, which is not a directory",
            context.display()
        );
        if let Some(dockerfile) = dockerfile {
            let dockerfile = context.join(dockerfile);
            assert!(
                dockerfile.is_file(),
                "service {name} builds with {}, which does not exist",
                dockerfile.display()
            );
        }
    }
    assert!(
        builds > 0,
        "no service builds the Stockflow image from this repository"
    );
}

#[test]
fn host_ports_are_unique() {
    let compose = Compose::load();
    let mut owners: BTreeMap<String, String> = BTreeMap::new();
    for (name, service) in &compose.services {
        for port in host_ports(service) {
            if let Some(other) = owners.insert(port.clone(), name.clone()) {
                panic!("services {other} and {name} both publish host port {port}");
            }
        }
    }
}

#[test]
fn third_party_images_are_pinned() {
    let compose = Compose::load();
    for (name, service) in &compose.services {
        if service.get("build").is_some() {
            continue;
        }
        let image = service
            .get("image")
            .and_then(Yaml::as_str)
            .unwrap_or_else(|| panic!("service {name} has neither `image` nor `build`"));
        let tag = image
            .rsplit_once(':')
            .map(|(_, tag)| tag)
            .filter(|tag| !tag.contains('/'))
            .unwrap_or_else(|| {
                panic!("service {name} uses image {image:?} without a tag; pin a version")
            });
        assert!(
            !tag.is_empty() && tag != "latest",
            "service {name} uses image {image:?}; pin a version instead of {tag:?}"
        );
    }
}

/// `docker compose up --scale processor=3` must give three working replicas: nothing in the
/// service may be one per host (a container name, a hostname, a published host port), and each
/// replica needs a state dir of its own (an instance locks its state dir).
#[test]
fn the_processor_can_scale_out() {
    let compose = Compose::load();
    let processor = compose.service("processor");
    for key in ["container_name", "hostname"] {
        assert!(
            processor.get(key).is_none(),
            "the processor service sets `{key}`, which every replica would share: \
             `docker compose up --scale processor=3` fails"
        );
    }
    let published = host_ports(processor);
    assert!(
        published.is_empty(),
        "the processor service publishes host ports {published:?}; a second replica could not \
         bind them. Use `expose` (Prometheus finds the replicas by DNS)"
    );

    let state_dir = environment(processor)
        .remove("STOCKFLOW_STATE_DIR")
        .expect("the processor service does not set STOCKFLOW_STATE_DIR");
    let state_mount = mounts(processor)
        .into_iter()
        .find(|mount| mount.target() == state_dir)
        .unwrap_or_else(|| {
            panic!(
                "no volume is mounted at the processor's state dir {state_dir}: its stores would \
                 live in the container's writable layer"
            )
        });
    assert!(
        matches!(state_mount, Mount::Anonymous { .. }),
        "the processor's state dir {state_dir} is a bind mount or a named volume, which every \
         replica would share (the second one finds it locked); mount an anonymous volume there \
         (`- {state_dir}`), which compose makes per replica"
    );
}

/// Compose sends SIGTERM, waits `stop_grace_period`, then kills. The processor must give up
/// draining before that, so that it exits on its own (with its code) rather than by SIGKILL.
#[test]
fn the_processor_drains_within_the_stop_grace_period() {
    let compose = Compose::load();
    let processor = compose.service("processor");
    let grace = processor
        .get("stop_grace_period")
        .map(scalar)
        .unwrap_or_else(|| "10s".to_owned());
    let grace = parse_duration(&grace, "stop_grace_period");
    let shutdown = environment(processor)
        .remove("STOCKFLOW_SHUTDOWN_TIMEOUT")
        .unwrap_or_else(|| "60s".to_owned());
    let shutdown = parse_duration(&shutdown, "STOCKFLOW_SHUTDOWN_TIMEOUT");
    assert!(
        shutdown < grace,
        "the processor's STOCKFLOW_SHUTDOWN_TIMEOUT ({shutdown:?}, 60s unless set) is not below \
         its stop_grace_period ({grace:?}): Docker would kill it while it still drains"
    );
}

// ---------------------------------------------------------------------------------------------
// Prometheus
// ---------------------------------------------------------------------------------------------

#[test]
fn prometheus_scrapes_the_processor_on_its_metrics_port() {
    let compose = Compose::load();
    let processor = compose.service("processor");
    let metrics_addr = environment(processor)
        .remove("STOCKFLOW_METRICS_ADDR")
        .expect("the processor service does not set STOCKFLOW_METRICS_ADDR; in Docker it must listen on 0.0.0.0");
    let (metrics_host, metrics_port) = metrics_addr
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("STOCKFLOW_METRICS_ADDR={metrics_addr:?} is not host:port"));
    assert_eq!(
        metrics_host, "0.0.0.0",
        "the processor's STOCKFLOW_METRICS_ADDR={metrics_addr:?} is not reachable from the Prometheus container"
    );

    let prometheus = compose.service("prometheus");
    let config_in_container = sequence(prometheus.get("command"))
        .iter()
        .filter_map(Yaml::as_str)
        .find_map(|arg| arg.strip_prefix("--config.file="))
        .unwrap_or("/etc/prometheus/prometheus.yml")
        .to_owned();
    let config_on_host = host_path(prometheus, &config_in_container).unwrap_or_else(|| {
        panic!("the prometheus service reads {config_in_container}, but no bind mount provides it")
    });
    assert_eq!(
        canonical(&config_on_host),
        canonical(&repo_root().join(PROMETHEUS_CONFIG)),
        "the prometheus service should mount {PROMETHEUS_CONFIG} as its config"
    );

    let config = load_yaml(&config_on_host);
    let global_interval = config.get("global").and_then(|g| g.get("scrape_interval"));
    let mut scraped = Vec::new();
    for job in sequence(config.get("scrape_configs")) {
        let job_name = job
            .get("job_name")
            .and_then(Yaml::as_str)
            .unwrap_or("<unnamed>");
        for (host, port) in scrape_targets(&job) {
            if host == "processor" && port == metrics_port {
                let interval = job.get("scrape_interval").or(global_interval).map(scalar);
                assert_eq!(
                    interval.as_deref(),
                    Some("5s"),
                    "job {job_name} scrapes the processor every {interval:?}; the dashboards expect 5s"
                );
                return;
            }
            scraped.push(format!("{job_name}: {host}:{port}"));
        }
    }
    panic!(
        "{PROMETHEUS_CONFIG} does not scrape processor:{metrics_port} (the processor service's name and \
         STOCKFLOW_METRICS_ADDR port); it scrapes {scraped:?}"
    );
}

/// A static target `processor:9400` would reach one replica (whichever address Docker's DNS
/// answers first); DNS service discovery of type A lists one target per replica, so a scaled
/// service is scraped whole.
#[test]
fn prometheus_finds_every_processor_replica_by_dns() {
    let config = load_yaml(&repo_root().join(PROMETHEUS_CONFIG));
    let mut found = false;
    for job in sequence(config.get("scrape_configs")) {
        let job_name = job
            .get("job_name")
            .and_then(Yaml::as_str)
            .unwrap_or("<unnamed>");
        for static_config in sequence(job.get("static_configs")) {
            for target in sequence(static_config.get("targets")) {
                let target = scalar(&target);
                assert!(
                    !target.starts_with("processor:"),
                    "job {job_name} scrapes the static target {target}, which reaches one processor \
                     replica only; use dns_sd_configs with type A"
                );
            }
        }
        for dns in sequence(job.get("dns_sd_configs")) {
            let names = sequence(dns.get("names"));
            if !names.iter().any(|name| scalar(name) == "processor") {
                continue;
            }
            // Prometheus' default type is SRV, which Docker's DNS does not answer.
            let kind = dns
                .get("type")
                .map(scalar)
                .unwrap_or_else(|| "SRV".to_owned());
            assert_eq!(
                kind, "A",
                "job {job_name} looks the processor up with DNS type {kind}; Docker's DNS answers \
                 A records, one per replica"
            );
            assert!(
                dns.get("port").is_some(),
                "job {job_name}: an A lookup needs `port` (the processor's metrics port)"
            );
            found = true;
        }
    }
    assert!(
        found,
        "{PROMETHEUS_CONFIG} has no dns_sd_configs entry naming the processor service"
    );
}

// ---------------------------------------------------------------------------------------------
// Grafana
// ---------------------------------------------------------------------------------------------

#[test]
fn grafana_provisioning_is_mounted_and_points_at_the_stack() {
    let compose = Compose::load();
    let grafana = compose.service("grafana");

    let datasources_dir = host_path(grafana, "/etc/grafana/provisioning/datasources")
        .expect("the grafana service does not mount a datasources provisioning directory");
    assert_same_dir(&datasources_dir, GRAFANA_DATASOURCES);
    for datasource in provisioned_datasources() {
        let name = datasource.get("name").map(scalar).unwrap_or_default();
        let url = datasource
            .get("url")
            .and_then(Yaml::as_str)
            .unwrap_or_default();
        let host = url
            .split("://")
            .nth(1)
            .and_then(|rest| rest.split([':', '/']).next())
            .unwrap_or_default();
        assert!(
            compose.services.contains_key(host),
            "Grafana datasource {name:?} points at {url:?}, but {host:?} is not a compose service"
        );
    }

    let providers_dir = host_path(grafana, "/etc/grafana/provisioning/dashboards")
        .expect("the grafana service does not mount a dashboards provisioning directory");
    assert_same_dir(&providers_dir, GRAFANA_DASHBOARD_PROVIDERS);
    let providers: Vec<Yaml> = yaml_files(&providers_dir)
        .iter()
        .flat_map(|file| sequence(load_yaml(file).get("providers")))
        .collect();
    assert!(
        !providers.is_empty(),
        "{GRAFANA_DASHBOARD_PROVIDERS} defines no dashboard provider"
    );
    for provider in &providers {
        let path = provider
            .get("options")
            .and_then(|options| options.get("path"))
            .and_then(Yaml::as_str)
            .expect("a Grafana dashboard provider has no options.path");
        let dir = host_path(grafana, path).unwrap_or_else(|| {
            panic!(
                "the dashboard provider reads {path}, but the grafana service mounts nothing there"
            )
        });
        assert_same_dir(&dir, GRAFANA_DASHBOARDS);
    }

    if let Some(home) = environment(grafana).remove("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH") {
        let file = host_path(grafana, &home).unwrap_or_else(|| {
            panic!("Grafana's home dashboard {home} is not in a mounted directory")
        });
        assert!(
            file.is_file(),
            "Grafana's home dashboard {home} maps to {}, which does not exist",
            file.display()
        );
    }
}

#[test]
fn dashboards_parse_and_every_panel_uses_the_provisioned_datasource() {
    let uids: BTreeSet<String> = provisioned_datasources()
        .iter()
        .filter_map(|datasource| datasource.get("uid").map(scalar))
        .collect();
    assert!(
        uids.contains("prometheus"),
        "{GRAFANA_DATASOURCES} should provision a datasource with uid \"prometheus\"; found {uids:?}"
    );

    let mut dashboard_uids = BTreeSet::new();
    for (file, dashboard) in dashboards() {
        let file = file.display();
        let uid = dashboard["uid"]
            .as_str()
            .unwrap_or_else(|| panic!("{file} has no uid"));
        assert!(
            dashboard_uids.insert(uid.to_owned()),
            "{file} reuses the dashboard uid {uid:?}"
        );
        assert!(
            dashboard.get("id").is_none_or(serde_json::Value::is_null),
            "{file} carries a database id; provisioned dashboards should have \"id\": null"
        );

        let mut panel_ids = BTreeSet::new();
        let panels = panels(&dashboard);
        assert!(!panels.is_empty(), "{file} has no panels");
        for panel in panels {
            let title = panel["title"].as_str().unwrap_or("<untitled>");
            let id = panel["id"]
                .as_u64()
                .unwrap_or_else(|| panic!("{file}: panel {title:?} has no id"));
            assert!(panel_ids.insert(id), "{file}: panel id {id} is used twice");
            assert!(
                panel["gridPos"].is_object(),
                "{file}: panel {title:?} has no gridPos"
            );
            if panel["type"] == "row" {
                continue;
            }
            let uid = panel["datasource"]["uid"].as_str();
            assert!(
                uid.is_some_and(|uid| uids.contains(uid)),
                "{file}: panel {title:?} uses datasource uid {uid:?}; provisioned: {uids:?}"
            );
            let targets = panel["targets"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            assert!(
                !targets.is_empty(),
                "{file}: panel {title:?} has no queries"
            );
            for target in targets {
                if let Some(uid) = target.get("datasource").map(|ds| ds["uid"].as_str()) {
                    assert!(
                        uid.is_some_and(|uid| uids.contains(uid)),
                        "{file}: a query of panel {title:?} uses datasource uid {uid:?}; provisioned: {uids:?}"
                    );
                }
                let expr = target["expr"].as_str().unwrap_or_default();
                assert!(
                    !expr.trim().is_empty(),
                    "{file}: panel {title:?} has a query without expr"
                );
            }
        }
    }
    assert!(
        !dashboard_uids.is_empty(),
        "{GRAFANA_DASHBOARDS} holds no dashboard"
    );
}

#[test]
fn dashboard_queries_use_only_documented_metrics_in_plain_promql() {
    let mut unknown = Vec::new();
    for (file, dashboard) in dashboards() {
        for panel in panels(&dashboard) {
            let title = panel["title"].as_str().unwrap_or("<untitled>");
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().unwrap_or_default();
                assert!(
                    !expr.contains('$'),
                    "{}: panel {title:?} uses a Grafana variable in {expr:?}; keep queries plain PromQL \
                     so they run as they are against Prometheus",
                    file.display()
                );
                for name in metric_names(expr) {
                    if !is_documented_metric(&name) {
                        unknown.push(format!("{}: panel {title:?}: {name}", file.display()));
                    }
                }
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "dashboards query metrics outside the processor's contract (stockflow_* as documented, or \
         process_*):\n  {}",
        unknown.join("\n  ")
    );
}

#[test]
fn metric_names_reads_only_metric_selectors() {
    let names = |expr| metric_names(expr).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"histogram_quantile(0.99, sum by (le) (rate(a_bucket{topic="x}y", le!="+Inf"}[1m])))"#
        ),
        ["a_bucket"]
    );
    assert_eq!(
        names("sum(rate(a_total[5m] offset 1h)) / on (job) group_left (instance) b or vector(0)"),
        ["a_total", "b"]
    );
    assert_eq!(
        names("sum by (instance) (rate(c[1m]) and on (job, instance) d) > bool 1e-3"),
        ["c", "d"]
    );
    assert_eq!(
        names("max without (partition) (e) unless f_total"),
        ["e", "f_total"]
    );
}

#[test]
fn documented_metrics_are_the_contract_names_and_their_histogram_series() {
    assert!(is_documented_metric("stockflow_assigned_tasks"));
    assert!(is_documented_metric(
        "stockflow_commit_latency_seconds_bucket"
    ));
    assert!(is_documented_metric("process_resident_memory_bytes"));
    assert!(
        !is_documented_metric("stockflow_order_outcome_total"),
        "a typo is not documented"
    );
    assert!(
        !is_documented_metric("up"),
        "Prometheus' own series are not the processor's"
    );
}

// ---------------------------------------------------------------------------------------------
// helpers: files
// ---------------------------------------------------------------------------------------------

fn canonical(path: &Path) -> PathBuf {
    fs::canonicalize(path)
        .unwrap_or_else(|error| panic!("cannot resolve {}: {error}", path.display()))
}

/// The files of `dir` whose names end with one of `extensions`, sorted.
fn files_with_extension(dir: &Path, extensions: &[&str]) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|error| panic!("cannot list {}: {error}", dir.display()))
        .map(|entry| {
            entry
                .unwrap_or_else(|error| panic!("cannot list {}: {error}", dir.display()))
                .path()
        })
        .filter(|path| {
            path.is_file()
                && path
                    .extension()
                    .and_then(|ext| ext.to_str())
                    .is_some_and(|ext| extensions.contains(&ext))
        })
        .collect();
    files.sort();
    files
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    files_with_extension(dir, &["yml", "yaml"])
}

fn assert_same_dir(mounted: &Path, expected: &str) {
    assert_eq!(
        canonical(mounted),
        canonical(&repo_root().join(expected)),
        "Grafana should be provisioned from {expected}, but the mount provides {}",
        mounted.display()
    );
}

// ---------------------------------------------------------------------------------------------
// helpers: compose
// ---------------------------------------------------------------------------------------------

struct Compose {
    doc: Yaml,
    services: BTreeMap<String, Yaml>,
}

impl Compose {
    fn load() -> Self {
        let doc = load_yaml(&repo_root().join("docker-compose.yml"));
        let services = doc
            .get("services")
            .and_then(Yaml::as_mapping)
            .expect("docker-compose.yml has no `services:` mapping")
            .iter()
            .map(|(name, service)| (scalar(name), service.clone()))
            .collect();
        Self { doc, services }
    }

    fn service(&self, name: &str) -> &Yaml {
        self.services
            .get(name)
            .unwrap_or_else(|| panic!("docker-compose.yml has no service {name}"))
    }
}

/// A YAML scalar as text (`9400`, `true` and `"x"` alike); other values as their YAML.
fn scalar(value: &Yaml) -> String {
    match value {
        Yaml::String(text) => text.clone(),
        Yaml::Number(number) => number.to_string(),
        Yaml::Bool(flag) => flag.to_string(),
        Yaml::Null => String::new(),
        other => serde_yaml::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_owned(),
    }
}

/// A compose duration (Go's syntax, `30s`, `1m30s`) or a processor one (humantime's); the two
/// agree on the plain forms used here.
fn parse_duration(text: &str, what: &str) -> std::time::Duration {
    humantime::parse_duration(text)
        .unwrap_or_else(|error| panic!("{what} = {text:?} is not a duration: {error}"))
}

fn sequence(value: Option<&Yaml>) -> Vec<Yaml> {
    value
        .and_then(Yaml::as_sequence)
        .cloned()
        .unwrap_or_default()
}

fn mapping_keys(value: Option<&Yaml>) -> BTreeSet<String> {
    value
        .and_then(Yaml::as_mapping)
        .map(|mapping| mapping.keys().map(scalar).collect())
        .unwrap_or_default()
}

/// `depends_on` in either form, as (service, condition).
fn depends_on(service: &Yaml) -> Vec<(String, String)> {
    match service.get("depends_on") {
        None => Vec::new(),
        Some(Yaml::Sequence(names)) => names
            .iter()
            .map(|name| (scalar(name), "service_started".to_owned()))
            .collect(),
        Some(Yaml::Mapping(entries)) => entries
            .iter()
            .map(|(name, spec)| {
                let condition = spec
                    .get("condition")
                    .map_or_else(|| "service_started".to_owned(), scalar);
                (scalar(name), condition)
            })
            .collect(),
        Some(other) => panic!("depends_on should be a list or a mapping, found {other:?}"),
    }
}

/// `environment` in either form (`KEY: value` or `- KEY=value`).
fn environment(service: &Yaml) -> BTreeMap<String, String> {
    match service.get("environment") {
        None => BTreeMap::new(),
        Some(Yaml::Mapping(entries)) => entries
            .iter()
            .map(|(key, value)| (scalar(key), scalar(value)))
            .collect(),
        Some(Yaml::Sequence(entries)) => entries
            .iter()
            .map(|entry| {
                let entry = scalar(entry);
                match entry.split_once('=') {
                    Some((key, value)) => (key.to_owned(), value.to_owned()),
                    None => (entry, String::new()),
                }
            })
            .collect(),
        Some(other) => panic!("environment should be a list or a mapping, found {other:?}"),
    }
}

/// One entry of a service's `volumes`.
enum Mount {
    Bind {
        source: String,
        target: String,
    },
    Volume {
        volume: String,
        target: String,
    },
    /// A volume without a name (`- /path`): compose makes one per container.
    Anonymous {
        target: String,
    },
    Other,
}

impl Mount {
    /// Where the mount appears in the container ("" for entries this file does not read).
    fn target(&self) -> &str {
        match self {
            Mount::Bind { target, .. }
            | Mount::Volume { target, .. }
            | Mount::Anonymous { target } => target.trim_end_matches('/'),
            Mount::Other => "",
        }
    }
}

/// A service's `volumes`, short (`source:target[:mode]`) or long syntax.
fn mounts(service: &Yaml) -> Vec<Mount> {
    sequence(service.get("volumes"))
        .iter()
        .map(|entry| match entry {
            Yaml::String(short) => {
                let mut parts = short.splitn(3, ':');
                let first = parts.next().unwrap_or_default().to_owned();
                match parts.next() {
                    None => Mount::Anonymous { target: first },
                    Some(target) if is_host_path(&first) => Mount::Bind {
                        source: first,
                        target: target.to_owned(),
                    },
                    Some(target) => Mount::Volume {
                        volume: first,
                        target: target.to_owned(),
                    },
                }
            }
            long => {
                let field = |key| long.get(key).map(scalar).unwrap_or_default();
                match field("type").as_str() {
                    "bind" => Mount::Bind {
                        source: field("source"),
                        target: field("target"),
                    },
                    "volume" if field("source").is_empty() => Mount::Anonymous {
                        target: field("target"),
                    },
                    "volume" => Mount::Volume {
                        volume: field("source"),
                        target: field("target"),
                    },
                    _ => Mount::Other,
                }
            }
        })
        .collect()
}

fn is_host_path(source: &str) -> bool {
    source.starts_with(['.', '/', '~', '$'])
}

/// The host path that provides `container_path` in `service`, through its bind mounts.
fn host_path(service: &Yaml, container_path: &str) -> Option<PathBuf> {
    mounts(service).into_iter().find_map(|mount| {
        let Mount::Bind { source, target } = mount else {
            return None;
        };
        let rest = container_path.strip_prefix(target.trim_end_matches('/'))?;
        let mounted = repo_root().join(source);
        match rest {
            "" => Some(mounted),
            _ if rest.starts_with('/') => Some(mounted.join(rest.trim_start_matches('/'))),
            _ => None,
        }
    })
}

/// The host ports a service publishes (`[ip:]host:container[/proto]` or long syntax).
fn host_ports(service: &Yaml) -> Vec<String> {
    sequence(service.get("ports"))
        .iter()
        .filter_map(|entry| match entry {
            Yaml::Mapping(_) => entry.get("published").map(scalar),
            short => {
                let short = scalar(short);
                let without_protocol = short.split('/').next().unwrap_or_default();
                let mut parts = without_protocol.rsplitn(3, ':');
                let _container = parts.next();
                parts.next().map(str::to_owned)
            }
        })
        .filter(|port| !port.is_empty())
        .collect()
}

/// The (host, port) pairs a Prometheus scrape job targets, from static and DNS service discovery.
fn scrape_targets(job: &Yaml) -> Vec<(String, String)> {
    let mut targets = Vec::new();
    for config in sequence(job.get("static_configs")) {
        for target in sequence(config.get("targets")) {
            let target = scalar(&target);
            if let Some((host, port)) = target.rsplit_once(':') {
                targets.push((host.to_owned(), port.to_owned()));
            }
        }
    }
    for config in sequence(job.get("dns_sd_configs")) {
        let port = config.get("port").map(scalar).unwrap_or_default();
        for name in sequence(config.get("names")) {
            targets.push((scalar(&name), port.clone()));
        }
    }
    targets
}

// ---------------------------------------------------------------------------------------------
// helpers: Grafana
// ---------------------------------------------------------------------------------------------

fn provisioned_datasources() -> Vec<Yaml> {
    let datasources: Vec<Yaml> = yaml_files(&repo_root().join(GRAFANA_DATASOURCES))
        .iter()
        .flat_map(|file| sequence(load_yaml(file).get("datasources")))
        .collect();
    assert!(
        !datasources.is_empty(),
        "{GRAFANA_DATASOURCES} provisions no datasource"
    );
    datasources
}

fn dashboards() -> Vec<(PathBuf, serde_json::Value)> {
    files_with_extension(&repo_root().join(GRAFANA_DASHBOARDS), &["json"])
        .into_iter()
        .map(|file| {
            let dashboard = serde_json::from_str(&read(&file))
                .unwrap_or_else(|error| panic!("{} is not valid JSON: {error}", file.display()));
            (file, dashboard)
        })
        .collect()
}

/// Every panel of a dashboard, including those nested in collapsed rows.
fn panels(dashboard: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut all = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        all.push(panel);
        all.extend(panel["panels"].as_array().into_iter().flatten());
    }
    all
}

fn is_documented_metric(name: &str) -> bool {
    let mut histogram_bases = ["_bucket", "_sum", "_count"]
        .iter()
        .filter_map(|suffix| name.strip_suffix(suffix));
    name.starts_with("process_")
        || CONTRACT_METRICS.contains(&name)
        || histogram_bases.any(|base| CONTRACT_METRICS.contains(&base))
}

// ---------------------------------------------------------------------------------------------
// helpers: PromQL
// ---------------------------------------------------------------------------------------------

/// Keywords that may stand where a metric name could, in lower case: binary and modifier
/// keywords, and the aggregation operators (which may be followed by `by (..)` before their `(`).
const PROMQL_KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
    "atan2",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// Keywords followed by a parenthesised list of label names.
const PROMQL_LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names a PromQL expression selects: the identifiers outside string literals, label
/// matchers `{..}`, ranges `[..]` and label lists (`by (..)`, `on (..)`, ...), that are neither
/// keywords nor called as functions. A selector by `{__name__=..}` alone is not seen.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut label_list_follows = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&chars, i);
        } else if c == '{' {
            i = skip_group(&chars, i, '{', '}');
        } else if c == '[' {
            i = skip_group(&chars, i, '[', ']');
        } else if c == '(' && label_list_follows {
            label_list_follows = false;
            i = skip_group(&chars, i, '(', ')');
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // A number or a duration (1e-3, 0x1f, 5m): never a metric name.
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let lower = word.to_ascii_lowercase();
            let next = chars[i..].iter().find(|c| !c.is_whitespace());
            if PROMQL_LABEL_LISTS.contains(&lower.as_str()) {
                label_list_follows = next == Some(&'(');
            } else if !PROMQL_KEYWORDS.contains(&lower.as_str()) && next != Some(&'(') {
                names.insert(word);
            }
        } else {
            if !c.is_whitespace() {
                label_list_follows = false;
            }
            i += 1;
        }
    }
    names
}

/// The index after the string literal that starts at `start` (escapes honoured, raw `...` too).
fn skip_string(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            '\\' if quote != '`' => i += 2,
            c if c == quote => return i + 1,
            _ => i += 1,
        }
    }
    i
}

/// The index after the group that opens at `start`, skipping nested groups and string literals.
fn skip_group(chars: &[char], start: usize, open: char, close: char) -> usize {
    let mut depth = 0;
    let mut i = start;
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => {
                i = skip_string(chars, i);
                continue;
            }
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    i
}
