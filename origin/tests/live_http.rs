//! End to end: the real `origin` binary, fed through `/ingest/` by the real
//! `origin ingest` CLI and by ffmpeg, read back with ffmpeg and ffprobe, and
//! every segment's signature verified.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::net::*;
use http::{Method, StatusCode};
use treecast_proto::{ChannelName, OriginPublicKey, SignedSegment};

/// `origin ingest -` publishing to `channel`, reading the test's writes.
fn ingest_from_stdin(base: &str, channel: &str) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_origin"))
        .args([
            "ingest",
            "--quiet",
            "--origin",
            base,
            "--channel",
            channel,
            "-",
        ])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn")
}

fn listed_segments(playlist: &str) -> Vec<u64> {
    let p = m3u8_rs::parse_media_playlist_res(playlist.as_bytes()).expect("valid playlist");
    p.segments
        .iter()
        .map(|s| {
            s.uri
                .trim_end_matches(".ts")
                .parse()
                .expect("numbered segment")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_clip_is_served_as_valid_signed_hls() {
    require_tool("ffmpeg");
    require_tool("ffprobe");
    let dir = tempfile::tempdir().expect("tempdir");
    let (_origin, base) = spawn_origin(dir.path(), &[]).await;
    let sample = common::repo_file("media/sample.ts");

    let out = ingest_cmd(&base, "demo", &[sample.to_str().expect("path")]);
    assert!(
        out.status.success(),
        "ingest failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("origin cut 8 segments"), "{stderr}");

    // Playlist: type, caching, CORS, window.
    let pl = get(&format!("{base}/live/demo/index.m3u8")).await;
    assert_eq!(pl.status, StatusCode::OK);
    assert_eq!(pl.header("content-type"), "application/vnd.apple.mpegurl");
    assert_eq!(pl.header("cache-control"), "public, max-age=1");
    assert_eq!(pl.header("access-control-allow-origin"), "*");
    let text = String::from_utf8(pl.body.to_vec()).expect("utf-8");
    assert!(text.contains("#EXT-X-PROGRAM-DATE-TIME:"));
    assert!(text.contains("#EXT-X-INDEPENDENT-SEGMENTS"));
    let listed = listed_segments(&text);
    assert_eq!(listed, vec![2, 3, 4, 5, 6, 7]);

    // Every segment (listed, and the two retained after leaving the window)
    // verifies against the origin's public key and starts on a keyframe.
    let key: OriginPublicKey =
        String::from_utf8(get(&format!("{base}/origin/key")).await.body.to_vec())
            .expect("utf-8")
            .parse()
            .expect("public key");
    let demo = ChannelName::new("demo").expect("name");
    for seq in 0..8u64 {
        let seg = get(&format!("{base}/live/demo/{seq}.ts")).await;
        assert_eq!(seg.status, StatusCode::OK, "segment {seq}");
        assert_eq!(seg.header("content-type"), "video/mp2t");
        assert_eq!(
            seg.header("cache-control"),
            "public, max-age=31536000, immutable"
        );
        let sig = get(&format!("{base}/live/demo/{seq}.sig")).await;
        assert_eq!(sig.status, StatusCode::OK);
        let signed = SignedSegment::from_json(&sig.body).expect("signature record");
        key.verify_segment(&signed, &demo, seq, &seg.body)
            .expect("signature verifies");
        let mut tampered = seg.body.to_vec();
        tampered[1000] ^= 0x55;
        assert!(key.verify_segment(&signed, &demo, seq, &tampered).is_err());

        let path =
            std::env::temp_dir().join(format!("treecast-test-{}-{seq}.ts", std::process::id()));
        std::fs::write(&path, &seg.body).expect("write segment");
        let probe = Command::new("ffprobe")
            .args([
                "-v",
                "error",
                "-select_streams",
                "v",
                "-read_intervals",
                "%+#1",
                "-show_entries",
                "frame=key_frame,pict_type",
                "-of",
                "csv=p=0",
            ])
            .arg(&path)
            .output()
            .expect("ffprobe runs");
        let _ = std::fs::remove_file(&path);
        let first = String::from_utf8_lossy(&probe.stdout);
        assert!(
            first.starts_with("1,I"),
            "segment {seq} first frame: {first:?}"
        );
    }

    // HEAD answers the headers, with the length, and no body.
    let head = request(Method::HEAD, &format!("{base}/live/demo/3.ts"), vec![], &[]).await;
    let full = get(&format!("{base}/live/demo/3.ts")).await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-length"), full.body.len().to_string());

    // A real HLS client reads the live playlist cleanly.
    let ff = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-live_start_index",
            "0",
            "-i",
        ])
        .arg(format!("{base}/live/demo/index.m3u8"))
        .args(["-c", "copy", "-t", "11.5", "-f", "null", "-"])
        .output()
        .expect("ffmpeg runs");
    assert!(ff.status.success());
    assert!(
        ff.stderr.is_empty(),
        "ffmpeg reported: {}",
        String::from_utf8_lossy(&ff.stderr)
    );

    // Garbage requests get clear errors and change nothing.
    for (path, status) in [
        ("/live/demo/99.ts", StatusCode::NOT_FOUND),
        ("/live/demo/../../etc/passwd", StatusCode::NOT_FOUND),
        ("/live/Bad!/index.m3u8", StatusCode::BAD_REQUEST),
        ("/live/nochannel/index.m3u8", StatusCode::NOT_FOUND),
        ("/live/demo/x.mp4", StatusCode::NOT_FOUND),
    ] {
        let r = get(&format!("{base}{path}")).await;
        assert_eq!(r.status, status, "{path}");
        assert_eq!(
            r.header("cache-control"),
            "no-store",
            "{path}: errors are not cached"
        );
    }
    for (method, want) in [
        (Method::DELETE, StatusCode::METHOD_NOT_ALLOWED),
        (Method::OPTIONS, StatusCode::NO_CONTENT),
    ] {
        let r = request(method, &format!("{base}/live/demo/index.m3u8"), vec![], &[]).await;
        assert_eq!(r.status, want);
        assert_eq!(r.header("access-control-allow-origin"), "*");
    }

    // Garbage published to another channel hurts nobody.
    let junk: Vec<u8> = (0..500_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
        .collect();
    let r = request(Method::PUT, &format!("{base}/ingest/junk"), junk, &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    let summary: serde_json::Value = serde_json::from_slice(&r.body).expect("summary json");
    assert_eq!(summary["segments"], 0);
    assert!(summary["problems"].as_u64().expect("count") > 0);
    assert_eq!(
        get(&format!("{base}/live/demo/index.m3u8")).await.body,
        pl.body
    );
    let metrics =
        String::from_utf8(get(&format!("{base}/metrics")).await.body.to_vec()).expect("utf-8");
    assert!(
        metrics
            .contains("treecast_origin_ingest_problems_total{channel=\"junk\",kind=\"sync_lost\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("treecast_origin_segments_total{channel=\"demo\"} 8"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_can_publish_with_put() {
    require_tool("ffmpeg");
    let dir = tempfile::tempdir().expect("tempdir");
    let (_origin, base) = spawn_origin(dir.path(), &[]).await;
    let sample = common::repo_file("media/sample.ts");
    let put = format!("{base}/ingest/ff");
    let args = [
        "-i",
        sample.to_str().expect("path"),
        "-c",
        "copy",
        "-f",
        "mpegts",
    ];
    ffmpeg(&[&args[..], &["-method", "PUT", &put]].concat());
    // ffmpeg is done writing; wait for the origin to finish the session.
    let url = format!("{base}/api/channels/ff");
    wait_until(Duration::from_secs(20), || async {
        serde_json::from_slice::<serde_json::Value>(&get(&url).await.body)
            .is_ok_and(|v| v["live"] == false)
    })
    .await;
    let status: serde_json::Value = serde_json::from_slice(&get(&url).await.body).expect("json");
    assert_eq!(status["segments_cut"], 8, "{status}");
    assert_eq!(status["input_errors"], 0, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_key_busy_channel_and_unreachable_origin_are_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_origin, base) = spawn_origin(dir.path(), &["--publish-key", "s3cret"]).await;
    let sample = common::repo_file("media/sample.ts");
    let sample = sample.to_str().expect("path");

    let out = ingest_cmd(&base, "demo", &[sample, "--key", "wrong"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("publish key missing or wrong"), "{err}");

    let out = ingest_cmd(&base, "demo", &[sample, "--key", "s3cret"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = ingest_cmd(&base, "demo", &["/no/such/file.ts", "--key", "s3cret"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read input /no/such/file.ts"));

    let not_ts = dir.path().join("not.ts");
    std::fs::write(
        &not_ts,
        b"\x00\x00\x00\x20ftypisom not a transport stream at all",
    )
    .expect("write");
    let out = ingest_cmd(
        &base,
        "demo",
        &[not_ts.to_str().expect("path"), "--key", "s3cret"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not look like MPEG-TS"));

    let out = ingest_cmd("http://127.0.0.1:9", "demo", &[sample]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach the origin") && err.contains("origin serve"),
        "{err}"
    );

    // A second publisher on a live channel is refused while the first runs.
    let mut first = std::process::Command::new(env!("CARGO_BIN_EXE_origin"))
        .args([
            "ingest",
            "--quiet",
            "--origin",
            &base,
            "--channel",
            "busy",
            "--key",
            "s3cret",
            "--realtime",
            "--loop",
            sample,
        ])
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    wait_until(Duration::from_secs(20), || async {
        let r = get(&format!("{base}/api/channels/busy")).await;
        r.status == StatusCode::OK
            && serde_json::from_slice::<serde_json::Value>(&r.body).is_ok_and(|v| v["live"] == true)
    })
    .await;
    let out = ingest_cmd(&base, "busy", &[sample, "--key", "s3cret"]);
    let _ = first.kill();
    let _ = first.wait();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already has a publisher"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_origin_never_reuses_segment_numbers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sample = common::repo_file("media/sample.ts");
    let sample = sample.to_str().expect("path");
    let first_key;
    {
        let (_origin, base) = spawn_origin(dir.path(), &[]).await;
        assert!(ingest_cmd(&base, "demo", &[sample]).status.success());
        first_key = get(&format!("{base}/origin/key")).await.body;
    }
    let (_origin, base) = spawn_origin(dir.path(), &[]).await;
    assert_eq!(
        get(&format!("{base}/origin/key")).await.body,
        first_key,
        "key is kept"
    );
    assert!(ingest_cmd(&base, "demo", &[sample]).status.success());
    let (text, p) = media_playlist(&format!("{base}/live/demo/index.m3u8")).await;
    assert_eq!(listed_segments(&text), vec![10, 11, 12, 13, 14, 15]);
    assert!(p.media_sequence >= 10);
    // The first segment after the restart (8) left the window; its
    // discontinuity is counted in the discontinuity sequence.
    assert_eq!(p.discontinuity_sequence, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_and_stdin_inputs_publish() {
    let dir = tempfile::tempdir().expect("tempdir");
    let udp_port = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("free udp port");
    let udp_arg = format!("127.0.0.1:{udp_port}=viaudp");
    let (_origin, base) = spawn_origin(dir.path(), &["--udp", &udp_arg]).await;
    let sample = std::fs::read(common::repo_file("media/sample.ts")).expect("sample");

    // UDP: 7 packets a datagram, as encoders send, paced at about 8x real
    // time (UDP has no flow control; a sender that outruns the receiver's
    // socket buffer loses datagrams, which the origin would report).
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    for (i, dgram) in sample.chunks(7 * 188).enumerate() {
        sock.send_to(dgram, ("127.0.0.1", udp_port))
            .await
            .expect("send");
        if i % 20 == 19 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    // The session ends after the input has been idle, publishing the last
    // segment. Loopback UDP may still drop a datagram on a loaded machine,
    // costing at most a GOP, so allow that.
    let url = format!("{base}/api/channels/viaudp");
    wait_until(Duration::from_secs(30), || async {
        serde_json::from_slice::<serde_json::Value>(&get(&url).await.body)
            .is_ok_and(|v| v["live"] == false && v["segments_cut"].as_u64().is_some_and(|n| n >= 6))
    })
    .await;
    let text = get(&format!("{base}/live/viaudp/index.m3u8")).await;
    assert_eq!(text.status, StatusCode::OK);

    // stdin through the CLI.
    let mut child = ingest_from_stdin(&base, "viastdin");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(&sample).expect("write");
    }
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = get(&format!("{base}/live/viastdin/index.m3u8")).await;
    assert_eq!(
        listed_segments(std::str::from_utf8(&text.body).expect("utf-8")).len(),
        6
    );
}

/// The origin's own file input loops the sample clip as one continuous
/// stream: across the loop no input problem, no discontinuity, and the
/// segment durations and timestamps run on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looped_file_is_one_continuous_stream() {
    require_tool("ffprobe");
    let dir = tempfile::tempdir().expect("tempdir");
    let sample = common::repo_file("media/sample.ts");
    let file = format!("{}=loop", sample.to_str().expect("path"));
    let (_origin, base) = spawn_origin(dir.path(), &["--file", &file]).await;
    // The clip is 16 s (8 segments): wait for the fourth segment of the
    // second pass to be listed.
    let status = || async {
        let r = get(&format!("{base}/api/channels/loop")).await;
        serde_json::from_slice::<serde_json::Value>(&r.body).unwrap_or_default()
    };
    wait_until(Duration::from_secs(60), || async {
        status().await["segments_cut"].as_u64().unwrap_or(0) >= 12
    })
    .await;
    let st = status().await;
    assert_eq!(
        st["input_errors"], 0,
        "input problems across the loop: {st}"
    );
    let (text, playlist) = media_playlist(&format!("{base}/live/loop/index.m3u8")).await;
    assert!(
        !text.contains("#EXT-X-DISCONTINUITY\n"),
        "a discontinuity at the loop: {text}"
    );
    let mut last_end: Option<f64> = None;
    for seg in &playlist.segments {
        let body = get(&format!("{base}/live/loop/{}", seg.uri)).await.body;
        let path = dir.path().join(&seg.uri);
        std::fs::write(&path, &body).expect("write");
        let out = Command::new("ffprobe")
            .args(["-v", "error", "-select_streams", "v:0", "-show_entries"])
            .args(["stream=start_time", "-of", "csv=p=0"])
            .arg(&path)
            .output()
            .expect("ffprobe");
        // One line for the program, one for the stream: the same start.
        let start: f64 = String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| !l.trim().is_empty())
            .and_then(|l| l.trim().parse().ok())
            .expect("a start time");
        if let Some(end) = last_end {
            // Within a frame (30 fps) of where the previous segment ended.
            assert!(
                (start - end).abs() < 0.034,
                "segment {} starts at {start:.3} s, the previous one ended at {end:.3} s",
                seg.uri
            );
        }
        last_end = Some(start + f64::from(seg.duration));
    }
}

/// A publisher that stalls for 30 s mid-stream (its encoder's clock running
/// on, so its timestamps jump by the stall when it resumes): the playlist
/// keeps serving its window through the stall, and the stream resumes with
/// exactly one discontinuity and nothing lost on either side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_publisher_resumes_with_one_discontinuity() {
    const STALL: Duration = Duration::from_secs(30);
    let dir = tempfile::tempdir().expect("tempdir");
    let sample = common::repo_file("media/sample.ts");
    let sample = sample.to_str().expect("path");
    // The second half is the same clip, its timestamps moved on by the
    // clip's length plus the stall.
    let duration: f64 = String::from_utf8(
        Command::new("ffprobe")
            .args([
                "-v",
                "error",
                "-show_entries",
                "format=duration",
                "-of",
                "csv=p=0",
            ])
            .arg(sample)
            .output()
            .expect("ffprobe runs")
            .stdout,
    )
    .expect("utf-8")
    .trim()
    .parse()
    .expect("a duration");
    let resumed = dir.path().join("resumed.ts");
    let offset = format!("{}", duration + STALL.as_secs_f64());
    ffmpeg(
        &[
            "-i",
            sample,
            "-c",
            "copy",
            "-output_ts_offset",
            &offset,
            "-f",
            "mpegts",
        ]
        .into_iter()
        .chain([resumed.to_str().expect("path")])
        .collect::<Vec<_>>(),
    );
    let config = dir.path().join("origin.toml");
    std::fs::write(&config, "[segments]\nwindow_segments = 1000\n").expect("config");
    let (_origin, base) =
        spawn_origin(dir.path(), &["--config", config.to_str().expect("path")]).await;
    let mut child = ingest_from_stdin(&base, "stall");
    let mut stdin = child.stdin.take().expect("stdin");
    let first = std::fs::read(sample).expect("read");
    {
        use std::io::Write;
        stdin.write_all(&first).expect("write");
    }
    let url = format!("{base}/live/stall/index.m3u8");
    // Everything but the open segment is published before the stall.
    wait_until(Duration::from_secs(20), || async {
        let r = get(&url).await;
        r.status == StatusCode::OK
            && listed_segments(std::str::from_utf8(&r.body).unwrap_or("")).len() >= 7
    })
    .await;
    let before = String::from_utf8(get(&url).await.body.to_vec()).expect("utf-8");
    // The stall itself: the publisher sends nothing for this long.
    tokio::time::sleep(STALL).await;
    let during = get(&url).await;
    assert_eq!(
        during.status,
        StatusCode::OK,
        "the playlist is served through the stall"
    );
    assert_eq!(
        listed_segments(std::str::from_utf8(&during.body).expect("utf-8")),
        listed_segments(&before),
        "the window is kept as it was"
    );
    // The same encoder goes on: its continuity counters carry on too.
    let mut second = std::fs::read(&resumed).expect("read");
    continue_counters(&first, &mut second);
    {
        use std::io::Write;
        stdin.write_all(&second).expect("write");
    }
    drop(stdin);
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (text, playlist) = media_playlist(&url).await;
    assert_eq!(
        text.matches("#EXT-X-DISCONTINUITY\n").count(),
        1,
        "one discontinuity where the stall was:\n{text}"
    );
    // Both halves whole: the same clip, so as many segments each, the
    // resumed half opening with the discontinuity.
    let at = playlist
        .segments
        .iter()
        .position(|s| s.discontinuity)
        .expect("the discontinuity");
    assert!(at > listed_segments(&before).len() - 1, "{text}");
    assert_eq!(
        playlist.segments.len(),
        2 * at,
        "both halves whole:\n{text}"
    );
    // The only problems are the jump itself, once per timed stream (video
    // and audio): no frame was dropped, no continuity lost.
    let metrics =
        String::from_utf8(get(&format!("{base}/metrics")).await.body.to_vec()).expect("utf-8");
    let problems: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("treecast_origin_ingest_problems_total{channel=\"stall\""))
        .collect();
    assert_eq!(
        problems,
        vec!["treecast_origin_ingest_problems_total{channel=\"stall\",kind=\"timeline_jump\"} 2"],
    );
}

/// Rewrites `next`'s continuity counters to run on from the end of `before`,
/// per PID, as one encoder's output would.
fn continue_counters(before: &[u8], next: &mut [u8]) {
    use std::collections::HashMap;
    use treecast_origin::ts::packet::{set_continuity, PacketHeader};
    let mut last: HashMap<u16, u8> = HashMap::new();
    for p in common::packets(before) {
        if let Ok(h) = PacketHeader::parse(p) {
            if h.has_payload {
                last.insert(h.pid, h.continuity);
            }
        }
    }
    for p in next.chunks_exact_mut(188) {
        let packet: &[u8; 188] = (&*p).try_into().expect("packet");
        let Ok(h) = PacketHeader::parse(packet) else {
            continue;
        };
        if h.has_payload {
            let cc = last.get(&h.pid).map_or(h.continuity, |c| (c + 1) & 0x0F);
            set_continuity(p, cc);
            last.insert(h.pid, cc);
        }
    }
}
