//! Two edges behind a real nginx shield (`dist/nginx/treecast-shield.conf`,
//! with `proxy_cache_lock`) in front of one origin: players following live
//! at both edges at once, and the origin serves each segment and each
//! signature once.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{get, metric};
use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use treecast_edge::{EdgeConfig, EdgeHandle};
use treecast_origin::config::FileInput;
use treecast_origin::{OriginConfig, OriginHandle};

const SHIELD_CONF: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../dist/nginx/treecast-shield.conf"
);

/// nginx, killed when dropped.
struct Nginx {
    child: Child,
    addr: SocketAddr,
    access_log: PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nginx_binary() -> PathBuf {
    ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("nginx is not installed: `apt-get install nginx` (bash .ci/run does)")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Starts nginx in the foreground, one process, with the shipped shield
/// locations in front of `origin`; returns once it accepts connections.
async fn start_nginx(dir: &Path, origin: SocketAddr) -> Nginx {
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let d = dir.display();
    let access_log = dir.join("access.log");
    let conf = format!(
        r#"daemon off;
master_process off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 512; }}
http {{
    log_format shield '$uri $upstream_cache_status $status';
    access_log {d}/access.log shield;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    proxy_cache_path {d}/cache keys_zone=treecast:4m max_size=256m inactive=10m use_temp_path=off;
    upstream treecast_origin {{ server {origin}; keepalive 8; }}
    server {{
        listen {addr};
        include {SHIELD_CONF};
    }}
}}
"#
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf).expect("write nginx.conf");
    let child = Command::new(nginx_binary())
        .arg("-c")
        .arg(&conf_path)
        .arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(dir.join("error.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("nginx starts");
    let mut nginx = Nginx {
        child,
        addr,
        access_log,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(status)) = nginx.child.try_wait() {
            let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
            panic!("nginx exited ({status}):\n{log}");
        }
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return nginx;
        }
        assert!(
            Instant::now() < deadline,
            "nginx did not listen within 10 s"
        );
        // Connection refused until nginx has bound; ask again shortly.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn fetch(url: &str) -> Option<Bytes> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let req = http::Request::get(url).body(Empty::new()).expect("request");
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

/// The sequence number after the last one `base`'s playlist lists: the
/// segment being cut now.
async fn live_seq(base: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "no playlist within 20 s");
        if let Some(body) = fetch(&format!("{base}/live/demo/index.m3u8")).await {
            if let Ok(p) = m3u8_rs::parse_media_playlist_res(&body) {
                if !p.segments.is_empty() {
                    return p.media_sequence + p.segments.len() as u64;
                }
            }
        }
        // The origin's first segment takes 2 s of real-time input.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Follows live at `edge` as the tree's root does: asks for each segment
/// before it exists (the origin holds the request, then streams it).
async fn follow(edge: String, from: u64, count: u64) -> Vec<Bytes> {
    let mut got = Vec::new();
    for seq in from..from + count {
        let seg = fetch(&format!("{edge}/live/demo/{seq}.ts"))
            .await
            .unwrap_or_else(|| panic!("{edge} did not serve segment {seq}"));
        got.push(seg);
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_nginx_the_origin_serves_each_segment_once_to_two_edges() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = OriginConfig {
        data_dir: dir.path().join("origin"),
        listen: "127.0.0.1:0".parse().expect("addr"),
        ..OriginConfig::default()
    };
    config.file.push(FileInput {
        path: concat!(env!("CARGO_MANIFEST_DIR"), "/../media/sample.ts").into(),
        channel: "demo".into(),
    });
    let origin = OriginHandle::start(config).await.expect("origin starts");
    let o = format!("http://{}", origin.local_addr());
    let nginx_dir = dir.path().join("nginx");
    std::fs::create_dir_all(&nginx_dir).expect("mkdir");
    let nginx = start_nginx(&nginx_dir, origin.local_addr()).await;
    let shield = format!("http://{}", nginx.addr);
    let key = String::from_utf8_lossy(&get(&format!("{o}/origin/key")).await.body)
        .trim()
        .to_owned();

    // One edge pins the origin's key, the other asks the shield for it.
    let mut edges = Vec::new();
    for (n, pinned) in [(1, Some(key)), (2, None)] {
        edges.push(
            EdgeHandle::start(EdgeConfig {
                listen: "127.0.0.1:0".parse().expect("addr"),
                quic_listen: "127.0.0.1:0".parse().expect("addr"),
                origin: shield.clone(),
                origin_key: pinned,
                data_dir: dir.path().join(format!("edge{n}")),
                ..EdgeConfig::default()
            })
            .await
            .expect("edge starts"),
        );
    }
    let urls: Vec<String> = edges
        .iter()
        .map(|e| format!("http://{}", e.local_addr()))
        .collect();

    let from = live_seq(&shield).await;
    const COUNT: u64 = 4;
    let a = tokio::spawn(follow(urls[0].clone(), from, COUNT));
    let b = tokio::spawn(follow(urls[1].clone(), from, COUNT));
    let (a, b) = (a.await.expect("follower"), b.await.expect("follower"));
    assert_eq!(a, b, "the two edges served different bytes");
    for (i, seg) in a.iter().enumerate() {
        let seq = from + i as u64;
        assert_eq!(
            Some(seg.clone()),
            fetch(&format!("{o}/live/demo/{seq}.ts")).await,
            "segment {seq} differs from the origin's"
        );
    }

    // What the shield passed to the origin, from its access log.
    let log = std::fs::read_to_string(&nginx.access_log).expect("access log");
    let mut misses: BTreeMap<String, usize> = BTreeMap::new();
    let mut objects: BTreeSet<String> = BTreeSet::new();
    for line in log.lines() {
        let mut f = line.split_whitespace();
        let (Some(uri), Some(cache)) = (f.next(), f.next()) else {
            continue;
        };
        if uri.ends_with(".ts") || uri.ends_with(".sig") {
            objects.insert(uri.to_owned());
            if cache == "MISS" {
                *misses.entry(uri.to_owned()).or_default() += 1;
            }
        }
    }
    for seq in from..from + COUNT {
        for ext in ["ts", "sig"] {
            let uri = format!("/live/demo/{seq}.{ext}");
            assert_eq!(
                misses.get(&uri).copied(),
                Some(1),
                "{uri}: passed to the origin {:?} times, not once\n{log}",
                misses.get(&uri)
            );
        }
    }
    // The origin's own count: every segment and signature it served went
    // to the shield once (the checks above fetched from it directly too).
    let m = String::from_utf8_lossy(&get(&format!("{o}/metrics")).await.body).into_owned();
    let served = |route: &str| {
        metric(
            &m,
            &format!(r#"treecast_origin_http_requests_total{{route="{route}",status="2xx"}}"#),
        )
    };
    let through_shield = |ext: &str| objects.iter().filter(|u| u.ends_with(ext)).count() as f64;
    assert_eq!(served("segment"), through_shield(".ts") + COUNT as f64);
    assert_eq!(served("signature"), through_shield(".sig"));
    for e in edges {
        e.shutdown().await;
    }
    drop(nginx);
    origin.shutdown().await;
}
