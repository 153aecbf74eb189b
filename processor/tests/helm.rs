//! Static checks of the Helm chart in `deploy/helm/stockflow`, no cluster needed: `helm lint`
//! passes, and `helm template` renders what running the processor on Kubernetes depends on.
//!
//! - A StatefulSet whose pods get their instance id (static membership) from their own name,
//!   and a volume claim per pod mounted at the state dir.
//! - Liveness on `/health`, readiness on `/ready`, both on the port the processor listens on.
//! - A grace period longer than the processor's shutdown timeout.
//! - Prometheus scrape annotations on that port, and a ServiceMonitor when asked for.
//! - A headless Service governing the StatefulSet.
//! - Every environment variable one the processor reads.
//!
//! Helm is the pinned release that `scripts/install-helm.sh` builds into
//! `~/.cache/stockflow/bin` (`scripts/test.sh` runs it first). Without it these tests fail and
//! say so: a chart that is never rendered is not checked.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;
use serde_yaml::Value as Yaml;

#[path = "support/files.rs"]
mod files;
use files::{load_yaml, read, repo_root};

const CHART: &str = "deploy/helm/stockflow";
const RELEASE: &str = "stockflow";
const NAMESPACE: &str = "shop";

/// The sources that declare the processor's environment variables (`env = "..."`).
const ENV_SOURCES: &[&str] = &[
    "processor/src/cli.rs",
    "plumbing/src/connection.rs",
    "plumbing/src/process.rs",
];

#[test]
fn the_chart_lints_cleanly() {
    // --strict turns lint warnings into failures.
    helm(&["lint", "--strict", CHART]);
    helm(&["lint", "--strict", CHART, "--set", "replicas=5"]);
}

#[test]
fn the_statefulset_follows_the_replicas_value() {
    let default = Rendered::new(&[]);
    let values = load_yaml(&repo_root().join(CHART).join("values.yaml"));
    assert_eq!(
        default
            .statefulset()
            .get("spec")
            .and_then(|s| s.get("replicas")),
        values.get("replicas"),
        "the StatefulSet's replicas should be values.yaml's `replicas`"
    );
    let five = Rendered::new(&["replicas=5"]);
    assert_eq!(
        five.statefulset()
            .get("spec")
            .and_then(|s| s.get("replicas"))
            .and_then(Yaml::as_u64),
        Some(5),
        "--set replicas=5 should give a StatefulSet of 5"
    );
}

#[test]
fn each_pod_is_a_static_member_named_after_itself() {
    for sets in [&[][..], &["replicas=5"][..]] {
        let rendered = Rendered::new(sets);
        let instance_id = rendered.env("STOCKFLOW_INSTANCE_ID").unwrap_or_else(|| {
            panic!("the processor container has no STOCKFLOW_INSTANCE_ID (with --set {sets:?})")
        });
        let field = instance_id
            .get("valueFrom")
            .and_then(|v| v.get("fieldRef"))
            .and_then(|f| f.get("fieldPath"))
            .and_then(Yaml::as_str);
        assert_eq!(
            field,
            Some("metadata.name"),
            "STOCKFLOW_INSTANCE_ID should come from the pod's name (the downward API), which a \
             StatefulSet keeps across restarts; it is {instance_id:?}"
        );
    }
    let dynamic = Rendered::new(&["staticMembership=false"]);
    assert!(
        dynamic.env("STOCKFLOW_INSTANCE_ID").is_none(),
        "staticMembership=false should leave STOCKFLOW_INSTANCE_ID unset"
    );
}

#[test]
fn each_pod_keeps_its_state_dir_on_a_volume_claim_of_its_own() {
    let rendered = Rendered::new(&[]);
    let state_dir = rendered
        .env_value("STOCKFLOW_STATE_DIR")
        .expect("the processor container does not set STOCKFLOW_STATE_DIR");
    let mount = sequence(rendered.container().get("volumeMounts"))
        .into_iter()
        .find(|mount| str_at(mount, &["mountPath"]).trim_end_matches('/') == state_dir)
        .unwrap_or_else(|| {
            panic!("nothing is mounted at the state dir {state_dir}: the stores would be lost with the pod")
        });
    let volume = str_at(&mount, &["name"]);

    let spec = rendered
        .statefulset()
        .get("spec")
        .cloned()
        .unwrap_or_default();
    let claims = sequence(spec.get("volumeClaimTemplates"));
    let claim = claims
        .iter()
        .find(|claim| str_at(claim, &["metadata", "name"]) == volume)
        .unwrap_or_else(|| {
            panic!(
                "the state dir is mounted from {volume:?}, which is not one of the StatefulSet's \
                 volumeClaimTemplates (a claim per pod, kept when the pod is rescheduled)"
            )
        });
    assert!(
        !str_at(claim, &["spec", "resources", "requests", "storage"]).is_empty(),
        "the state volume claim requests no storage size"
    );
    let pod_volumes = sequence(
        spec.get("template")
            .and_then(|t| t.get("spec"))
            .and_then(|s| s.get("volumes")),
    );
    assert!(
        pod_volumes.iter().all(|v| str_at(v, &["name"]) != volume),
        "the pod template also defines a volume {volume:?}, which would stand in for the claim"
    );
}

#[test]
fn probes_use_health_and_ready_on_the_processor_port() {
    let rendered = Rendered::new(&[]);
    let container = rendered.container();
    let port = rendered.metrics_port();
    for (probe, path) in [
        ("livenessProbe", "/health"),
        ("readinessProbe", "/ready"),
        ("startupProbe", "/health"),
    ] {
        let get = container
            .get(probe)
            .and_then(|p| p.get("httpGet"))
            .unwrap_or_else(|| panic!("the processor container has no {probe} with httpGet"));
        assert_eq!(str_at(get, &["path"]), path, "{probe} should ask {path}");
        assert_eq!(
            rendered.container_port(get.get("port")),
            port,
            "{probe} asks a port other than the processor's STOCKFLOW_METRICS_ADDR port {port}"
        );
    }
}

#[test]
fn pods_get_longer_to_stop_than_the_processor_takes_to_drain() {
    for sets in [&[][..], &["shutdownTimeoutSeconds=120"][..]] {
        let rendered = Rendered::new(sets);
        let shutdown = rendered
            .env_value("STOCKFLOW_SHUTDOWN_TIMEOUT")
            .expect("the processor container does not set STOCKFLOW_SHUTDOWN_TIMEOUT");
        let shutdown = humantime::parse_duration(&shutdown)
            .unwrap_or_else(|e| panic!("STOCKFLOW_SHUTDOWN_TIMEOUT={shutdown:?}: {e}"));
        let grace = rendered
            .pod_spec()
            .get("terminationGracePeriodSeconds")
            .and_then(Yaml::as_u64)
            .map(Duration::from_secs)
            .unwrap_or(Duration::from_secs(30));
        assert!(
            grace > shutdown,
            "terminationGracePeriodSeconds ({grace:?}) is not above the processor's shutdown \
             timeout ({shutdown:?}) with --set {sets:?}: Kubernetes would kill a draining pod"
        );
    }
}

#[test]
fn prometheus_annotations_name_the_metrics_port() {
    let rendered = Rendered::new(&[]);
    let addr = rendered
        .env_value("STOCKFLOW_METRICS_ADDR")
        .expect("the processor container does not set STOCKFLOW_METRICS_ADDR");
    assert!(
        addr.starts_with("0.0.0.0:"),
        "STOCKFLOW_METRICS_ADDR={addr:?} is not reachable from outside the pod"
    );
    let annotations = rendered
        .statefulset()
        .get("spec")
        .and_then(|s| s.get("template"))
        .and_then(|t| t.get("metadata"))
        .and_then(|m| m.get("annotations"))
        .cloned()
        .unwrap_or_default();
    let annotation = |key: &str| str_at(&annotations, &[key]);
    assert_eq!(annotation("prometheus.io/scrape"), "true");
    assert_eq!(
        annotation("prometheus.io/port").parse::<u16>().ok(),
        Some(rendered.metrics_port()),
        "prometheus.io/port should be the STOCKFLOW_METRICS_ADDR port"
    );
    assert_eq!(annotation("prometheus.io/path"), "/metrics");
}

#[test]
fn a_headless_service_governs_the_statefulset() {
    let rendered = Rendered::new(&[]);
    let service_name = str_at(rendered.statefulset(), &["spec", "serviceName"]);
    let service = rendered.find("Service", &service_name).unwrap_or_else(|| {
        panic!("the StatefulSet's serviceName {service_name:?} is not rendered")
    });
    assert_eq!(
        str_at(service, &["spec", "clusterIP"]),
        "None",
        "the Service governing a StatefulSet should be headless (clusterIP: None)"
    );
    let selector = mapping(service.get("spec").and_then(|s| s.get("selector")));
    let pod_labels = mapping(
        rendered
            .statefulset()
            .get("spec")
            .and_then(|s| s.get("template"))
            .and_then(|t| t.get("metadata"))
            .and_then(|m| m.get("labels")),
    );
    assert!(
        !selector.is_empty() && selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)),
        "the Service selects {selector:?}, which the pods' labels {pod_labels:?} do not match"
    );
    let ports = sequence(service.get("spec").and_then(|s| s.get("ports")));
    assert!(
        ports
            .iter()
            .any(|p| rendered.container_port(p.get("targetPort")) == rendered.metrics_port()),
        "the Service has no port reaching the processor's metrics port: {ports:?}"
    );
}

#[test]
fn the_service_monitor_is_optional_and_scrapes_the_service() {
    assert!(
        Rendered::new(&[]).of_kind("ServiceMonitor").is_empty(),
        "the ServiceMonitor should be off by default (it needs the Prometheus Operator's CRD)"
    );
    let rendered = Rendered::new(&["metrics.serviceMonitor.enabled=true"]);
    let monitors = rendered.of_kind("ServiceMonitor");
    let [monitor] = monitors.as_slice() else {
        panic!(
            "metrics.serviceMonitor.enabled=true should render one ServiceMonitor, not {}",
            monitors.len()
        );
    };
    let service_name = str_at(rendered.statefulset(), &["spec", "serviceName"]);
    let service = rendered
        .find("Service", &service_name)
        .expect("the Service is rendered");
    let wanted = mapping(
        monitor
            .get("spec")
            .and_then(|s| s.get("selector"))
            .and_then(|s| s.get("matchLabels")),
    );
    let labels = mapping(service.get("metadata").and_then(|m| m.get("labels")));
    assert!(
        !wanted.is_empty() && wanted.iter().all(|(k, v)| labels.get(k) == Some(v)),
        "the ServiceMonitor selects {wanted:?}, which the Service's labels {labels:?} do not match"
    );
    let endpoint = sequence(monitor.get("spec").and_then(|s| s.get("endpoints")))
        .into_iter()
        .next()
        .expect("the ServiceMonitor has no endpoints");
    let port_name = str_at(&endpoint, &["port"]);
    assert!(
        sequence(service.get("spec").and_then(|s| s.get("ports")))
            .iter()
            .any(|p| str_at(p, &["name"]) == port_name),
        "the ServiceMonitor scrapes port {port_name:?}, which the Service does not name"
    );
    assert_eq!(str_at(&endpoint, &["path"]), "/metrics");
}

#[test]
fn the_container_reads_the_services_from_values_and_secrets() {
    let rendered = Rendered::new(&[
        "kafka.bootstrapServers=broker-0.kafka:9092",
        "applicationId=shop",
    ]);
    assert_eq!(
        rendered.env_value("KAFKA_BOOTSTRAP_SERVERS").as_deref(),
        Some("broker-0.kafka:9092")
    );
    assert_eq!(
        rendered.env_value("STOCKFLOW_APPLICATION_ID").as_deref(),
        Some("shop")
    );
    assert!(rendered.env_value("SCHEMA_REGISTRY_URL").is_some());

    // The database URL holds a password: from a Secret, the chart's own or an existing one.
    let database = rendered.env("DATABASE_URL").expect("no DATABASE_URL");
    let secret = str_at(&database, &["valueFrom", "secretKeyRef", "name"]);
    let key = str_at(&database, &["valueFrom", "secretKeyRef", "key"]);
    let made = rendered.find("Secret", &secret).unwrap_or_else(|| {
        panic!("DATABASE_URL comes from the Secret {secret:?}, which is not rendered")
    });
    assert!(
        !str_at(made, &["stringData", &key]).is_empty(),
        "the Secret {secret:?} has no {key:?}"
    );
    let existing = Rendered::new(&["database.existingSecret=shop-db"]);
    let database = existing.env("DATABASE_URL").expect("no DATABASE_URL");
    assert_eq!(
        str_at(&database, &["valueFrom", "secretKeyRef", "name"]),
        "shop-db"
    );
    assert!(
        existing.of_kind("Secret").is_empty(),
        "with database.existingSecret the chart should make no Secret"
    );
}

#[test]
fn every_environment_variable_is_one_the_processor_reads() {
    let declared: String = ENV_SOURCES
        .iter()
        .map(|file| read(&repo_root().join(file)))
        .collect();
    let rendered = Rendered::new(&[]);
    for var in sequence(rendered.container().get("env")) {
        let name = str_at(&var, &["name"]);
        assert!(
            declared.contains(&format!("env = \"{name}\"")),
            "the chart sets {name}, which none of {ENV_SOURCES:?} declares: a typo, or a flag \
             that was renamed"
        );
    }
}

#[test]
fn pods_run_as_the_images_user() {
    let dockerfile = read(&repo_root().join("Dockerfile"));
    let uid: u64 = dockerfile
        .split("--uid ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|uid| uid.parse().ok())
        .expect("the Dockerfile creates no user with --uid");
    let rendered = Rendered::new(&[]);
    let security = rendered
        .pod_spec()
        .get("securityContext")
        .cloned()
        .unwrap_or_default();
    for key in ["runAsUser", "fsGroup"] {
        assert_eq!(
            security.get(key).and_then(Yaml::as_u64),
            Some(uid),
            "the pod's securityContext.{key} should be the image's user {uid}, which owns the \
             state dir (fsGroup makes a fresh volume writable for it)"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------

/// The objects `helm template` renders with the default values and `--set` each of `sets`.
struct Rendered {
    objects: Vec<Yaml>,
}

impl Rendered {
    fn new(sets: &[&str]) -> Self {
        let mut args = vec!["template", RELEASE, CHART, "--namespace", NAMESPACE];
        for set in sets {
            args.extend(["--set", set]);
        }
        let text = helm(&args);
        let objects = serde_yaml::Deserializer::from_str(&text)
            .map(|document| {
                Yaml::deserialize(document).unwrap_or_else(|error| {
                    panic!("helm template {sets:?} rendered invalid YAML: {error}\n{text}")
                })
            })
            .filter(|object| !object.is_null())
            .collect();
        Self { objects }
    }

    fn of_kind(&self, kind: &str) -> Vec<&Yaml> {
        self.objects
            .iter()
            .filter(|object| str_at(object, &["kind"]) == kind)
            .collect()
    }

    fn find(&self, kind: &str, name: &str) -> Option<&Yaml> {
        self.of_kind(kind)
            .into_iter()
            .find(|object| str_at(object, &["metadata", "name"]) == name)
    }

    fn statefulset(&self) -> &Yaml {
        let sets = self.of_kind("StatefulSet");
        let [statefulset] = sets.as_slice() else {
            panic!(
                "the chart should render one StatefulSet, not {}",
                sets.len()
            );
        };
        statefulset
    }

    fn pod_spec(&self) -> Yaml {
        self.statefulset()
            .get("spec")
            .and_then(|s| s.get("template"))
            .and_then(|t| t.get("spec"))
            .cloned()
            .expect("the StatefulSet has no spec.template.spec")
    }

    fn container(&self) -> Yaml {
        sequence(self.pod_spec().get("containers"))
            .into_iter()
            .find(|c| str_at(c, &["name"]) == "processor")
            .expect("the pod has no container named processor")
    }

    /// The container's entry for environment variable `name`.
    fn env(&self, name: &str) -> Option<Yaml> {
        sequence(self.container().get("env"))
            .into_iter()
            .find(|var| str_at(var, &["name"]) == name)
    }

    /// The literal value of environment variable `name`, if set with `value`.
    fn env_value(&self, name: &str) -> Option<String> {
        self.env(name)?.get("value").map(scalar)
    }

    /// The port in the processor's STOCKFLOW_METRICS_ADDR.
    fn metrics_port(&self) -> u16 {
        let addr = self
            .env_value("STOCKFLOW_METRICS_ADDR")
            .expect("the processor container does not set STOCKFLOW_METRICS_ADDR");
        addr.rsplit_once(':')
            .and_then(|(_, port)| port.parse().ok())
            .unwrap_or_else(|| panic!("STOCKFLOW_METRICS_ADDR={addr:?} is not host:port"))
    }

    /// A probe's or Service's port, given by number or by the container port's name.
    fn container_port(&self, port: Option<&Yaml>) -> u16 {
        let port = port.map(scalar).unwrap_or_default();
        if let Ok(number) = port.parse() {
            return number;
        }
        sequence(self.container().get("ports"))
            .iter()
            .find(|p| str_at(p, &["name"]) == port)
            .and_then(|p| p.get("containerPort"))
            .and_then(Yaml::as_u64)
            .and_then(|n| u16::try_from(n).ok())
            .unwrap_or_else(|| panic!("port {port:?} names no port of the processor container"))
    }
}

/// Runs the pinned Helm in the repository root and returns its stdout; panics with its stderr.
fn helm(args: &[&str]) -> String {
    let helm = helm_binary();
    let output = Command::new(&helm)
        .args(args)
        .current_dir(repo_root())
        .output()
        .unwrap_or_else(|error| panic!("cannot run {}: {error}", helm.display()));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "helm {} failed ({}):\n{}{}",
        args.join(" "),
        output.status,
        stdout,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// `~/.cache/stockflow/bin/helm` (under `$STOCKFLOW_HOME` if set, as the scripts do).
fn helm_binary() -> PathBuf {
    let home = std::env::var_os("STOCKFLOW_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache/stockflow")))
        .expect("neither STOCKFLOW_HOME nor HOME is set");
    let helm = home.join("bin/helm");
    assert!(
        helm.is_file(),
        "{} does not exist: run scripts/install-helm.sh (scripts/test.sh does) to build the \
         pinned Helm that these tests use",
        helm.display()
    );
    helm
}

/// A YAML scalar as text (`9400`, `true` and `"x"` alike); empty for anything else.
fn scalar(value: &Yaml) -> String {
    match value {
        Yaml::String(text) => text.clone(),
        Yaml::Number(number) => number.to_string(),
        Yaml::Bool(flag) => flag.to_string(),
        _ => String::new(),
    }
}

/// The scalar at `path` below `value`, as text; empty when absent.
fn str_at(value: &Yaml, path: &[&str]) -> String {
    path.iter()
        .try_fold(value, |value, key| value.get(*key))
        .map(scalar)
        .unwrap_or_default()
}

fn sequence(value: Option<&Yaml>) -> Vec<Yaml> {
    value
        .and_then(Yaml::as_sequence)
        .cloned()
        .unwrap_or_default()
}

fn mapping(value: Option<&Yaml>) -> BTreeMap<String, String> {
    value
        .and_then(Yaml::as_mapping)
        .map(|entries| {
            entries
                .iter()
                .map(|(key, value)| (scalar(key), scalar(value)))
                .collect()
        })
        .unwrap_or_default()
}
