//! Disk trouble under a running instance (issue 17): a state dir that disappears, or that can
//! no longer be written, stops the processor loudly within seconds (`/health` 503 with the
//! reason while it stops, one error line naming the directory, exit 1), and a restart on the
//! same path rebuilds what the directory lost from the changelogs; every order is then decided
//! once, with every invariant. (Which notices first, the state dir's watch or a store writing
//! there, is a race: either way the line names the directory.)

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::{MINUTE, ProcessorChild, World};

const SKUS: u32 = 20;
const STOCK: i64 = 300;

/// What `/health` answers: its status code and body.
async fn health(addr: SocketAddr) -> Option<(u16, String)> {
    let response = reqwest::get(format!("http://{addr}/health")).await.ok()?;
    let code = response.status().as_u16();
    Some((code, response.text().await.ok()?))
}

/// Waits until the processor shows that its state dir at `dir` failed: `/health` 503 naming
/// the directory, or already gone (a store that tried to write there may notice first, and
/// the process stops within a second). Panics if it is still healthy after 10 s.
async fn wait_failed(child: &mut ProcessorChild, dir: &Path) {
    let started = Instant::now();
    loop {
        if child.exit_status().is_some() {
            return;
        }
        if let Some((503, why)) = health(child.metrics).await {
            assert!(why.contains(&dir.display().to_string()), "{why}");
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{} still healthy 10 s after its state dir failed",
            child.name
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for the processor to exit after its state dir at `dir` failed: exit code 1, with one
/// error line, which names the directory (the watch's line, or the store's that noticed first).
async fn expect_loud_exit(child: &mut ProcessorChild, dir: &Path) {
    let status = child
        .wait_exit(2 * MINUTE)
        .await
        .expect("the processor stops on its own");
    assert_eq!(status.code(), Some(1), "{} exits 1", child.name);
    // The line `processor run` exits with (warnings of stores that failed too come before).
    let lines: Vec<String> = child
        .log_lines("error: ")
        .into_iter()
        .filter(|line| line.starts_with("error: "))
        .collect();
    assert_eq!(lines.len(), 1, "one error line: {lines:?}");
    assert!(
        lines[0].contains(&dir.display().to_string()),
        "the error names the state dir: {}",
        lines[0]
    );
}

/// Starts an instance on `state` under load, and waits until it has decided some orders.
async fn deciding(world: &World, name: &str, state: &Path) -> ProcessorChild {
    let mut child = world.spawn_processor(name, state, &[]);
    child.wait_ready(MINUTE).await;
    let started = Instant::now();
    while child
        .metric("stockflow_order_outcomes_total")
        .await
        .unwrap_or(0.0)
        < 500.0
    {
        assert!(started.elapsed() < MINUTE, "{name} decides orders");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(health(child.metrics).await.map(|(code, _)| code), Some(200));
    child
}

/// 30,000 orders at 2,000/s in the background.
fn traffic(world: &World) -> tokio::task::JoinHandle<generator::app::RunSummary> {
    world.spawn_generator(&[
        "--rate",
        "2000",
        "--count",
        "30000",
        "--synthetic-skus",
        &SKUS.to_string(),
        "--lines-max",
        "3",
    ])
}

#[tokio::test]
async fn a_state_dir_removed_under_a_running_instance_stops_it_and_a_restart_rebuilds() {
    let world = World::new("disk-gone").await;
    world.seed(SKUS, STOCK).await;
    let state = tempfile::tempdir().expect("state dir");
    let generator = traffic(&world);
    let mut child = deciding(&world, "gone-0", state.path()).await;

    let dir = state.path().join(&world.application_id);
    remove_under_writer(&dir);
    wait_failed(&mut child, &dir).await;
    expect_loud_exit(&mut child, &dir).await;

    let mut child = world.spawn_processor("gone-1", state.path(), &[]);
    child.wait_ready(3 * MINUTE).await;
    let restored = child.restored_records().await;
    assert!(
        restored > 1000.0,
        "the stores were rebuilt from the changelogs ({restored} records restored)"
    );
    let outcomes = world.check_generated(generator, SKUS, STOCK).await;
    world.check_read_model(&outcomes, MINUTE).await;
    child.kill();
}

/// Removes a directory that a running instance keeps writing into. `remove_dir_all` alone
/// races with the files RocksDB creates meanwhile ("Directory not empty"), so the directory
/// is first renamed away, which is atomic and, for every later open by path, the same as
/// gone; then the renamed tree is removed.
fn remove_under_writer(dir: &Path) {
    let away = dir.with_extension("removed");
    std::fs::rename(dir, &away).expect("the state dir is moved away");
    std::fs::remove_dir_all(&away).expect("the moved state dir is removed");
}

/// A directory tree made unwritable, for root too (the immutable flag, which root's
/// permissions do not override), or by its mode where `chattr` is not allowed; made writable
/// again when dropped, so that a failed test leaves a directory that can be removed.
struct Unwritable {
    dir: PathBuf,
    immutable: bool,
}

impl Unwritable {
    fn make(dir: &Path) -> Self {
        let immutable = Command::new("chattr")
            .args(["-R", "+i"])
            .arg(dir)
            .output()
            .is_ok_and(|out| out.status.success());
        if !immutable {
            let status = Command::new("chmod")
                .args(["-R", "a-w"])
                .arg(dir)
                .status()
                .expect("chmod runs");
            assert!(status.success(), "chmod -R a-w {}", dir.display());
        }
        Self {
            dir: dir.to_owned(),
            immutable,
        }
    }
}

impl Drop for Unwritable {
    fn drop(&mut self) {
        let (command, flag) = if self.immutable {
            ("chattr", "-i")
        } else {
            ("chmod", "u+w")
        };
        let _ = Command::new(command)
            .args(["-R", flag])
            .arg(&self.dir)
            .status();
    }
}

#[tokio::test]
async fn a_state_dir_made_unwritable_stops_the_instance_and_a_restart_goes_on() {
    let world = World::new("disk-ro").await;
    world.seed(SKUS, STOCK).await;
    let state = tempfile::tempdir().expect("state dir");
    let generator = traffic(&world);
    let mut child = deciding(&world, "ro-0", state.path()).await;

    let dir = state.path().join(&world.application_id);
    let unwritable = Unwritable::make(&dir);
    wait_failed(&mut child, &dir).await;
    expect_loud_exit(&mut child, &dir).await;
    drop(unwritable);

    let mut child = world.spawn_processor("ro-1", state.path(), &[]);
    child.wait_ready(3 * MINUTE).await;
    let outcomes = world.check_generated(generator, SKUS, STOCK).await;
    world.check_read_model(&outcomes, MINUTE).await;
    child.kill();
}
