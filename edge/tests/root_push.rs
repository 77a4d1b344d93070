//! The edge as root of the tree, over real QUIC: a child that joined
//! through the tracker connects with the pinned certificate and its ticket,
//! and receives live segments pushed as they are cut, byte-identical to the
//! origin's and carrying the origin's signature; a child without a valid
//! ticket is refused.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Method, StatusCode};
use treecast_edge::tracker::wire::Assignment;
use treecast_edge::{EdgeConfig, EdgeHandle};
use treecast_origin::config::FileInput;
use treecast_origin::{OriginConfig, OriginHandle};
use treecast_proto::quic::{client_config, parse_fingerprint, SERVER_NAME};
use treecast_proto::wire::{Frame, FrameDecoder, VERSION};
use treecast_proto::{ChannelName, SignedSegment};

async fn http(method: Method, url: &str, body: Vec<u8>) -> (StatusCode, Bytes) {
    let r = common::http(method, url, body).await;
    (r.status, r.body)
}

async fn read_frame(recv: &mut quinn::RecvStream, d: &mut FrameDecoder) -> Option<Frame> {
    loop {
        if let Some(f) = d.poll_frame().expect("valid frames") {
            return Some(f);
        }
        match recv.read_chunk(65536, true).await.expect("read") {
            Some(c) => d.feed(&c.bytes),
            None => return None,
        }
    }
}

fn encode(f: &Frame) -> Bytes {
    let mut b = BytesMut::new();
    f.encode(&mut b);
    b.freeze()
}

async fn setup(dir: &std::path::Path) -> (OriginHandle, EdgeHandle) {
    let mut oc = OriginConfig {
        data_dir: dir.join("origin"),
        listen: "127.0.0.1:0".parse().expect("addr"),
        ..OriginConfig::default()
    };
    oc.file.push(FileInput {
        path: concat!(env!("CARGO_MANIFEST_DIR"), "/../media/sample.ts").into(),
        channel: "demo".into(),
    });
    let origin = OriginHandle::start(oc).await.expect("origin");
    let edge = EdgeHandle::start(EdgeConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        quic_listen: "127.0.0.1:0".parse().expect("addr"),
        origin: format!("http://{}", origin.local_addr()),
        data_dir: dir.join("edge"),
        ..EdgeConfig::default()
    })
    .await
    .expect("edge");
    (origin, edge)
}

async fn join(edge: &EdgeHandle) -> Assignment {
    let body = serde_json::to_vec(&serde_json::json!({"channel": "demo", "addr": "127.0.0.1:9"}))
        .expect("json");
    let (status, body) = http(
        Method::POST,
        &format!("http://{}/tracker/v1/join", edge.local_addr()),
        body,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    serde_json::from_slice(&body).expect("assignment")
}

async fn connect(a: &Assignment) -> quinn::Connection {
    let parent = a.parent.as_ref().expect("parent");
    assert_eq!(parent.kind, "edge");
    let pin =
        parse_fingerprint(parent.cert_fingerprint.as_deref().expect("fingerprint")).expect("hex");
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse::<SocketAddr>().expect("addr"))
        .expect("endpoint");
    ep.set_default_client_config(client_config(pin).expect("client config"));
    ep.connect(parent.addr.expect("edge QUIC address"), SERVER_NAME)
        .expect("connect")
        .await
        .expect("handshake")
}

/// A child's connection to the edge with its control stream open.
struct Child {
    conn: quinn::Connection,
    control: quinn::SendStream,
    control_rx: quinn::RecvStream,
    decoder: FrameDecoder,
}

/// Connects to the edge as `a`'s peer, says `Hello` as `peer_id` with `a`'s
/// ticket, and returns the connection and the edge's first answer.
async fn hello_as(a: &Assignment, peer_id: u64) -> (Child, Option<Frame>) {
    let conn = connect(a).await;
    let (mut control, mut control_rx) = conn.open_bi().await.expect("control stream");
    let ticket = a.parent.as_ref().expect("parent").ticket.clone();
    let hello = Frame::Hello {
        version: VERSION,
        channel: "demo".into(),
        peer_id,
        ticket,
        next_seq: 0,
        resume_offset: 0,
    };
    control.write_all(&encode(&hello)).await.expect("hello");
    let mut d = FrameDecoder::new();
    let answer = tokio::time::timeout(Duration::from_secs(10), read_frame(&mut control_rx, &mut d))
        .await
        .expect("answer in time");
    let child = Child {
        conn,
        control,
        control_rx,
        decoder: d,
    };
    (child, answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_of_the_edge_receives_signed_segments_as_they_are_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (origin, edge) = setup(dir.path()).await;
    let a = join(&edge).await;
    let (mut child, answer) = hello_as(&a, a.peer_id).await;
    // The control stream answers pings (after any playlist frames).
    child
        .control
        .write_all(&encode(&Frame::Ping(7)))
        .await
        .expect("ping");
    let pong = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match read_frame(&mut child.control_rx, &mut child.decoder).await {
                Some(Frame::Playlist(p)) => assert!(p.starts_with(b"#EXTM3U")),
                other => return other,
            }
        }
    })
    .await
    .expect("pong in time");
    assert_eq!(pong, Some(Frame::Pong(7)));
    let conn = &child.conn;
    assert_eq!(answer, Some(Frame::Welcome { version: VERSION }));

    // The first whole segment pushed to us.
    let segment = tokio::time::timeout(Duration::from_secs(20), async {
        let mut s = conn.accept_uni().await.expect("segment stream");
        let mut d = FrameDecoder::new();
        let Some(Frame::SegmentStart { seq, offset: 0 }) = read_frame(&mut s, &mut d).await else {
            panic!("a segment stream starts with SegmentStart")
        };
        let mut bytes = BytesMut::new();
        let mut chunks = 0;
        loop {
            match read_frame(&mut s, &mut d).await {
                Some(Frame::SegmentData(b)) => {
                    chunks += 1;
                    bytes.extend_from_slice(&b);
                }
                Some(Frame::SegmentEnd { signature }) => {
                    return (seq, bytes.freeze(), signature, chunks)
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await
    .expect("a segment within 20 s");
    let (seq, bytes, signature, chunks) = segment;
    assert!(chunks > 1, "pushed in pieces as it arrived");

    let o = format!("http://{}", origin.local_addr());
    let (_, from_origin) = http(Method::GET, &format!("{o}/live/demo/{seq}.ts"), vec![]).await;
    assert_eq!(bytes, from_origin, "byte-identical to the origin's segment");
    let key: treecast_proto::OriginPublicKey = String::from_utf8(
        http(Method::GET, &format!("{o}/origin/key"), vec![])
            .await
            .1
            .to_vec(),
    )
    .expect("utf-8")
    .parse()
    .expect("key");
    let signed = SignedSegment::from_json(&signature).expect("signature record");
    key.verify_segment(
        &signed,
        &ChannelName::new("demo").expect("name"),
        seq,
        &bytes,
    )
    .expect("verifies");

    let m = String::from_utf8(
        common::get(&format!("http://{}/metrics", edge.local_addr()))
            .await
            .body
            .to_vec(),
    )
    .expect("utf-8");
    assert!(m.contains("treecast_edge_tree_children 1"), "{m}");
    assert!(m.contains("treecast_edge_egress_bytes_total{path=\"tree\"}"));
    conn.close(0u32.into(), b"done");
    edge.shutdown().await;
    origin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_without_a_valid_ticket_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (origin, edge) = setup(dir.path()).await;
    let a = join(&edge).await;
    // Someone else's id with this ticket.
    let (_conn, answer) = hello_as(&a, a.peer_id + 1).await;
    assert!(
        matches!(answer, Some(Frame::Refuse { ref reason }) if reason.contains("another channel, child or parent")),
        "{answer:?}"
    );
    edge.shutdown().await;
    origin.shutdown().await;
}
