//! `processor run`, as a function of its config and a shutdown token: checks every service
//! before it creates anything (so a failed start leaves nothing behind), then prepares the
//! topics, schemas and read-model tables, serves metrics, runs the engine on
//! `--num-stream-threads` threads of its own (each a member of the consumer group, with its own
//! transactional producer) and the read model's sync beside them. Any of them failing (an
//! engine's error or panic, the metrics server) cancels the root token, so everything stops
//! together, and [`Running::wait`] returns the first failure, which names what failed.
//! Beside `/metrics`, `/health` and `/ready`, the server answers `GET /status` with what each
//! engine thread is doing (for `processor status`, which finds the server through the engines'
//! client ids), and serves the HTTP API ([`crate::api`]: stock, orders, the OpenAPI document).
//! A watch on the state directory ([`crate::state_dir`]) stops it when the directory goes away
//! or cannot be written.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::http::{StatusCode, header};
use axum::routing::get;
use plumbing::connection::ConnectionArgs;
use schemas::{Codec, Registry};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{self, Api};
use crate::cli::RunArgs;
use crate::metrics::Metrics;
use crate::readmodel;
use crate::readmodel::postgres::{connect, run_sync};
use crate::runtime::engine::{EngineConfig, GroupProtocol, run_engine};
use crate::runtime::live::EngineStatus;
use crate::runtime::queryable::LiveStores;
use crate::runtime::store::SharedMemory;
use crate::runtime::topics;
use crate::state_dir::{self, StateDir};
use crate::status::{InstanceStatus, SyncStatus, client_id};
use crate::topology;

/// A started processor.
#[derive(Debug)]
pub struct Running {
    /// Where /metrics, /health and /ready are served.
    pub metrics_addr: SocketAddr,
    pub metrics: Metrics,
    /// True once every engine thread has restored its assigned tasks.
    pub ready: Readiness,
    engines: Vec<tokio::sync::oneshot::Receiver<anyhow::Result<()>>>,
    /// The engine threads' state (which of them have ended).
    statuses: Vec<EngineStatus>,
    sync: JoinHandle<()>,
    server: JoinHandle<anyhow::Result<()>>,
    /// The state directory's watch (`state_dir::watch`).
    watch: JoinHandle<anyhow::Result<()>>,
    shutdown: CancellationToken,
    /// How long the engines get to stop once `shutdown` is cancelled.
    shutdown_timeout: Duration,
}

impl Running {
    /// Waits until the processor stops (after `shutdown`, or on a fatal error).
    pub async fn wait(self) -> anyhow::Result<()> {
        // Every engine thread stops (the first failure cancels the others); the first error is
        // the one reported. Once the shutdown has begun, they get `shutdown_timeout` to do it:
        // a thread still running then is taken for hung, and the process exits without it
        // (returning from `main` ends every thread), rather than live on deciding nothing.
        let overdue = async {
            self.shutdown.cancelled().await;
            tokio::time::sleep(self.shutdown_timeout).await;
        };
        let results = tokio::select! {
            results = futures::future::join_all(self.engines) => results,
            () = overdue => {
                let hung: Vec<String> = self
                    .statuses
                    .iter()
                    .filter(|s| !s.has_ended())
                    .map(|s| s.snapshot().thread)
                    .collect();
                return Err(anyhow::anyhow!(
                    "{} did not stop within {} of the shutdown; exiting without it",
                    hung.join(", "),
                    humantime::format_duration(self.shutdown_timeout)
                ));
            }
        };
        let mut result = Ok(());
        for ended in results {
            let ended = ended.context("an engine thread ended without a result")?;
            if result.is_ok() {
                result = ended;
            }
        }
        self.shutdown.cancel();
        // The engines' store writers have dropped their subscriptions: the sync writes what
        // is left.
        let synced = self.sync.await.context("the read-model sync panicked");
        let served = self
            .server
            .await
            .context("the metrics server panicked")
            .and_then(|served| served);
        // A failed state dir is the cause of whatever the engines then ran into: it goes first.
        let watched = self
            .watch
            .await
            .context("the state dir's watch panicked")
            .and_then(|watched| watched);
        watched.and(result).and(synced).and(served)
    }
}

/// Runs the processor until `shutdown` or a fatal error.
pub async fn run(
    connection: &ConnectionArgs,
    args: &RunArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    start(connection, args, shutdown).await?.wait().await
}

/// Starts the processor and returns once it is processing (or failed to start).
pub async fn start(
    connection: &ConnectionArgs,
    args: &RunArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    let order = args.decision_order()?;
    let topics = connection.topics();
    let client = connection.client_config();
    if args.group_protocol == GroupProtocol::Consumer
        && let Some(key) = GroupProtocol::CLASSIC_ONLY
            .into_iter()
            .find(|key| client.get(key).is_some())
    {
        anyhow::bail!(
            "-X {key} does not go with --group-protocol consumer: the broker sets it for the group \
             (group.consumer.session.timeout.ms, group.consumer.heartbeat.interval.ms; the \
             assignor is the broker's range)"
        );
    }
    // Every service is checked before anything is created, so a start that fails (a service
    // unreachable, a contract the registry refuses, the metrics port or the state dir taken)
    // leaves no schema, topic or subject behind.
    let registry = Registry::new(&connection.schema_registry_url)?;
    registry.ping().await?;
    let ping = client.clone();
    tokio::task::spawn_blocking(move || plumbing::admin::ping(&ping))
        .await
        .context("the Kafka check panicked")??;
    readmodel::postgres::ping(args.app.database_url.as_str(), &args.app.database_schema).await?;
    // Outputs are produced with the compiled-in contracts: refuse an incompatible change now.
    registry.check_all(&topics).await?;
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("cannot listen on {} for metrics", args.metrics_addr))?;
    let state_dir = Arc::new(StateDir::open(
        &args.app.state_dir.join(&args.app.application_id),
    )?);
    let instance_id = state_dir.instance_id()?;

    // Then what is missing is created: topics, subjects, the read model's schema and tables.
    let codec = Arc::new(Codec::new(&connection.schema_registry_url, &topics)?);
    let metrics = Metrics::new(prometheus::Registry::new());
    let topology = Arc::new(topology::build(
        &args.app.application_id,
        &topics,
        codec.clone(),
        metrics.clone(),
        order,
        args.retention.order_retention,
    ));
    let partitions = Arc::new(topics::ensure(&topology, &client, args.partitions).await?);
    // The processor encodes its outputs with the ids registered now, whatever happens to the
    // registry later (decoding an input's unseen schema id still needs it; see the engine).
    codec.learn(&registry.register_all(&topics).await?);
    let pool = connect(args.app.database_url.as_str(), &args.app.database_schema).await?;

    metrics.initialize_labels(&topology.source_topics());
    let threads = usize::from(args.num_stream_threads);
    let ready = Readiness(
        (0..threads)
            .map(|_| Arc::new(AtomicBool::new(false)))
            .collect(),
    );
    let status_addr = listener
        .local_addr()
        .context("the metrics listener has no address")?;
    let statuses: Vec<EngineStatus> = (0..threads)
        .map(|thread| {
            EngineStatus::new(
                &format!("engine-{thread}"),
                &client_id(&instance_id, thread, status_addr),
            )
        })
        .collect();
    let answer = StatusAnswer {
        application_id: args.app.application_id.clone(),
        instance_id: instance_id.clone(),
        threads: statuses.clone(),
        metrics: metrics.clone(),
        ready: ready.clone(),
        stall_timeout: args.stall_timeout,
        state_dir: state_dir.clone(),
    };
    let queryable = LiveStores::default();
    let api = Arc::new(Api {
        instance_id: instance_id.clone(),
        live: queryable.clone(),
        owners: api::owners::Owners::new(&client, &args.app.application_id)?,
        producer: client
            .clone()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("partitioner", plumbing::admin::PARTITIONER)
            .set("linger.ms", "1")
            .create()
            .context("cannot create the API's Kafka producer")?,
        // A codec of its own: the engines' encode on their threads, and a registry client's
        // pooled connections belong to the runtime that opened them.
        codec: Arc::new(Codec::new(&connection.schema_registry_url, &topics)?),
        orders_topic: topics.orders.clone(),
        adjustments_topic: topics.inventory_adjustments.clone(),
        order_partitions: partitions.subs[usize::from(topology::ORDERS)],
        inventory_partitions: partitions.subs[usize::from(topology::INVENTORY)],
        http: reqwest::Client::new(),
    });
    let (metrics_addr, server) = serve_metrics(
        listener,
        metrics.clone(),
        ready.clone(),
        answer,
        api::routes(api),
        shutdown.clone(),
    )
    .await?;
    tracing::info!(
        %metrics_addr,
        instance_id,
        "serving /metrics, /health, /ready, /status and the API (/openapi.json)"
    );

    let config = EngineConfig {
        application_id: args.app.application_id.clone(),
        guarantee: args.processing_guarantee,
        commit_interval: args.commit_interval(),
        state_dir: state_dir.path().to_owned(),
        client,
        instance_id: instance_id.clone(),
        group_instance_id: None,
        group_protocol: args.group_protocol,
        memory: SharedMemory::new((args.cache_mb << 20) as usize),
        topology,
        partitions,
        subscription: None,
        client_id: None,
        status: EngineStatus::default(),
        queryable,
    };
    let (subscription, applied) = readmodel::subscription();
    let sync = tokio::spawn(run_sync(pool, applied, args.sync_interval, metrics.clone()));
    // Each engine gets a thread of its own (not a blocking-pool task, which a runtime would
    // wait for on shutdown); its result comes back on a channel.
    let mut engines = Vec::with_capacity(threads);
    for (thread, ready) in ready.0.iter().enumerate() {
        let mut config = config.clone();
        if thread > 0 {
            // Thread 0 keeps the instance's own transactional id, so one thread is unchanged.
            config.instance_id = format!("{instance_id}-{thread}");
        }
        config.group_instance_id = args.instance_id.as_ref().map(|id| format!("{id}-{thread}"));
        config.subscription = Some(subscription.clone());
        config.status = statuses[thread].clone();
        config.client_id = Some(config.status.snapshot().client_id);
        let (done, engine) = tokio::sync::oneshot::channel();
        let (metrics, ready, shutdown, state_dir, status) = (
            metrics.clone(),
            ready.clone(),
            shutdown.clone(),
            state_dir.clone(),
            statuses[thread].clone(),
        );
        let name = format!("engine-{thread}");
        std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                // The directory stays locked until the last engine has closed its stores.
                let _state_dir = state_dir;
                let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    run_engine(config, metrics, ready.clone(), shutdown.clone())
                }));
                let result = match ran {
                    Ok(ended) => ended.with_context(|| format!("{name} stopped")),
                    Err(panic) => Err(anyhow::anyhow!(
                        "{name} panicked: {}",
                        panic_message(panic.as_ref())
                    )),
                };
                ready.store(false, Ordering::Release);
                status.end(match &result {
                    Ok(()) => "it was stopped".to_owned(),
                    Err(error) => format!("{error:#}"),
                });
                shutdown.cancel();
                let _ = done.send(result);
            })
            .context("cannot start an engine thread")?;
        engines.push(engine);
    }
    drop(subscription); // the sync ends once every engine's store writer has dropped its own
    let watch = tokio::spawn(state_dir::watch(
        state_dir,
        state_dir::CHECK_EVERY,
        shutdown.clone(),
    ));
    Ok(Running {
        metrics_addr,
        metrics,
        ready,
        engines,
        statuses,
        sync,
        server,
        watch,
        shutdown,
        shutdown_timeout: args.shutdown_timeout,
    })
}

/// Whether every engine thread has its assigned tasks restored (what /ready answers).
#[derive(Debug, Clone)]
pub struct Readiness(Vec<Arc<AtomicBool>>);

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.0.iter().all(|r| r.load(Ordering::Acquire))
    }
}

/// What `GET /status` is made of.
#[derive(Debug, Clone)]
struct StatusAnswer {
    application_id: String,
    instance_id: String,
    threads: Vec<EngineStatus>,
    metrics: Metrics,
    ready: Readiness,
    /// How long an engine thread may go without progress before /health fails.
    stall_timeout: Duration,
    state_dir: Arc<StateDir>,
}

impl StatusAnswer {
    /// What `/health` answers: every engine thread alive and going round, or why not.
    fn health(&self) -> Result<(), String> {
        let now = schemas::now_millis();
        let failures: Vec<String> = self
            .state_dir
            .failure()
            .map(str::to_owned)
            .into_iter()
            .chain(
                self.threads
                    .iter()
                    .filter_map(|t| t.health(now, self.stall_timeout).err()),
            )
            .collect();
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures.join("; "))
        }
    }

    fn now(&self) -> InstanceStatus {
        InstanceStatus {
            application_id: self.application_id.clone(),
            instance_id: self.instance_id.clone(),
            ready: self.ready.is_ready(),
            threads: self.threads.iter().map(EngineStatus::snapshot).collect(),
            sync: SyncStatus {
                lag_rows: self.metrics.sync_lag_rows.get(),
                lag_seconds: self.metrics.sync_lag_seconds.get(),
            },
        }
    }
}

async fn serve_metrics(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    ready: Readiness,
    status: StatusAnswer,
    api: Router,
    shutdown: CancellationToken,
) -> anyhow::Result<(SocketAddr, JoinHandle<anyhow::Result<()>>)> {
    let app = api
        .route(
            "/metrics",
            get(move || {
                let body = metrics.render();
                async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body) }
            }),
        )
        .route(
            "/health",
            get({
                let status = status.clone();
                move || {
                    let verdict = status.health();
                    async move {
                        match verdict {
                            Ok(()) => (StatusCode::OK, "ok".to_owned()),
                            Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
                        }
                    }
                }
            }),
        )
        .route(
            "/status",
            get(move || {
                let body = serde_json::to_string(&status.now())
                    .expect("invariant: a status is plain data that serializes");
                async move { ([(header::CONTENT_TYPE, "application/json")], body) }
            }),
        )
        .route(
            "/ready",
            get(move || {
                let is_ready = ready.is_ready();
                async move {
                    if is_ready {
                        (StatusCode::OK, "ready")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "restoring")
                    }
                }
            }),
        );
    let local = listener.local_addr()?;
    let server = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .await;
        if let Err(error) = &served {
            // Without metrics and health checks nobody can see the processor: stop it.
            tracing::error!(%error, "metrics server failed");
            shutdown.cancel();
        }
        served.context("the metrics server failed")
    });
    Ok((local, server))
}

/// What a panic said, if it said it with a string.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A started processor made of parts: one engine per result channel, no server work.
    fn running(
        engines: Vec<tokio::sync::oneshot::Receiver<anyhow::Result<()>>>,
        statuses: Vec<EngineStatus>,
        shutdown: CancellationToken,
    ) -> Running {
        Running {
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics: Metrics::new(prometheus::Registry::new()),
            ready: Readiness(Vec::new()),
            engines,
            statuses,
            sync: tokio::spawn(async {}),
            server: tokio::spawn(async { Ok(()) }),
            watch: tokio::spawn(async { Ok(()) }),
            shutdown,
            shutdown_timeout: Duration::from_millis(200),
        }
    }

    #[tokio::test]
    async fn a_hung_engine_thread_does_not_keep_the_process_waiting() {
        let statuses = vec![
            EngineStatus::new("engine-0", ""),
            EngineStatus::new("engine-1", ""),
        ];
        let (done_0, engine_0) = tokio::sync::oneshot::channel();
        let (_never, engine_1) = tokio::sync::oneshot::channel();
        let shutdown = CancellationToken::new();
        let waiting = tokio::spawn(
            running(vec![engine_0, engine_1], statuses.clone(), shutdown.clone()).wait(),
        );
        // Before the shutdown, waiting is not bounded.
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(!waiting.is_finished());
        // engine-0 stops; engine-1 hangs (it never sends, never ends).
        statuses[0].end("it was stopped".into());
        done_0.send(Ok(())).expect("waiting");
        shutdown.cancel();
        let started = std::time::Instant::now();
        let result = waiting.await.expect("wait does not panic");
        assert!(started.elapsed() < Duration::from_secs(5));
        let error = result.expect_err("a hung engine is an error").to_string();
        assert_eq!(
            error,
            "engine-1 did not stop within 200ms of the shutdown; exiting without it"
        );
    }

    #[tokio::test]
    async fn engines_that_stop_in_time_report_the_first_error() {
        let (done_0, engine_0) = tokio::sync::oneshot::channel();
        let (done_1, engine_1) = tokio::sync::oneshot::channel();
        let shutdown = CancellationToken::new();
        done_0.send(Ok(())).expect("waiting");
        done_1
            .send(Err(anyhow::anyhow!("engine-1 stopped: boom")))
            .expect("waiting");
        shutdown.cancel();
        let result = running(vec![engine_0, engine_1], Vec::new(), shutdown)
            .wait()
            .await;
        assert_eq!(
            result.expect_err("an error").to_string(),
            "engine-1 stopped: boom"
        );
    }
}
