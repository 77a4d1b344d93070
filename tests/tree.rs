//! The delivery tree with real peer processes on loopback: cut-through
//! down a chain, a parent killed mid-segment, a parent that corrupts.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{
    cluster, edge_metric, kill_parent_mid_segment, origin_segment, play_through, spawn_streaming,
    streaming, tree_arrivals, wait_for,
};
use tokio::sync::watch;
use treecast::cluster::PeerOptions;
use treecast::player::play;
use treecast::swarm::{OriginDigests, Percentiles};
use treecast_peer::shared::Source;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_of_eight_peers_delivers_identical_segments_cut_through() {
    // One child per node: the tracker can only build a chain.
    let (_dir, mut cluster) = cluster(1, 1).await;
    let peers = spawn_streaming(&mut cluster, 8).await;
    let mut depths = Vec::new();
    for p in &peers {
        depths.push(u64::from(streaming(p).await.depth));
    }
    assert_eq!(
        depths,
        (1..=8).collect::<Vec<u64>>(),
        "a chain below the edge"
    );

    // Wait until the deepest peer has verified four segments from the tree
    // since the chain was complete.
    let last = &peers[7];
    // Placed is not yet fed: wait for its first segment from the tree.
    let first_seq = wait_for(
        "a first segment from the tree at depth 8",
        Duration::from_secs(30),
        || async {
            tree_arrivals(&last.status().await.ok()?)
                .keys()
                .last()
                .copied()
        },
    )
    .await;
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
    // Edge → {A, B}; C joins under one of them and has the other, a peer,
    // as its warm backup.
    let (_dir, mut cluster) = cluster(2, 2).await;
    let mut peers = spawn_streaming(&mut cluster, 3).await;
    let c = peers.pop().expect("C");
    let sc = streaming(&c).await;
    assert_eq!(sc.depth, 2, "{sc:?}");
    // The edge may be named until the other depth-1 peer may take
    // children; the next heartbeat names that peer.
    wait_for(
        "C's warm backup to be a peer",
        Duration::from_secs(10),
        || async {
            let s = c.status().await.ok()?;
            (s.backup.as_ref()?.kind == "peer").then_some(())
        },
    )
    .await;

    // A player on C, playing from before the kill to well after it, and
    // the origin's signed digests recorded all along.
    let (stop, rx) = watch::channel(false);
    let (progress, mut played) = watch::channel(0);
    let player = tokio::spawn(play(c.client(), "demo".into(), c.started, rx, progress));
    let mut digests = OriginDigests::default();
    wait_for("C's player to start", Duration::from_secs(20), || async {
        let s = c.status().await.ok()?;
        (s.playlist_last? > s.playlist_first?).then_some(())
    })
    .await;
    digests.record(&cluster).await;
    // Mid-segment: C holds part of a segment from its parent, not all.
    let (held, after) = kill_parent_mid_segment(&c, &mut peers).await;
    let new_parent = after.parent.clone().expect("new parent");
    assert_eq!(
        new_parent.kind, "peer",
        "C moved to a peer, not the edge: {new_parent:?}"
    );
    let repair = *after.repairs_ms.first().expect("repair recorded");
    // Keep playing across several segments on the new parent.
    let seq_now = tree_arrivals(&after).keys().last().copied().unwrap_or(0);
    play_through(
        &cluster,
        &mut digests,
        &mut played,
        seq_now + 2,
        "the player plays two segments past the repair",
    )
    .await;
    let _ = stop.send(true);
    let report = player.await.expect("player");
    let end = c.status().await.expect("status");
    eprintln!(
        "SIGKILL of the parent while C held {} bytes of segment {}: repair {repair} ms; \
         player: {} stalls, {} segments; C: {} fallbacks, {} proxy waits, {} inferred stalls, \
         {} segments resumed ({} bytes not sent again)",
        held.bytes,
        held.seq,
        report.playback.stalls,
        report.segments.len(),
        end.fallbacks,
        end.proxy_waits,
        end.viewer.inferred.stalls,
        end.segments_resumed,
        end.resumed_bytes
    );
    assert_eq!(
        report.playback.stalls, 0,
        "no stall across the parent's death"
    );
    assert_eq!(end.viewer.inferred.stalls, 0, "nor as C inferred it");
    assert_eq!(end.fallbacks, 0, "the tree delivered everything in time");
    assert!(
        end.recent
            .iter()
            .any(|v| v.seq == held.seq && v.source == Source::Tree),
        "the segment in flight at the kill came through the tree"
    );
    // ... and the new parent sent only the rest of it.
    assert!(
        end.segments_resumed >= 1 && end.resumed_bytes >= held.bytes,
        "the new parent resumed segment {} from C's {} bytes: {} segments resumed, {} bytes",
        held.seq,
        held.bytes,
        end.segments_resumed,
        end.resumed_bytes
    );
    let last_played = report.segments.keys().last().copied().unwrap_or(0);
    assert!(
        last_played > seq_now,
        "played on after the repair: last played {last_played}, newest at repair {seq_now}"
    );
    assert!(repair < 2000, "repair took {repair} ms");
    let (bad, unchecked) = digests.check(std::slice::from_ref(&report));
    assert_eq!(
        (bad, unchecked),
        (0, 0),
        "every segment played has the origin's signed digest"
    );
    c.terminate_owned().await;
    for p in peers {
        p.terminate_owned().await;
    }
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
    let t_id = t.status().await.expect("status").peer_id;
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
    // The origin's digests are read from its playlist while it still lists
    // them: from the player's first segment on, through the wait.
    let digests = tokio::sync::Mutex::new(OriginDigests::default());
    let s = wait_for(
        "V to catch a corrupt segment and move",
        Duration::from_secs(30),
        || async {
            digests.lock().await.record(&cluster).await;
            let s = v.status().await.ok()?;
            (s.corrupt >= 1 && s.connected && s.parent.as_ref()?.id != t_id).then_some(s)
        },
    )
    .await;
    let mut digests = digests.into_inner();
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
    let last = s.live_last.expect("live");
    play_through(
        &cluster,
        &mut digests,
        &mut played,
        last + 2,
        "V's player plays on",
    )
    .await;
    let _ = stop.send(true);
    let report = player.await.expect("player");
    assert_eq!(report.playback.stalls, 0, "no stall");
    let checked = report.segments.len();
    assert!(checked >= 4, "played {checked} segments");
    assert_eq!(
        digests.check(std::slice::from_ref(&report)),
        (0, 0),
        "every segment the player got is as the origin signed it"
    );
    eprintln!(
        "corrupt segments detected at V: {}; player got {checked} segments, all as the origin signed them",
        s.corrupt
    );
    v.terminate_owned().await;
    t.terminate_owned().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_whose_uplink_cannot_carry_two_children_sheds_the_newest() {
    // The tracker counts one child per 1,000 kb/s, so A, capped at
    // 2,600 kb/s, is given two children on probation; the stream is
    // about 1,750 kb/s, so its uplink carries one.
    let (_dir, mut cluster) = common::cluster_with(1, 4, |c| c.stream_kbps = 1_000).await;
    let a = cluster
        .spawn_peer(PeerOptions {
            max_upload_kbps: Some(2_600),
            ..PeerOptions::default()
        })
        .await
        .expect("A starts");
    let sa = streaming(&a).await;
    assert_eq!(sa.depth, 1);
    let kids = spawn_streaming(&mut cluster, 2).await;
    for k in &kids {
        let s = streaming(k).await;
        assert_eq!(
            s.parent.as_ref().map(|p| p.id),
            Some(sa.peer_id),
            "both children start under A: {s:?}"
        );
    }
    let (b, c) = (&kids[0], &kids[1]);
    let shed = wait_for("A to shed a child", Duration::from_secs(40), || async {
        let s = a.status().await.ok()?;
        (s.children_shed > 0).then_some(s)
    })
    .await;
    let sc = wait_for(
        "C, the newest, to stream from another parent",
        Duration::from_secs(20),
        || async {
            let s = c.status().await.ok()?;
            (s.connected && s.parent.as_ref()?.id != sa.peer_id).then_some(s)
        },
    )
    .await;
    let sb = b.status().await.expect("B status");
    eprintln!(
        "A shed {} child(ren); C now under {:?} at depth {}; B under {:?}",
        shed.children_shed, sc.parent, sc.depth, sb.parent
    );
    assert_eq!(
        sb.parent.as_ref().map(|p| p.id),
        Some(sa.peer_id),
        "B, the older child, stays under A"
    );
    for p in kids {
        p.terminate_owned().await;
    }
    a.terminate_owned().await;
    cluster.shutdown().await;
}
