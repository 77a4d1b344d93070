//! RTMP ingest from outside: a real ffmpeg publishing over RTMP (as OBS
//! does) into a real `origin serve`, while other clients misbehave: a wrong
//! publish key, a second publisher on the live channel, a bad channel name,
//! garbage instead of a handshake, garbage after one, a client that starts a
//! 16 MiB message before any publish, and one that never says anything. Each is refused with a message and a metric,
//! within a bounded time, and the live channel keeps publishing throughout.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::net::*;
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Publishes `sample` once to `url` with ffmpeg; its exit and stderr.
fn publish_once(sample: &str, url: &str) -> (bool, String) {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-v", "error", "-i", sample, "-t", "2"])
        .args(["-c", "copy", "-f", "flv", url])
        .stdin(Stdio::null())
        .output()
        .expect("ffmpeg runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Connects to `rtmp`, sends `send` and asserts that the server closes.
async fn closed_after(rtmp: &str, send: &[u8], within: Duration) {
    let s = TcpStream::connect(rtmp).await.expect("connect");
    sent_then_closed(s, send, within).await;
}

/// Sends `send` on `s` and asserts that the server closes it (EOF or reset)
/// within `within`.
async fn sent_then_closed(mut s: TcpStream, send: &[u8], within: Duration) {
    // The server may close while we still write: that is the point.
    let _ = s.write_all(send).await;
    let mut buf = vec![0u8; 16 * 1024];
    let closed = tokio::time::timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the origin kept a misbehaving RTMP client ({} bytes sent) open for {within:?}",
        send.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_rtmp_clients_are_refused_while_the_live_publisher_goes_on() {
    require_tool("ffmpeg");
    let dir = tempfile::tempdir().expect("tempdir");
    let sample = common::repo_file("media/sample.ts");
    let sample = sample.to_str().expect("path");
    let rtmp = format!("127.0.0.1:{}", free_port());
    let (_origin, base) =
        spawn_origin(dir.path(), &["--rtmp", &rtmp, "--publish-key", "k3y"]).await;

    // The live publisher: the sample looped in real time over RTMP.
    let live_url = format!("rtmp://{rtmp}/live/onair?key=k3y");
    let (_live, cut_before) = live_publisher(sample, "flv", &live_url, &base, "onair").await;

    // A wrong key, a second publisher, a bad name: refused, with the reason
    // shown by the encoder.
    let (ok, err) = publish_once(sample, &format!("rtmp://{rtmp}/live/other?key=nope"));
    assert!(!ok && err.contains("wrong or missing publish key"), "{err}");
    let (ok, err) = publish_once(sample, &format!("rtmp://{rtmp}/live/other"));
    assert!(!ok && err.contains("wrong or missing publish key"), "{err}");
    let (ok, err) = publish_once(sample, &live_url);
    assert!(!ok && err.contains("already has a publisher"), "{err}");
    let (ok, err) = publish_once(
        sample,
        &format!("rtmp://{rtmp}/live/Not%20a%20name?key=k3y"),
    );
    assert!(!ok && err.contains("invalid channel name"), "{err}");

    // Garbage where the handshake belongs; a valid first byte and then a
    // flood that never becomes a publish; silence.
    closed_after(
        &rtmp,
        b"GET / HTTP/1.1\r\nHost: origin\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    let mut flood = vec![3u8];
    flood.extend((0..200_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    closed_after(&rtmp, &flood, Duration::from_secs(5)).await;
    closed_after(&rtmp, b"", Duration::from_secs(15)).await;
    // A proper handshake, then the start of a 16 MiB command that would be
    // buffered whole: cut off at the bytes allowed before a publish.
    let mut client = Handshake::new(PeerType::Client);
    let mut s = TcpStream::connect(&rtmp).await.expect("connect");
    let c0c1 = client.generate_outbound_p0_and_p1().expect("c0c1");
    s.write_all(&c0c1).await.expect("write");
    let mut buf = vec![0u8; 4096];
    let mut huge = loop {
        let n = s.read(&mut buf).await.expect("read");
        assert!(n > 0, "the origin answers a valid handshake");
        if let HandshakeProcessResult::Completed { response_bytes, .. } =
            client.process_bytes(&buf[..n]).expect("valid answer")
        {
            break response_bytes;
        }
    };
    // fmt 0 on chunk stream 3: timestamp 0, length 0xFFFFFF, AMF0 command,
    // message stream 0; then 128-byte chunks with type 3 headers.
    huge.extend_from_slice(&[0x03, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0x14, 0, 0, 0, 0]);
    for _ in 0..800 {
        huge.extend_from_slice(&[0x05; 128]);
        huge.push(0xC3);
    }
    sent_then_closed(s, &huge, Duration::from_secs(5)).await;

    let outcome = |o: &str| format!("treecast_origin_rtmp_connections_total{{outcome=\"{o}\"}}");
    assert_eq!(metric(&base, &outcome("wrong_key")).await, 2);
    assert_eq!(metric(&base, &outcome("busy")).await, 1);
    assert_eq!(metric(&base, &outcome("bad_stream_key")).await, 1);
    assert_eq!(metric(&base, &outcome("handshake_failed")).await, 1);
    assert_eq!(metric(&base, &outcome("timeout")).await, 1);
    assert_eq!(metric(&base, &outcome("protocol_error")).await, 1);
    assert_eq!(metric(&base, &outcome("too_much_before_publish")).await, 1);

    // And the live channel went on publishing through all of it.
    wait_until_cut_past(&base, "onair", cut_before + 1).await;
    let s = channel_status(&base, "onair").await;
    assert_eq!(s["input_errors"], 0, "the live input had no problem: {s}");
    assert_eq!(s["target_duration"], 3, "{s}");
}
