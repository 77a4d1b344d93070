//! Shared by the network lab's tests (included with `#[path]`): a
//! `treecast swarm --net` run as a user runs it, and what it left behind.

use std::path::Path;
use std::process::Command;

/// A run's work directory (its peers' logs): removed when the test
/// passes, kept and named on stderr when it fails, so that a failure seen
/// once in CI can be read afterwards.
pub struct WorkDir(Option<tempfile::TempDir>);

impl WorkDir {
    fn path(&self) -> &Path {
        self.0.as_ref().expect("taken only when dropped").path()
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let (true, Some(dir)) = (std::thread::panicking(), self.0.take()) {
            eprintln!("the run's work directory, kept: {}", dir.keep().display());
        }
    }
}

/// Runs `exe swarm --net PROFILE ARGS --json` in a fresh work directory;
/// fails the test unless it succeeds. Returns its JSON report, the
/// harness's pid (its namespaces are named for it) and the work
/// directory, to hold until the test's last assertion.
pub fn swarm_report(exe: &str, profile: &Path, args: &[&str]) -> (serde_json::Value, u32, WorkDir) {
    let dir = WorkDir(Some(
        tempfile::Builder::new()
            .prefix("treecast-netlab-")
            .tempdir()
            .expect("tempdir"),
    ));
    let child = Command::new(exe)
        .args(["swarm", "--net"])
        .arg(profile)
        .args(args)
        .arg("--json")
        .arg("--work-dir")
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start treecast swarm --net");
    let pid = child.id();
    let out = child.wait_with_output().expect("swarm ran");
    assert!(
        out.status.success(),
        "the lab run failed (it needs root and the kernel's netns, tc and NFQUEUE, and nft for sites):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("a JSON report on stdout");
    eprintln!("{}", serde_json::to_string_pretty(&report).expect("json"));
    (report, pid, dir)
}

/// Lab namespaces owned by process `pid`.
pub fn namespaces_of(pid: u32) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with(&format!("tcl{pid}-")))
                .collect()
        })
        .unwrap_or_default()
}
