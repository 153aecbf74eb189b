//! The state directory of a running processor: one process per directory (a lock file), the
//! instance id it keeps, and a watch that stops the processor when the directory goes away or
//! can no longer be written.
//!
//! RocksDB notices neither soon: a store whose directory was removed keeps writing its open
//! files, and a full or read-only disk shows only when it next creates a file (a flush, a
//! compaction), possibly minutes later. Until then the process would look healthy while what
//! it keeps could not survive it. So every [`CHECK_EVERY`] the watch checks that the directory
//! is still the one it locked and that a file can be written and synced in it. On the first
//! failure `/health` answers 503 with the reason, the processor stops (the engines commit what
//! they did: their changelogs are the truth), and `processor run` exits 1 with one line. A
//! restart rebuilds whatever the directory lost from the changelogs.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

/// How often a running processor checks its state directory.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

/// A check that has not finished after this long counts as failed (a hung disk).
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// The file the check writes, syncs and removes.
const PROBE: &str = ".write-check";

/// A state directory, locked by this process.
#[derive(Debug)]
pub struct StateDir {
    path: PathBuf,
    _lock: File,
    /// The directory's device and inode when it was locked: a directory removed and made
    /// again at the same path is another directory, without this process's stores.
    identity: (u64, u64),
    /// Why the directory failed its check, once it has.
    failure: OnceLock<String>,
}

impl StateDir {
    /// Creates `path` if needed and locks it; refuses if another process holds it.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(path)
            .with_context(|| format!("cannot create state dir {}", path.display()))?;
        let lock = lock(path)?;
        let metadata = std::fs::metadata(path)
            .with_context(|| format!("cannot read state dir {}", path.display()))?;
        Ok(Self {
            path: path.to_owned(),
            _lock: lock,
            identity: (metadata.dev(), metadata.ino()),
            failure: OnceLock::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The instance id stored in the directory (made on first start), so that a restarted
    /// instance keeps its transactional id and fences its predecessor.
    pub fn instance_id(&self) -> anyhow::Result<String> {
        let path = self.path.join("instance.id");
        if let Ok(id) = std::fs::read_to_string(&path) {
            let id = id.trim();
            if !id.is_empty() {
                return Ok(id.to_owned());
            }
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let id = format!("{:x}", nanos ^ (u128::from(std::process::id()) << 64));
        std::fs::write(&path, &id).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(id)
    }

    /// Why the directory failed its check, if it has (what `/health` answers then).
    pub fn failure(&self) -> Option<&str> {
        self.failure.get().map(String::as_str)
    }

    /// Whether the directory is still the one locked, and writable: `Err` says what is wrong.
    pub fn check(&self) -> Result<(), String> {
        let metadata = match std::fs::metadata(&self.path) {
            Ok(metadata) => metadata,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err("is gone".to_owned());
            }
            Err(error) => return Err(format!("cannot be read: {error}")),
        };
        if !metadata.is_dir() {
            return Err("is no longer a directory".to_owned());
        }
        if (metadata.dev(), metadata.ino()) != self.identity {
            return Err("was removed (another directory is at its path now)".to_owned());
        }
        let probe = self.path.join(PROBE);
        let written = File::create(&probe)
            .and_then(|mut file| {
                std::io::Write::write_all(&mut file, b"ok")?;
                file.sync_all()
            })
            .and_then(|()| std::fs::remove_file(&probe));
        written.map_err(|error| format!("cannot be written: {error}"))
    }
}

/// One process per state directory: a second one would corrupt the stores.
pub fn lock(dir: &Path) -> anyhow::Result<File> {
    let path = dir.join(".lock");
    let file = File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
    file.try_lock().map_err(|_| {
        anyhow::anyhow!(
            "state dir {} is in use by another processor; give each instance its own --state-dir",
            dir.display()
        )
    })?;
    Ok(file)
}

/// Checks `dir` every `every` until `shutdown`. On the first failure it records it (for
/// `/health`), cancels `shutdown` and returns the error `processor run` exits with.
pub async fn watch(
    dir: Arc<StateDir>,
    every: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = ticks.tick() => {}
        }
        let checked = tokio::task::spawn_blocking({
            let dir = dir.clone();
            move || dir.check()
        });
        let verdict = match tokio::time::timeout(CHECK_TIMEOUT, checked).await {
            Ok(Ok(verdict)) => verdict,
            Ok(Err(panic)) => Err(format!("could not be checked: {panic}")),
            Err(_) => Err(format!(
                "did not answer a write within {}",
                humantime::format_duration(CHECK_TIMEOUT)
            )),
        };
        if let Err(why) = verdict {
            let why = format!("state dir {} {why}", dir.path.display());
            let _ = dir.failure.set(why.clone());
            shutdown.cancel();
            anyhow::bail!("{why}; stopping (a restart rebuilds the stores from the changelogs)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_healthy_dir_passes_and_leaves_no_probe_behind() {
        let root = tempfile::tempdir().expect("a temp dir");
        let dir = StateDir::open(&root.path().join("app")).expect("opens");
        assert_eq!(dir.check(), Ok(()));
        assert!(!dir.path().join(PROBE).exists());
    }

    #[test]
    fn a_second_process_on_the_dir_is_refused() {
        let root = tempfile::tempdir().expect("a temp dir");
        let _held = StateDir::open(root.path()).expect("opens");
        let error = StateDir::open(root.path()).expect_err("locked").to_string();
        assert!(error.contains("is in use by another processor"), "{error}");
    }

    #[test]
    fn a_removed_dir_is_gone_and_one_made_again_is_another() {
        let root = tempfile::tempdir().expect("a temp dir");
        let path = root.path().join("app");
        let dir = StateDir::open(&path).expect("opens");
        std::fs::remove_dir_all(&path).expect("removed");
        assert_eq!(dir.check(), Err("is gone".to_owned()));
        std::fs::create_dir(&path).expect("made again");
        assert!(
            dir.check()
                .expect_err("another dir")
                .contains("was removed")
        );
        std::fs::remove_dir(&path).expect("removed");
        std::fs::write(&path, b"").expect("a file in its place");
        assert_eq!(dir.check(), Err("is no longer a directory".to_owned()));
    }

    #[test]
    fn the_instance_id_is_kept_across_opens() {
        let root = tempfile::tempdir().expect("a temp dir");
        let first = StateDir::open(root.path()).expect("opens");
        let id = first.instance_id().expect("made");
        drop(first);
        let again = StateDir::open(root.path()).expect("opens again");
        assert_eq!(again.instance_id().expect("read"), id);
    }

    #[tokio::test]
    async fn the_watch_records_the_failure_and_stops_the_processor() {
        let root = tempfile::tempdir().expect("a temp dir");
        let path = root.path().join("app");
        let dir = Arc::new(StateDir::open(&path).expect("opens"));
        let shutdown = CancellationToken::new();
        let watching = tokio::spawn(watch(
            dir.clone(),
            Duration::from_millis(20),
            shutdown.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!watching.is_finished() && dir.failure().is_none());
        std::fs::remove_dir_all(&path).expect("removed");
        let error = watching.await.expect("no panic").expect_err("failed");
        assert!(shutdown.is_cancelled());
        let expected = format!("state dir {} is gone", path.display());
        assert_eq!(dir.failure(), Some(expected.as_str()));
        assert_eq!(
            error.to_string(),
            format!("{expected}; stopping (a restart rebuilds the stores from the changelogs)")
        );
    }
}
