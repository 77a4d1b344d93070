//! The delivery tree with real peer processes on loopback: cut-through
//! down a chain, a parent killed mid-segment, a parent that corrupts.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{
    cluster, edge_metric, origin_segment, spawn_streaming, streaming, tree_arrivals, wait_for,
};
use tokio::sync::watch;
use treecast::cluster::PeerOptions;
use treecast::player::play;
use treecast::swarm::Percentiles;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_of_eight_peers_delivers_identical_segments_cut_through() {
    // One child per node: the tracker can only build a chain.
    let (_dir, mut cluster) = cluster(1, 1).await;
    let peers = spawn_streaming(&mut cluster, 8).await;
    let mut depths = Vec::new();
    for p in &peers {
        depths.push(streaming(p).await["depth"].as_u64().expect("depth"));
    }
    assert_eq!(
        depths,
        (1..=8).collect::<Vec<u64>>(),
        "a chain below the edge"
    );

    // Wait until the deepest peer has verified four segments from the tree
    // since the chain was complete.
    let last = &peers[7];
    let first_seq = *tree_arrivals(&last.status().await.expect("status"))
        .keys()
        .last()
        .expect("the deepest peer received a segment");
    let wanted: Vec<u64> = (first_seq + 1..=first_seq + 4).collect();
    wait_for(
        "four more segments at depth 8",
        Duration::from_secs(30),
        || async {
            let a = tree_arrivals(&last.status().await.ok()?);
            wanted.iter().all(|s| a.contains_key(s)).then_some(())
        },
    )
    .await;

    // Byte-identical at the end of the chain, through its local proxy.
    for &seq in &wanted {
        let got = last
            .client()
            .get(
                &format!("/live/demo/{seq}.ts"),
                64 << 20,
                Duration::from_secs(10),
            )
            .await
            .expect("the deepest peer serves the segment");
        assert_eq!(
            got,
            origin_segment(&cluster, seq).await,
            "segment {seq} at depth 8"
        );
    }

    // Cut-through: each depth completes a segment moments after depth 1,
    // not a segment duration (2 s) per hop.
    let arrivals: Vec<BTreeMap<u64, u64>> = {
        let mut v = Vec::new();
        for p in &peers {
            v.push(tree_arrivals(&p.status().await.expect("status")));
        }
        v
    };
    let mut report = Vec::new();
    for (depth, a) in arrivals.iter().enumerate().skip(1) {
        let mut lags: Vec<f64> = wanted
            .iter()
            .filter_map(|s| Some(a.get(s)?.saturating_sub(*arrivals[0].get(s)?) as f64))
            .collect();
        assert_eq!(
            lags.len(),
            wanted.len(),
            "depth {} has every segment",
            depth + 1
        );
        let p = Percentiles::of(&mut lags);
        report.push(format!(
            "depth {}: p50 {} ms, p95 {} ms",
            depth + 1,
            p.p50,
            p.p95
        ));
        assert!(
            p.p95 < 500.0,
            "depth {} completes {} ms after depth 1: not cut-through",
            depth + 1,
            p.p95
        );
    }
    eprintln!("lag behind depth 1 per depth:\n  {}", report.join("\n  "));
    for mut p in peers {
        p.terminate().await;
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_parent_mid_segment_costs_its_children_no_stall() {
    // Edge → A → {B, C}; D joins under B or C and has the other as backup.
    let (_dir, mut cluster) = cluster(1, 2).await;
    let mut peers = spawn_streaming(&mut cluster, 4).await;
    let d = peers.pop().expect("D");
    let sd = streaming(&d).await;
    assert_eq!(sd["depth"], 3, "{sd}");
    assert!(
        sd["backup"]["kind"].is_string(),
        "D has a warm backup: {sd}"
    );
    let parent_id = sd["parent"]["id"].as_u64().expect("parent id");
    let mut parent = None;
    for p in peers.drain(..) {
        if p.status().await.expect("status")["peer_id"].as_u64() == Some(parent_id) {
            parent = Some(p);
        }
    }
    let mut parent = parent.expect("D's parent is one of ours");

    // A player on D, playing from before the kill to well after it.
    let (stop, rx) = watch::channel(false);
    let (progress, mut played) = watch::channel(0);
    let player = tokio::spawn(play(d.client(), "demo".into(), d.started, rx, progress));
    wait_for("D's player to start", Duration::from_secs(20), || async {
        let s = d.status().await.ok()?;
        (s["playlist_last"].as_u64()? > s["playlist_first"].as_u64()?).then_some(())
    })
    .await;
    // Mid-segment: half a second after a segment completed at D.
    let seen = tree_arrivals(&d.status().await.expect("status")).len();
    wait_for("the next segment at D", Duration::from_secs(10), || async {
        (tree_arrivals(&d.status().await.ok()?).len() > seen).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    parent.kill().await;

    let after = wait_for(
        "D to stream from a new parent",
        Duration::from_secs(10),
        || async {
            let s = d.status().await.ok()?;
            (s["connected"] == true && s["parent"]["id"].as_u64()? != parent_id).then_some(s)
        },
    )
    .await;
    let repair = after["repairs_ms"][0].as_u64().expect("repair recorded");
    // Keep playing across several segments on the new parent.
    let seq_now = tree_arrivals(&after).keys().last().copied().unwrap_or(0);
    tokio::time::timeout(
        Duration::from_secs(20),
        played.wait_for(|&last| last >= seq_now + 2),
    )
    .await
    .expect("the player plays two segments past the repair in time")
    .expect("player running");
    let _ = stop.send(true);
    let report = player.await.expect("player");
    eprintln!(
        "repair after SIGKILL of the parent: {repair} ms; player: {} stalls, {} segments",
        report.playback.stalls,
        report.segments.len()
    );
    assert_eq!(
        report.playback.stalls, 0,
        "no stall across the parent's death"
    );
    let last_played = report.segments.keys().last().copied().unwrap_or(0);
    let final_status = d.status().await.expect("status");
    assert!(
        last_played > seq_now,
        "played on after the repair: last played {last_played}, newest at repair {seq_now}, played {:?}, player errors {}, D now {final_status}",
        report.segments.keys().collect::<Vec<_>>(),
        report.errors
    );
    assert!(repair < 2000, "repair took {repair} ms");
    for (seq, hash) in &report.segments {
        if let Ok(b) = cluster
            .origin_client()
            .get(
                &format!("/live/demo/{seq}.ts"),
                64 << 20,
                Duration::from_secs(5),
            )
            .await
        {
            assert_eq!(
                *hash,
                blake3::hash(&b),
                "segment {seq} as the origin cut it"
            );
        }
    }
    d.terminate_owned().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_that_corrupts_is_detected_evicted_and_never_reaches_the_player() {
    // Edge → T (tampers with every 3rd segment it forwards) → V.
    let (_dir, mut cluster) = cluster(1, 2).await;
    let t = cluster
        .spawn_peer(PeerOptions {
            tamper_every: Some(3),
            ..PeerOptions::default()
        })
        .await
        .expect("tampering peer");
    streaming(&t).await;
    let t_id = t.status().await.expect("status")["peer_id"].as_u64();
    let v = cluster
        .spawn_peer(PeerOptions::default())
        .await
        .expect("viewer");
    // V can only be placed below T (the edge's one slot is T's); T's
    // backfill already holds a tampered segment, so V may have moved on
    // by the time it is first asked.

    let (stop, rx) = watch::channel(false);
    let (progress, mut played) = watch::channel(0);
    let player = tokio::spawn(play(v.client(), "demo".into(), v.started, rx, progress));
    let s = wait_for(
        "V to catch a corrupt segment and move",
        Duration::from_secs(30),
        || async {
            let s = v.status().await.ok()?;
            (s["corrupt"].as_u64()? >= 1
                && s["connected"] == true
                && s["parent"]["id"].as_u64() != t_id)
                .then_some(s)
        },
    )
    .await;
    wait_for("the edge to evict T", Duration::from_secs(10), || async {
        (edge_metric(
            &cluster,
            "treecast_edge_tree_evictions_total{channel=\"demo\",reason=\"corrupt\"}",
        )
        .await
            >= 1.0)
            .then_some(())
    })
    .await;
    // Play on a few segments from the new parent.
    let last = s["live_last"].as_u64().expect("live");
    tokio::time::timeout(Duration::from_secs(20), played.wait_for(|&p| p >= last + 2))
        .await
        .expect("V's player plays on in time")
        .expect("player running");
    let _ = stop.send(true);
    let report = player.await.expect("player");
    assert_eq!(report.playback.stalls, 0, "no stall");
    let mut checked = 0;
    for (seq, hash) in &report.segments {
        let b = origin_segment(&cluster, *seq).await;
        assert_eq!(
            *hash,
            blake3::hash(&b),
            "the player got segment {seq} unaltered"
        );
        checked += 1;
    }
    assert!(checked >= 4, "played {checked} segments");
    eprintln!(
        "corrupt segments detected at V: {}; player got {checked} segments, all as the origin signed them",
        s["corrupt"]
    );
    v.terminate_owned().await;
    t.terminate_owned().await;
    cluster.shutdown().await;
}
