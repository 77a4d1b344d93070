//! Offices in the network lab (`tests/netlab/sites.toml`): a site of 4
//! peers behind a cone NAT, one of 3 behind a symmetric NAT
//! (`masquerade fully-random`), one of 3 whose firewall lets no UDP out,
//! each on its own capped WAN link behind a
//! router that drops what arrives unsolicited, and 2 public peers on
//! uplinks that carry one stream each (so someone off the sites needs a
//! parent inside one). Nobody
//! names a site: the edge recognises each from the address it sees and
//! the LAN address the peer gives. Every player plays without a stall;
//! each office pulls about one copy over its WAN link and shares it over
//! its LAN. The cone office also feeds peers elsewhere: they reach its
//! peers through its NAT by a simultaneous open (the edge observed their
//! address, the tracker had them punch), and every such dial succeeds.
//! The symmetric office's peers saw two different mappings from the
//! edge's two ports, so nobody is sent to dial them, and next to nothing
//! leaves that office. The office without UDP is fed by one HTTP copy:
//! one peer (its leader) takes the stream from the edge over HTTP and the
//! others take it from the leader over the LAN. Needs root (CI runs as root) and nftables
//! (`.ci/run` installs it); fails, never skips.

#[path = "support/lab.rs"]
mod lab;

use std::path::Path;

use lab::{namespaces_of, swarm_report};

const EXE: &str = env!("CARGO_BIN_EXE_treecast");

#[test]
fn offices_pull_one_copy_each_and_peers_elsewhere_reach_the_cone_office_directly() {
    let profile = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/netlab/sites.toml");
    let (report, pid, _logs) = swarm_report(
        EXE,
        &profile,
        &["--peers", "12", "--warmup", "20", "--duration", "40"],
    );
    assert_eq!(report["stalls"].as_f64(), Some(0.0), "no player stalled");
    assert_eq!(report["corrupt_served"].as_f64(), Some(0.0));
    let sites = report["network"]["sites"]
        .as_array()
        .expect("network.sites");
    assert_eq!(sites.len(), 3);
    for s in sites {
        let name = s["site"].as_str().unwrap_or("?");
        let down = s["wan_streams"].as_f64().expect("wan_streams");
        let up = s["wan_up_streams"].as_f64().expect("wan_up_streams");
        assert!(
            (0.8..=1.5).contains(&down),
            "{name}: {down} streams entered over its WAN link, not about one: {s}"
        );
        if s["nat"] != "cone" {
            assert!(
                up < 0.3,
                "{name}: {up} streams left the site: someone was fed through its NAT: {s}"
            );
        }
        assert_eq!(s["stalls"].as_u64(), Some(0), "{s}");
        // Only the leader of the site without UDP takes the stream over
        // HTTP; everyone else is fed by the tree.
        let leaders = if s["nat"] == "udp-blocked" { 1 } else { 0 };
        assert_eq!(s["peers_on_fallback"].as_u64(), Some(leaders), "{s}");
    }
    let pairs = report["network"]["direct_connection_success"]
        .as_array()
        .expect("network.direct_connection_success");
    let to_cone: Vec<_> = pairs.iter().filter(|p| p["parent"] == "cone").collect();
    let attempts: u64 = to_cone.iter().filter_map(|p| p["attempts"].as_u64()).sum();
    let reached: u64 = to_cone.iter().filter_map(|p| p["reached"].as_u64()).sum();
    assert!(
        attempts >= 1,
        "nobody outside the cone office was sent to one of its peers: {pairs:?}"
    );
    assert!(
        reached as f64 >= 0.95 * attempts as f64,
        "{reached} of {attempts} dials through the cone NAT got in: {pairs:?}"
    );
    assert!(
        pairs.iter().all(|p| p["parent"] != "symmetric"),
        "a peer was sent to dial through the symmetric NAT: {pairs:?}"
    );
    // Everything the lab made is gone with it.
    assert_eq!(namespaces_of(pid), Vec::<String>::new());
}
