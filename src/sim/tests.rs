//! The simulator's own checks: it repeats with its seed, counts every
//! byte once, and its model reacts to what it models.

use super::*;

fn small(seed: u64) -> SimConfig {
    let mut c = SimConfig::event(2_000, 10.0, seed, None);
    c.sessions = Sessions::Event {
        flash: 1_000,
        flash_ms: 60_000,
        ramp_ms: 120_000,
        shape: 0.5,
        mean_ms: 4.0 * 60_000.0,
        replace_ms: 10_000.0,
        departure_ms: 60_000,
    };
    c
}

#[test]
fn the_same_seed_gives_the_same_report_and_another_seed_another() {
    let a = run(&small(3));
    let b = run(&small(3));
    assert_eq!(a, b);
    let c = run(&small(4));
    assert_ne!(a.timeline, c.timeline);
}

fn churn(viewers: usize, minutes: f64, per_minute: f64) -> SimConfig {
    let mut c = SimConfig::event(viewers, minutes, 1, None);
    c.sessions = Sessions::Churn {
        join_every_ms: 100,
        per_minute,
    };
    c.leaf_only_fraction = 0.0;
    c.corrupt_fraction = 0.0;
    c
}

fn profile(text: &str) -> Option<crate::netlab::profile::Profile> {
    Some(crate::netlab::profile::Profile::parse("test", text).expect("profile"))
}

#[test]
fn every_byte_played_is_counted_once() {
    for config in [small(5), churn(300, 3.0, 0.5)] {
        let r = run(&config);
        let played = r.viewer_hours * 3_600_000.0 * f64::from(r.stream_kbps) / 8.0;
        let counted = (r.bytes_from_tree + r.bytes_from_edge) as f64;
        assert!(
            (counted - played).abs() / played < 0.002,
            "counted {counted} of {played} bytes"
        );
        // The edge's children come from its root slots (a child that has
        // not heard of its move yet may overstay for a heartbeat).
        assert!(
            r.root_streams <= f64::from(r.root_slots) * 1.05,
            "{} root streams",
            r.root_streams
        );
        assert!(r.edge_streams <= r.root_streams + r.fallback_streams + 1e-6);
    }
}

#[test]
fn a_vanished_parent_is_noticed_by_silence_and_a_leaving_one_at_once() {
    let mut killed = churn(300, 4.0, 0.5);
    killed.kill_fraction = 1.0;
    let mut left = killed.clone();
    left.kill_fraction = 0.0;
    let (k, l) = (run(&killed), run(&left));
    assert!(
        k.repairs > 20 && l.repairs > 20,
        "{} {}",
        k.repairs,
        l.repairs
    );
    // Loopback: silence floor 120 ms plus the switch; a close: the switch.
    assert!(
        (140.0..400.0).contains(&k.repair_ms.p50),
        "kill repair p50 {}",
        k.repair_ms.p50
    );
    assert!(
        l.repair_ms.p50 < 60.0,
        "leave repair p50 {}",
        l.repair_ms.p50
    );
    assert!(k.evictions_silent > 0 && l.evictions_silent == 0);
}

#[test]
fn corrupting_peers_are_caught_and_evicted() {
    // Viewers keep arriving, so corrupting ones keep getting children.
    let mut c = small(8);
    c.corrupt_fraction = 0.0;
    let clean = run(&c);
    assert_eq!((clean.corrupt_detected, clean.evictions_corrupt), (0, 0));
    c.corrupt_fraction = 0.1;
    let r = run(&c);
    assert!(
        r.corrupt_detected > 0 && r.evictions_corrupt > 0,
        "{} {}",
        r.corrupt_detected,
        r.evictions_corrupt
    );
    assert!(r.offload_ratio < clean.offload_ratio);
}

#[test]
fn an_edge_that_cannot_carry_its_fallbacks_stalls_its_players() {
    // Peers that cannot feed anyone: everyone past the root's children
    // is short of stream, and the edge is too small to make up for it.
    let weak = r#"
        description = "uploads too small to forward"
        [edge]
        upload_mbps = 20
        [[class]]
        name = "weak"
        share = 1.0
        upload_mbps = 1
        download_mbps = 100
        rtt_ms = 40
    "#;
    let mut c = churn(100, 3.0, 0.0);
    c.profile = profile(weak);
    let r = run(&c);
    assert!(r.physical_limit < 0.01, "{}", r.physical_limit);
    // The tracker has learnt that no peer can feed another: by the time
    // everyone has joined, nobody is below the edge's own children, and
    // joins are refused (those viewers play from the edge).
    assert!(
        r.depth_at_peak.iter().skip(2).all(|&n| n == 0),
        "{:?}",
        r.depth_at_peak
    );
    assert!(r.join_refused > 0, "{}", r.join_refused);
    assert!(
        r.stalls > 0 && r.rebuffer_ratio > 0.1,
        "{} {}",
        r.stalls,
        r.rebuffer_ratio
    );
    // The same audience on residential links: no stall, most bytes from
    // the tree.
    c.profile = crate::netlab::profile::Profile::load("residential").ok();
    let r = run(&c);
    assert_eq!(r.stalls, 0);
    assert!(r.offload_ratio > 0.8, "{}", r.offload_ratio);
}

#[test]
fn the_plot_shows_the_three_series() {
    let r = run(&small(6));
    let svg = plot::svg(&r);
    assert!(svg.starts_with("<svg"));
    assert_eq!(svg.matches("<polyline").count(), 4);
    assert!(svg.contains("physical limit") && svg.contains("edge streams"));
}
