//! Edges in tiers: an edge pulling from another edge serves the origin's
//! bytes, and an edge whose source alters segments, swaps in another
//! channel's, or drops their signatures refuses to serve them and keeps
//! serving.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{get, metric};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::sync::watch;
use treecast_edge::{EdgeConfig, EdgeHandle};
use treecast_origin::config::FileInput;
use treecast_origin::{OriginConfig, OriginHandle};
use treecast_proto::http::{self as h, Body, Handler};

async fn origin_with(data: &std::path::Path, channels: &[&str]) -> OriginHandle {
    let mut config = OriginConfig {
        data_dir: data.to_owned(),
        listen: "127.0.0.1:0".parse().expect("addr"),
        ..OriginConfig::default()
    };
    for c in channels {
        config.file.push(FileInput {
            path: concat!(env!("CARGO_MANIFEST_DIR"), "/../media/sample.ts").into(),
            channel: (*c).into(),
        });
    }
    OriginHandle::start(config).await.expect("origin starts")
}

async fn edge_from(source: &str, key: Option<String>, data: &std::path::Path) -> EdgeHandle {
    EdgeHandle::start(EdgeConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        quic_listen: "127.0.0.1:0".parse().expect("addr"),
        origin: source.to_owned(),
        origin_key: key,
        data_dir: data.to_owned(),
        ..EdgeConfig::default()
    })
    .await
    .expect("edge starts")
}

/// A segment the origin has complete: the first one its playlist lists
/// once it lists two.
async fn complete_seq(base: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "no two segments within 20 s");
        let r = get(&format!("{base}/live/demo/index.m3u8")).await;
        if r.status == StatusCode::OK {
            if let Ok(p) = m3u8_rs::parse_media_playlist_res(&r.body) {
                if p.segments.len() >= 2 {
                    return p.media_sequence;
                }
            }
        }
        // The origin cuts a segment every 2 s of real-time input.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// GETs `url` whole: `None` when the status is not 200 or the body broke
/// off (how a relay refuses bytes it already started streaming), also
/// before the response's head arrived (a short segment's head and bytes
/// may still sit in the relay's buffer when it refuses them: CI once saw
/// the connection end with `IncompleteMessage`). A relay that died
/// instead fails the checks of its health and playlists that follow.
async fn fetch(url: &str) -> Option<Bytes> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let req = Request::get(url).body(Empty::new()).expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(20), client.request(req))
        .await
        .expect("answer within 20 s")
        .ok()?;
    if resp.status() != StatusCode::OK {
        return None;
    }
    let body = tokio::time::timeout(Duration::from_secs(20), resp.into_body().collect())
        .await
        .expect("body within 20 s");
    body.ok().map(|b| b.to_bytes())
}

/// How the hostile source alters what it relays.
#[derive(Debug, Clone, Copy)]
enum Alter {
    /// Flips one byte of every segment.
    FlipByte,
    /// Serves channel `other`'s segments and signatures as `demo`'s.
    OtherChannel,
    /// Answers every signature with 404.
    NoSignatures,
}

/// An HTTP source in front of the origin that alters what it relays.
struct Hostile {
    origin: String,
    alter: Alter,
}

impl Handler for Hostile {
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let mut path = req.uri().path().to_owned();
        let is_segment = path.ends_with(".ts");
        let is_sig = path.ends_with(".sig");
        match self.alter {
            Alter::OtherChannel if is_segment || is_sig => {
                path = path.replace("/live/demo/", "/live/other/");
            }
            Alter::NoSignatures if is_sig => {
                return h::text(StatusCode::NOT_FOUND, "no signatures here");
            }
            _ => {}
        }
        let Some(body) = fetch(&format!("{}{path}", self.origin)).await else {
            return h::text(StatusCode::NOT_FOUND, "origin had nothing");
        };
        let mut body = body.to_vec();
        if let (Alter::FlipByte, true) = (self.alter, is_segment) {
            let mid = body.len() / 2;
            body[mid] ^= 0x55;
        }
        h::object(StatusCode::OK, body, "application/octet-stream", "no-store")
    }
}

async fn hostile(origin: &OriginHandle, alter: Alter, stop: watch::Receiver<bool>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let handler = Arc::new(Hostile {
        origin: format!("http://{}", origin.local_addr()),
        alter,
    });
    tokio::spawn(h::serve(listener, handler, 64, stop));
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_behind_an_edge_serves_the_origins_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let origin = origin_with(dir.path(), &["demo"]).await;
    let o = format!("http://{}", origin.local_addr());
    let first = edge_from(&o, None, &dir.path().join("e1")).await;
    let e1 = format!("http://{}", first.local_addr());
    // The second tier knows only the first: the key comes through it.
    let second = edge_from(&e1, None, &dir.path().join("e2")).await;
    let e2 = format!("http://{}", second.local_addr());

    let seq = complete_seq(&o).await;
    let from_origin = fetch(&format!("{o}/live/demo/{seq}.ts"))
        .await
        .expect("origin segment");
    let through_two = fetch(&format!("{e2}/live/demo/{seq}.ts"))
        .await
        .expect("tier segment");
    assert_eq!(through_two, from_origin, "two tiers changed the segment");
    let sig = fetch(&format!("{e2}/live/demo/{seq}.sig"))
        .await
        .expect("tier signature");
    assert_eq!(
        sig,
        fetch(&format!("{o}/live/demo/{seq}.sig"))
            .await
            .expect("sig")
    );
    let key = get(&format!("{e2}/origin/key")).await;
    assert_eq!(key.body, get(&format!("{o}/origin/key")).await.body);

    // The first tier fetched the segment once for both: the second's
    // request and its own signature check.
    let m = String::from_utf8_lossy(&get(&format!("{e1}/metrics")).await.body).into_owned();
    assert_eq!(
        metric(
            &m,
            r#"treecast_edge_origin_fetches_total{kind="segment",outcome="ok"}"#
        ),
        1.0
    );
    second.shutdown().await;
    first.shutdown().await;
    origin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_refuses_what_its_source_altered_and_keeps_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let origin = origin_with(dir.path(), &["demo", "other"]).await;
    let o = format!("http://{}", origin.local_addr());
    let key = String::from_utf8_lossy(&get(&format!("{o}/origin/key")).await.body)
        .trim()
        .to_owned();
    let seq = complete_seq(&o).await;
    let (_stop_tx, stop) = watch::channel(false);
    for (alter, refused_kind) in [
        (Alter::FlipByte, "segment"),
        (Alter::OtherChannel, "signature"),
        (Alter::NoSignatures, "segment"),
    ] {
        let source = hostile(&origin, alter, stop.clone()).await;
        let data = dir.path().join(format!("{alter:?}"));
        let edge = edge_from(&source, Some(key.clone()), &data).await;
        let e = format!("http://{}", edge.local_addr());
        assert_eq!(
            fetch(&format!("{e}/live/demo/{seq}.ts")).await,
            None,
            "{alter:?}: the edge served a segment its source altered"
        );
        // Asked again, it is fetched and refused again, never cached.
        assert_eq!(fetch(&format!("{e}/live/demo/{seq}.ts")).await, None);
        let m = String::from_utf8_lossy(&get(&format!("{e}/metrics")).await.body).into_owned();
        let series = format!(
            r#"treecast_edge_origin_fetches_total{{kind="{refused_kind}",outcome="unverified"}}"#
        );
        assert!(
            metric(&m, &series) >= 2.0,
            "{alter:?}: {series} not counted"
        );
        assert_eq!(get(&format!("{e}/healthz")).await.status, StatusCode::OK);
        assert_eq!(
            get(&format!("{e}/live/demo/index.m3u8")).await.status,
            StatusCode::OK,
            "{alter:?}: the edge stopped serving playlists"
        );
        edge.shutdown().await;
    }
    origin.shutdown().await;
}
