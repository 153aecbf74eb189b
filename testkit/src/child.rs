//! Child processes: the workspace's binaries started by tests and benchmarks (a processor to
//! kill with SIGKILL, to freeze with SIGSTOP, to stop with SIGTERM and watch exit; a second
//! instance), killed and reaped when dropped so that a failing test leaves nothing running
//! (or stopped) behind it.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A binary of this workspace, built by the same cargo invocation as the running test or
/// example: `target/<profile>/<name>`, next to `deps/` and `examples/`, where test and example
/// executables live. (An integration test of the crate that defines the binary may prefer
/// `env!("CARGO_BIN_EXE_<name>")`.)
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the running executable's path");
    exe.parent()
        .and_then(Path::parent)
        .expect("the executable lives in target/<profile>/<dir>/")
        .join(name)
}

/// Where a child's standard error goes (its standard output is discarded).
#[derive(Debug, Clone, Copy)]
pub enum Stderr<'a> {
    /// To this process's standard error.
    Inherit,
    /// Nowhere.
    Null,
    /// To a file, created or truncated.
    File(&'a Path),
    /// Kept line by line (see [`ChildProcess::log_lines`]), and echoed to this process's
    /// standard error after `[prefix] `.
    Capture(&'a str),
}

/// A child process; dropping it kills (SIGKILL) and reaps it.
#[derive(Debug)]
pub struct ChildProcess {
    child: Child,
    /// Its standard error lines so far, with [`Stderr::Capture`].
    log: Arc<Mutex<Vec<String>>>,
    /// Its exit status, once it has been seen.
    exited: Option<ExitStatus>,
}

impl ChildProcess {
    /// Starts `program` with `args` and the extra environment variables `env`.
    pub fn spawn<S: AsRef<OsStr>>(
        program: &Path,
        args: &[S],
        env: &[(&str, &str)],
        stderr: Stderr<'_>,
    ) -> Self {
        let capture = match stderr {
            Stderr::Capture(prefix) => Some(prefix.to_owned()),
            _ => None,
        };
        let stderr = match stderr {
            Stderr::Capture(_) => Stdio::piped(),
            Stderr::Inherit => Stdio::inherit(),
            Stderr::Null => Stdio::null(),
            Stderr::File(path) => Stdio::from(
                std::fs::File::create(path)
                    .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display())),
            ),
        };
        let mut child = Command::new(program)
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        let log = Arc::new(Mutex::new(Vec::new()));
        if let Some(prefix) = capture {
            let stderr = child.stderr.take().expect("invariant: stderr is piped");
            let lines = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    eprintln!("[{prefix}] {line}");
                    lines.lock().expect("the log lock").push(line);
                }
            });
        }
        Self {
            child,
            log,
            exited: None,
        }
    }

    /// The child's process id (to read its CPU time and memory from /proc).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (a name kill(1) knows: `STOP`, `CONT`, `TERM`, `KILL`...).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args(["-s", signal, &self.id().to_string()])
            .status()
            .expect("kill(1) runs");
        assert!(status.success(), "kill -s {signal} {} failed", self.id());
    }

    /// Its exit status, if it has ended.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().expect("the child's status");
        }
        self.exited
    }

    /// Waits up to `deadline` for it to end: its exit status, or `None` if it is still running.
    pub async fn wait_exit(&mut self, deadline: Duration) -> Option<ExitStatus> {
        let started = Instant::now();
        while started.elapsed() < deadline {
            if let Some(status) = self.exit_status() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.exit_status()
    }

    /// The standard error lines so far that contain `needle` (none unless started with
    /// [`Stderr::Capture`]).
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.log
            .lock()
            .expect("the log lock")
            .iter()
            .filter(|line| line.contains(needle))
            .cloned()
            .collect()
    }

    /// SIGKILL: no chance to commit, flush or leave a group. Waits until it is gone.
    pub fn kill(mut self) {
        self.kill_and_reap();
    }

    fn kill_and_reap(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_is_killed_and_reaped() {
        let child = ChildProcess::spawn(Path::new("sleep"), &["30"], &[], Stderr::Null);
        let pid = child.id();
        assert!(Path::new(&format!("/proc/{pid}")).exists());
        child.kill();
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "reaped");
    }

    #[tokio::test]
    async fn signals_exit_statuses_and_captured_lines() {
        let script = "echo one >&2; echo two >&2; sleep 30";
        let mut child =
            ChildProcess::spawn(Path::new("sh"), &["-c", script], &[], Stderr::Capture("sh"));
        let started = Instant::now();
        while child.log_lines("two").is_empty() {
            assert!(started.elapsed() < Duration::from_secs(10), "two lines");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(child.log_lines("o"), ["one", "two"]);
        assert_eq!(child.exit_status(), None);
        child.signal("TERM");
        let status = child.wait_exit(Duration::from_secs(10)).await;
        assert!(status.is_some_and(|s| !s.success()), "{status:?}");
    }
}
