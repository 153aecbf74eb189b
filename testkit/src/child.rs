//! Child processes: the workspace's binaries started by tests and benchmarks (a processor to
//! kill with SIGKILL, a second instance), killed and reaped when dropped so that a failing
//! test leaves nothing running behind it.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

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
}

/// A running child process; dropping it kills (SIGKILL) and reaps it.
#[derive(Debug)]
pub struct ChildProcess {
    child: Child,
}

impl ChildProcess {
    /// Starts `program` with `args` and the extra environment variables `env`.
    pub fn spawn<S: AsRef<OsStr>>(
        program: &Path,
        args: &[S],
        env: &[(&str, &str)],
        stderr: Stderr<'_>,
    ) -> Self {
        let stderr = match stderr {
            Stderr::Inherit => Stdio::inherit(),
            Stderr::Null => Stdio::null(),
            Stderr::File(path) => Stdio::from(
                std::fs::File::create(path)
                    .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display())),
            ),
        };
        let child = Command::new(program)
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        Self { child }
    }

    /// The child's process id (to read its CPU time and memory from /proc).
    pub fn id(&self) -> u32 {
        self.child.id()
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
}
