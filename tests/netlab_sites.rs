//! Offices in the network lab (`tests/netlab/sites.toml`): a site of 4
//! peers behind a cone NAT, one of 3 behind a symmetric NAT
//! (`masquerade fully-random`), each on its own capped WAN link, and 2
//! public peers. Nobody names a site: the edge recognises each from the
//! address it sees and the LAN address the peer gives. Every player plays
//! without a stall; each office pulls about one copy over its WAN link and
//! shares it over its LAN; and no peer outside an office is fed by a peer
//! inside one (nothing needs an inbound connection through a NAT), which
//! shows as next to nothing leaving the offices. Needs root (CI runs as
//! root) and nftables (`.ci/run` installs it); fails, never skips.

use std::path::Path;
use std::process::Command;

const EXE: &str = env!("CARGO_BIN_EXE_treecast");

#[test]
fn offices_behind_nats_pull_one_copy_each_and_feed_nobody_outside() {
    let dir = tempfile::Builder::new()
        .prefix("treecast-sites-")
        .tempdir()
        .expect("tempdir");
    let profile = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/netlab/sites.toml");
    let child = Command::new(EXE)
        .args(["swarm", "--net"])
        .arg(&profile)
        .args([
            "--peers",
            "9",
            "--warmup",
            "20",
            "--duration",
            "40",
            "--json",
        ])
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
        "the lab run failed (it needs root, netns, tc, NFQUEUE and nft):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("a JSON report on stdout");
    eprintln!("{}", serde_json::to_string_pretty(&report).expect("json"));
    assert_eq!(report["stalls"].as_f64(), Some(0.0), "no player stalled");
    assert_eq!(report["corrupt_served"].as_f64(), Some(0.0));
    let sites = report["network"]["sites"]
        .as_array()
        .expect("network.sites");
    assert_eq!(sites.len(), 2);
    for s in sites {
        let name = s["site"].as_str().unwrap_or("?");
        let down = s["wan_streams"].as_f64().expect("wan_streams");
        let up = s["wan_up_streams"].as_f64().expect("wan_up_streams");
        assert!(
            (0.8..=1.5).contains(&down),
            "{name}: {down} streams entered over its WAN link, not about one: {s}"
        );
        assert!(
            up < 0.3,
            "{name}: {up} streams left the site: a peer outside was fed through its NAT: {s}"
        );
        assert_eq!(s["stalls"].as_u64(), Some(0), "{s}");
        assert_eq!(s["peers_on_fallback"].as_u64(), Some(0), "{s}");
    }
    // Everything the lab made is gone with it.
    let left: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with(&format!("tcl{pid}-")))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}
