//! Helpers shared by the edge's integration tests.
#![allow(dead_code)] // each test binary uses a different subset

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// A whole HTTP answer.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// One HTTP request on loopback, answered within 20 s.
pub async fn http(method: Method, url: &str, body: Vec<u8>) -> Reply {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = Request::builder()
        .method(method)
        .uri(url)
        .body(Full::new(Bytes::from(body)))
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(20), client.request(req))
        .await
        .expect("answer within 20 s")
        .expect("request");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

/// GET `url`.
pub async fn get(url: &str) -> Reply {
    http(Method::GET, url, Vec::new()).await
}

/// The value of one series in a Prometheus text exposition; fails the test
/// when the series is missing (a renamed metric must not read as 0).
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .filter(|v| v.starts_with(' '))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("no series {series} in the exposition:\n{text}"))
}
