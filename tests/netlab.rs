//! The network lab end to end: `treecast swarm --net` as a user runs it,
//! 16 peer processes each in its own network namespace behind a capped,
//! delayed, lossy link (`tests/netlab/ci.toml`), and what the lab must
//! refuse. The swarm joins all at once; offload is measured over 50 s
//! after a 20 s warm-up in which the tree finds out who can feed whom
//! (stalls count from the first second). Needs root (CI runs as root); without it the swarm test fails,
//! it does not skip.

#[path = "support/lab.rs"]
mod lab;

use std::path::Path;
use std::process::{Command, Output};

use lab::{namespaces_of, swarm_report};

const EXE: &str = env!("CARGO_BIN_EXE_treecast");

fn swarm(args: &[&str]) -> Output {
    Command::new(EXE)
        .arg("swarm")
        .args(args)
        .output()
        .expect("run treecast swarm")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn sixteen_peers_on_capped_delayed_links_play_without_stalls_near_the_limit() {
    let profile = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/netlab/ci.toml");
    let (report, pid, _logs) = swarm_report(
        EXE,
        &profile,
        &["--peers", "16", "--warmup", "20", "--duration", "50"],
    );
    let f = |k: &str| {
        report[k]
            .as_f64()
            .unwrap_or_else(|| panic!("{k} in the report"))
    };

    // The links were real: 16 of them, each peer's upload on the wire
    // within its cap, and traffic went over them.
    let links = report["network"]["links"]
        .as_array()
        .expect("network.links");
    assert_eq!(links.len(), 16);
    let mut uploaded = 0.0;
    for l in links {
        let cap = l["upload_kbps"].as_f64().expect("cap");
        let wire = l["upload_kbps_measured"].as_f64().expect("measured");
        assert!(
            wire <= cap * 1.05,
            "upload {wire} kb/s over a {cap} kb/s cap: {l}"
        );
        uploaded += wire;
    }
    assert!(
        uploaded > f("stream_kbps") * 4.0,
        "peers fed peers over their links"
    );

    // The lab's network kept its promised delays: its emulator, the one
    // thread every packet crosses, was not starved by the peers (when it
    // was, every link slowed at once and the tree fell apart).
    let late = &report["network"]["emulator_lateness"];
    let released = late["released"]
        .as_f64()
        .expect("emulator_lateness.released");
    let over = late["over_100ms"]
        .as_f64()
        .expect("emulator_lateness.over_100ms");
    assert!(released > 10_000.0, "the emulator carried the run: {late}");
    assert!(
        over * 1000.0 <= released,
        "the emulator let {over} of {released} packets go over 100 ms late"
    );

    assert_eq!(f("stalls"), 0.0, "no simulated player stalled");
    assert_eq!(
        f("peer_inferred_stalls"),
        0.0,
        "no peer saw its player stall"
    );
    assert_eq!(f("corrupt_served"), 0.0);
    let (offload, limit) = (f("offload_ratio"), f("physical_limit"));
    assert!(
        (0.8..=0.9).contains(&limit),
        "limit {limit}: 1 - 2 root slots / 16, the links can feed everyone"
    );
    assert!(
        offload >= limit - 0.05,
        "offload {offload} not within 0.05 of the physical limit {limit}"
    );

    // Everything the lab made is gone with it.
    assert_eq!(namespaces_of(pid), Vec::<String>::new());
}

#[test]
fn a_bad_profile_is_refused_with_its_key_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[[class]]\nshare = 1\nupload_mbps = 5\ndownload_mbps = 50\nrtt_ms = -20\n",
    )
    .expect("write");
    let out = swarm(&["--net", path.to_str().expect("utf-8 path")]);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(e.contains("line 5") && e.contains("rtt_ms"), "{e}");

    std::fs::write(&path, "[[class]]\nshare = 1\nupload = 5\n").expect("write");
    let out = swarm(&["--net", path.to_str().expect("utf-8 path")]);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(e.contains("upload") && e.contains("line 3"), "{e}");

    let out = swarm(&["--net", "no-such-profile"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("lan, residential, mobile-heavy"));
}

#[test]
fn without_root_the_lab_says_so_in_one_line() {
    // `setpriv` (util-linux) drops to the nobody user for one command.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", EXE])
        .args(["swarm", "--net", "lan", "--peers", "2"])
        .output()
        .expect("run setpriv");
    assert!(!out.status.success());
    let e = stderr(&out);
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    assert!(e.contains("needs root"), "{e}");
}

#[test]
fn a_killed_run_is_cleaned_by_the_next() {
    // A namespace named for a process that no longer exists is what a
    // SIGKILLed lab leaves behind; the next lab start removes it.
    let mut gone = Command::new("true").spawn().expect("spawn");
    let dead = gone.id();
    gone.wait().expect("reaped");
    let stale = format!("tcl{dead}-p0");
    let made = Command::new("ip")
        .args(["netns", "add", &stale])
        .status()
        .expect("ip netns add");
    assert!(made.success(), "root and iproute2 are needed");
    let out = swarm(&["--net", "lan", "--peers", "1", "--duration", "1", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let left = namespaces_of(dead);
    if !left.is_empty() {
        let _ = Command::new("ip").args(["netns", "del", &stale]).status();
    }
    assert_eq!(
        left,
        Vec::<String>::new(),
        "the stale namespace was removed"
    );
}
