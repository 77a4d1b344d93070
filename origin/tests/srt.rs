//! SRT ingest from outside: a real ffmpeg publishing MPEG-TS over SRT in
//! real time into a real `origin serve`, while other callers misbehave: a
//! wrong passphrase, none, a stream id that names no channel, a caller that
//! asks to play, a second caller on the live channel, and UDP garbage at the
//! listener. Each is refused with a message and a metric, and the live
//! channel keeps publishing throughout.

mod common;

use std::process::{Command, Stdio};

use common::net::*;

const KEY: &str = "srt-publish-key";

/// Calls `url` with two seconds of the sample; whether ffmpeg succeeded.
fn call_once(sample: &str, url: &str) -> bool {
    Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-v",
            "quiet",
            "-re",
            "-i",
            sample,
            "-t",
            "2",
        ])
        .args(["-c", "copy", "-f", "mpegts", url])
        .stdin(Stdio::null())
        .status()
        .expect("ffmpeg runs")
        .success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_srt_callers_are_refused_while_the_live_caller_goes_on() {
    require_tool("ffmpeg");
    let dir = tempfile::tempdir().expect("tempdir");
    let sample = common::repo_file("media/sample.ts");
    let sample = sample.to_str().expect("path");
    let srt = format!("127.0.0.1:{}", free_udp_port());
    let (_origin, base) = spawn_origin(dir.path(), &["--srt", &srt, "--publish-key", KEY]).await;

    let url = |query: &str| format!("srt://{srt}?{query}");
    let live_url = url(&format!("streamid=onair&passphrase={KEY}&pbkeylen=16"));
    let (_live, cut_before) = live_publisher(sample, "mpegts", &live_url, &base, "onair").await;

    // UDP garbage at the listener first: it must still take callers after.
    let garbage = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    for i in 0..200u32 {
        let datagram: Vec<u8> = (0..(i % 97 + 1) * 13).map(|b| (b ^ i) as u8).collect();
        let _ = garbage.send_to(&datagram, &srt);
    }
    let keyed = |id: &str| url(&format!("streamid={id}&passphrase={KEY}&pbkeylen=16"));
    let wrong = url("streamid=other&passphrase=not-the-key-at-all&pbkeylen=16");
    assert!(!call_once(sample, &wrong));
    assert!(!call_once(sample, &url("streamid=other")));
    assert!(!call_once(sample, &keyed("-not-a-name")));
    assert!(!call_once(sample, &keyed("#!::r=onair,m=request")));
    assert!(
        !call_once(sample, &live_url),
        "a second caller on the live channel"
    );

    let outcome = |o: &str| format!("treecast_origin_srt_connections_total{{outcome=\"{o}\"}}");
    assert_eq!(
        metric(&base, &outcome("handshake_failed")).await,
        1,
        "wrong passphrase"
    );
    assert_eq!(
        metric(&base, &outcome("wrong_key")).await,
        1,
        "no passphrase"
    );
    assert_eq!(metric(&base, &outcome("bad_stream_id")).await, 1);
    assert_eq!(metric(&base, &outcome("not_publish")).await, 1);
    assert_eq!(metric(&base, &outcome("busy")).await, 1);

    wait_until_cut_past(&base, "onair", cut_before + 1).await;
    let s = channel_status(&base, "onair").await;
    assert_eq!(s["input_errors"], 0, "the live input had no problem: {s}");
}
