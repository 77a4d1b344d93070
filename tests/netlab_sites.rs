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

#[path = "support/lab.rs"]
mod lab;

use std::path::Path;

use lab::{namespaces_of, swarm_report};

const EXE: &str = env!("CARGO_BIN_EXE_treecast");

#[test]
fn offices_behind_nats_pull_one_copy_each_and_feed_nobody_outside() {
    let profile = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/netlab/sites.toml");
    let (report, pid) = swarm_report(
        EXE,
        &profile,
        &["--peers", "9", "--warmup", "20", "--duration", "40"],
    );
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
    assert_eq!(namespaces_of(pid), Vec::<String>::new());
}
