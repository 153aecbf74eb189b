//! Where the test services are. [`stack`] finds Kafka, the schema registry and PostgreSQL:
//! from `KAFKA_BOOTSTRAP_SERVERS`, `SCHEMA_REGISTRY_URL` and `DATABASE_URL` when they are set
//! (the local stack of `scripts/stack.sh`, or any other); otherwise, when a Docker engine
//! answers, it starts them with testcontainers; otherwise it fails, saying how to start the
//! local stack. Nothing here imitates a service.

use testcontainers::core::{ContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};
use tokio::sync::OnceCell;

use crate::ports::free_port;

const HOW_TO_START: &str = "no test services: set KAFKA_BOOTSTRAP_SERVERS, SCHEMA_REGISTRY_URL and \
DATABASE_URL, or start the local stack with `scripts/stack.sh start && eval \"$(scripts/stack.sh env)\"` \
(or run `scripts/test.sh`, which does both), or run with a Docker engine for testcontainers";

/// Where the test services are.
#[derive(Debug)]
pub struct Stack {
    pub bootstrap_servers: String,
    pub schema_registry_url: String,
    pub database_url: String,
    /// Containers started for this test binary; kept alive until it exits.
    _containers: Vec<ContainerAsync<GenericImage>>,
    /// How the outage tests reach PostgreSQL and the registry.
    services: Services,
}

/// Who runs PostgreSQL and the registry for the tests.
#[derive(Debug)]
enum Services {
    /// From the environment: assumed to be `scripts/stack.sh`'s.
    LocalStack,
    Containers {
        postgres: Box<ContainerAsync<GenericImage>>,
        registry: Box<ContainerAsync<GenericImage>>,
    },
}

impl Stack {
    /// Stops PostgreSQL (for outage tests). It stops the PostgreSQL every test of this binary
    /// shares, so a test that calls it belongs in a test binary of its own (cargo runs test
    /// binaries one after another).
    pub async fn stop_postgres(&self) {
        match &self.services {
            Services::LocalStack => local_stack(&["stop", "postgres"]),
            Services::Containers { postgres, .. } => postgres
                .stop_with_timeout(Some(10))
                .await
                .expect("stop the PostgreSQL container"),
        }
    }

    /// Starts PostgreSQL again after [`Stack::stop_postgres`], on the same address.
    pub async fn start_postgres(&self) {
        match &self.services {
            Services::LocalStack => local_stack(&["start", "postgres"]),
            Services::Containers { postgres, .. } => postgres
                .start()
                .await
                .expect("start the PostgreSQL container"),
        }
    }

    /// Whether the services are the local stack's (`scripts/stack.sh`), whose broker has the
    /// listener the fault proxy forwards to (see [`crate::proxy`]).
    pub fn is_local(&self) -> bool {
        matches!(self.services, Services::LocalStack)
    }

    /// Kills the Kafka broker with SIGKILL (for the broker bounce test; the same rule as
    /// [`Stack::stop_postgres`]) until [`BrokerOutage::end`] starts it again. Only the local
    /// stack can do it: `None` when the services are containers. If the test fails first, the
    /// broker is started again as the guard drops.
    pub fn crash_kafka(&self) -> Option<BrokerOutage> {
        match &self.services {
            Services::LocalStack => {
                local_stack(&["crash", "kafka"]);
                Some(BrokerOutage { ended: false })
            }
            Services::Containers { .. } => None,
        }
    }

    /// Takes the schema registry away (for outage tests; the same rule as
    /// [`Stack::stop_postgres`]) until [`RegistryOutage::end`]: the local stack's is stopped
    /// (connections are refused); a container, whose schemas live in memory, is paused instead
    /// (requests time out). If the test fails first, the local stack's registry is started
    /// again as the guard drops, so that the next test binaries find it.
    pub async fn stop_registry(&self) -> RegistryOutage<'_> {
        match &self.services {
            Services::LocalStack => local_stack(&["stop", "registry"]),
            Services::Containers { registry, .. } => registry
                .pause()
                .await
                .expect("pause the registry container"),
        }
        RegistryOutage {
            stack: self,
            ended: false,
        }
    }

    /// Runs `scripts/stack.sh prune` on the local stack (false, doing nothing, when the
    /// services are containers: they start empty). It deletes every test's topics and schemas,
    /// running ones' too, so a test that calls it belongs in a test binary of its own.
    pub fn prune(&self) -> bool {
        match &self.services {
            Services::LocalStack => {
                local_stack(&["prune"]);
                true
            }
            Services::Containers { .. } => false,
        }
    }
}

/// Runs `scripts/stack.sh ARGS...` and panics if it fails.
fn local_stack(args: &[&str]) {
    // The running test's crate (cargo test sets it at run time) is a sibling of scripts/; the
    // compile-time path could be another clone's that shares the build cache.
    let crate_dir = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned());
    let script = format!("{crate_dir}/../scripts/stack.sh");
    let status = std::process::Command::new(&script)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
    assert!(
        status.success(),
        "{script} {} failed ({status}); the tests that control the local stack need the \
         environment to point at it (eval \"$(scripts/stack.sh env)\")",
        args.join(" ")
    );
}

static STACK: OnceCell<Stack> = OnceCell::const_new();

/// The test services, found or started once per test binary.
pub async fn stack() -> &'static Stack {
    STACK.get_or_init(find_or_start).await
}

async fn find_or_start() -> Stack {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    if let (Some(bootstrap_servers), Some(schema_registry_url), Some(database_url)) = (
        env("KAFKA_BOOTSTRAP_SERVERS"),
        env("SCHEMA_REGISTRY_URL"),
        env("DATABASE_URL"),
    ) {
        return Stack {
            bootstrap_servers,
            schema_registry_url,
            database_url,
            _containers: Vec::new(),
            services: Services::LocalStack,
        };
    }
    if !docker_available() {
        panic!("{HOW_TO_START}");
    }
    start_containers().await
}

fn docker_available() -> bool {
    std::process::Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

async fn start_containers() -> Stack {
    // Kafka advertises the host port it is reached on, so that port is chosen up front.
    let kafka_port = free_port();
    let kafka = GenericImage::new("apache/kafka", "4.1.0")
        .with_wait_for(WaitFor::message_on_stdout("Kafka Server started"))
        .with_mapped_port(kafka_port, ContainerPort::Tcp(9092))
        .with_env_var("KAFKA_LISTENERS", "PLAINTEXT://:9092,CONTROLLER://:9093")
        .with_env_var(
            "KAFKA_ADVERTISED_LISTENERS",
            format!("PLAINTEXT://127.0.0.1:{kafka_port}"),
        )
        .with_env_var("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
        .with_env_var("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
        .with_env_var("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "1")
        .with_env_var("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0")
        .start()
        .await
        .expect("start the Kafka container");
    let registry = GenericImage::new("apicurio/apicurio-registry-mem", "2.6.5.Final")
        .with_exposed_port(ContainerPort::Tcp(8080))
        .with_wait_for(WaitFor::message_on_stdout("Installed features"))
        .start()
        .await
        .expect("start the schema registry container");
    // A fixed host port, so that PostgreSQL keeps its address across a stop and start.
    let postgres_port = free_port();
    let postgres = GenericImage::new("postgres", "16")
        .with_wait_for(WaitFor::message_on_stderr(
            "database system is ready to accept connections",
        ))
        .with_mapped_port(postgres_port, ContainerPort::Tcp(5432))
        .with_env_var("POSTGRES_USER", "stockflow")
        .with_env_var("POSTGRES_PASSWORD", "stockflow")
        .with_env_var("POSTGRES_DB", "stockflow")
        .start()
        .await
        .expect("start the PostgreSQL container");
    let registry_port = registry
        .get_host_port_ipv4(8080)
        .await
        .expect("registry port");
    Stack {
        bootstrap_servers: format!("127.0.0.1:{kafka_port}"),
        schema_registry_url: format!("http://127.0.0.1:{registry_port}/apis/ccompat/v7"),
        database_url: format!("postgres://stockflow:stockflow@127.0.0.1:{postgres_port}/stockflow"),
        _containers: vec![kafka],
        services: Services::Containers {
            postgres: Box::new(postgres),
            registry: Box::new(registry),
        },
    }
}

/// The registry's outage, from [`Stack::stop_registry`].
#[derive(Debug)]
pub struct RegistryOutage<'a> {
    stack: &'a Stack,
    ended: bool,
}

impl RegistryOutage<'_> {
    /// Brings the registry back, with its schemas.
    pub async fn end(mut self) {
        self.ended = true;
        match &self.stack.services {
            Services::LocalStack => local_stack(&["start", "registry"]),
            Services::Containers { registry, .. } => registry
                .unpause()
                .await
                .expect("unpause the registry container"),
        }
    }
}

impl Drop for RegistryOutage<'_> {
    fn drop(&mut self) {
        if !self.ended && matches!(self.stack.services, Services::LocalStack) {
            local_stack(&["start", "registry"]);
        }
    }
}

/// The broker's outage, from [`Stack::crash_kafka`].
#[derive(Debug)]
pub struct BrokerOutage {
    ended: bool,
}

impl BrokerOutage {
    /// Starts the broker again and waits until it answers.
    pub fn end(mut self) {
        self.ended = true;
        local_stack(&["start", "kafka"]);
    }
}

impl Drop for BrokerOutage {
    fn drop(&mut self) {
        if !self.ended {
            local_stack(&["start", "kafka"]);
        }
    }
}
