//! The peer's HTTP client for its edge: tracker requests, the origin's
//! key, and fallback fetches of playlists and segments. Every answer is
//! size-limited and time-limited; nothing the edge sends is trusted beyond
//! what the caller verifies.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use treecast_proto::app::error_chain;
use treecast_proto::body::BodyWriter;

/// Why a request to the edge failed. All are worth retrying later.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// The URL could not be built.
    #[error("bad edge URL {0}")]
    Url(String),
    /// No connection, or the request failed in transport.
    #[error("request to the edge failed: {0}")]
    Transport(String),
    /// No complete answer in time.
    #[error("the edge did not answer within {0:?}")]
    Timeout(Duration),
    /// The answer was larger than allowed.
    #[error("the edge's answer exceeds {0} bytes")]
    TooLarge(usize),
    /// The edge answered with an error status.
    #[error("the edge answered {status}: {message}")]
    Status {
        /// Its status.
        status: StatusCode,
        /// Its explanation (the start of its body).
        message: String,
    },
    /// The answer was not the JSON expected.
    #[error("unexpected answer from the edge: {0}")]
    Json(String),
}

/// Opens a TCP connection to an address: how a client reaches a server
/// that is not in this process's network namespace (the harness's players
/// reach their peer's proxy that way, [`EdgeClient::with_dialer`]).
pub type Dial = Arc<
    dyn Fn(SocketAddr) -> Pin<Box<dyn Future<Output = std::io::Result<TcpStream>> + Send>>
        + Send
        + Sync,
>;

/// The client's connector: the system's, or a [`Dial`].
#[derive(Clone)]
pub struct Connector {
    http: HttpConnector,
    dial: Option<Dial>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("dial", &self.dial.is_some())
            .finish()
    }
}

type Connecting = Pin<Box<dyn Future<Output = Result<TokioIo<TcpStream>, BoxError>> + Send>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Connecting;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let Some(dial) = self.dial.clone() else {
            let connecting = self.http.call(uri);
            return Box::pin(async move { connecting.await.map_err(Into::into) });
        };
        Box::pin(async move {
            // Dialers are for numeric addresses (no DNS in another namespace).
            let addr: SocketAddr = uri
                .authority()
                .map(|a| a.as_str())
                .unwrap_or_default()
                .parse()
                .map_err(|_| format!("{uri}: a dialer needs an IP address and port"))?;
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, dial(addr))
                .await
                .map_err(|_| format!("connecting to {addr} timed out"))??;
            stream.set_nodelay(true)?;
            Ok(TokioIo::new(stream))
        })
    }
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A client for one edge.
#[derive(Debug, Clone)]
pub struct EdgeClient {
    base: String,
    client: Client<Connector, Full<Bytes>>,
}

impl EdgeClient {
    /// A client for the edge at `base` (`http://host:port`).
    pub fn new(base: &Uri) -> Self {
        Self::build(base, None)
    }

    /// A client for `base` whose connections `dial` opens.
    pub fn with_dialer(base: &Uri, dial: Dial) -> Self {
        Self::build(base, Some(dial))
    }

    fn build(base: &Uri, dial: Option<Dial>) -> Self {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.set_nodelay(true);
        Self {
            base: base.to_string().trim_end_matches('/').to_owned(),
            client: Client::builder(TokioExecutor::new())
                // Idle connections are few and short-lived: a burst of
                // fallbacks must not leave a pile of them at the edge.
                .pool_max_idle_per_host(4)
                .pool_idle_timeout(Duration::from_secs(15))
                .pool_timer(hyper_util::rt::TokioTimer::new())
                .build(Connector { http, dial }),
        }
    }

    /// The edge's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// GETs `path`, whole, at most `limit` bytes, within `timeout`.
    pub async fn get(
        &self,
        path: &str,
        limit: usize,
        timeout: Duration,
    ) -> Result<Bytes, EdgeError> {
        self.request(Method::GET, path, (Bytes::new(), ""), limit, timeout)
            .await
    }

    /// GETs `path` and pushes each chunk to `into` as it arrives (the
    /// edge streams a segment while the origin cuts it), at most `limit`
    /// bytes, within `timeout`; finishes `into` at the end, fails it on
    /// any error. Returns the bytes received.
    pub async fn get_streaming(
        &self,
        path: &str,
        limit: usize,
        timeout: Duration,
        into: BodyWriter,
    ) -> Result<usize, EdgeError> {
        let work = async {
            let resp = self.send(Method::GET, path, (Bytes::new(), "")).await?;
            let status = resp.status();
            if status != StatusCode::OK {
                return Err(EdgeError::Status {
                    status,
                    message: String::new(),
                });
            }
            let mut body = resp.into_body();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| EdgeError::Transport(e.to_string()))?;
                if let Ok(chunk) = frame.into_data() {
                    if into.len() + chunk.len() > limit {
                        return Err(EdgeError::TooLarge(limit));
                    }
                    into.push(chunk);
                }
            }
            Ok(into.len())
        };
        let result = tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| EdgeError::Timeout(timeout))
            .and_then(|r| r);
        match &result {
            Ok(_) => into.finish(),
            Err(e) => into.fail(e.to_string()),
        }
        result
    }

    /// POSTs JSON to `path` and parses the JSON answer.
    pub async fn post_json<Q: serde::Serialize, A: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &Q,
        timeout: Duration,
    ) -> Result<A, EdgeError> {
        let body = serde_json::to_vec(body).map_err(|e| EdgeError::Json(e.to_string()))?;
        let answer = self
            .request(
                Method::POST,
                path,
                (body.into(), "application/json"),
                64 * 1024,
                timeout,
            )
            .await?;
        serde_json::from_slice(&answer).map_err(|e| EdgeError::Json(e.to_string()))
    }

    /// POSTs `body` (raw bytes) to `path` and parses the JSON answer. The
    /// edge may answer before it read the whole body (an uplink test).
    pub async fn post_bytes<A: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: Bytes,
        timeout: Duration,
    ) -> Result<A, EdgeError> {
        let answer = self
            .request(
                Method::POST,
                path,
                (body, "application/octet-stream"),
                64 * 1024,
                timeout,
            )
            .await?;
        serde_json::from_slice(&answer).map_err(|e| EdgeError::Json(e.to_string()))
    }

    /// Sends a request to `path` with a body of a content type (none when
    /// the body is empty); the response as its head arrives.
    async fn send(
        &self,
        method: Method,
        path: &str,
        (body, content_type): (Bytes, &'static str),
    ) -> Result<http::Response<hyper::body::Incoming>, EdgeError> {
        let url = format!("{}{path}", self.base);
        let uri: Uri = url.parse().map_err(|_| EdgeError::Url(url.clone()))?;
        let mut req = Request::builder().method(method).uri(uri);
        if !body.is_empty() {
            req = req.header(http::header::CONTENT_TYPE, content_type);
        }
        let req = req.body(Full::new(body)).map_err(|_| EdgeError::Url(url))?;
        self.client
            .request(req)
            .await
            .map_err(|e| EdgeError::Transport(error_chain(&e)))
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        body: (Bytes, &'static str),
        limit: usize,
        timeout: Duration,
    ) -> Result<Bytes, EdgeError> {
        let work = async {
            let resp = self.send(method, path, body).await?;
            let status = resp.status();
            let bytes = Limited::new(resp.into_body(), limit)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        EdgeError::TooLarge(limit)
                    } else {
                        EdgeError::Transport(e.to_string())
                    }
                })?
                .to_bytes();
            if status != StatusCode::OK {
                let message = String::from_utf8_lossy(&bytes)
                    .trim()
                    .chars()
                    .take(300)
                    .collect();
                return Err(EdgeError::Status { status, message });
            }
            Ok(bytes)
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| EdgeError::Timeout(timeout))?
    }
}
