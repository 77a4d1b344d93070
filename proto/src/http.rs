//! HTTP response helpers shared by every role's server (origin, edge, the
//! peer's local proxy): fixed and growing bodies, CORS and caching headers,
//! plain-text errors that are never cached.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::GrowingBody;
use bytes::Bytes;
use futures_util::stream;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::warn;

/// Error type of streamed response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every response body a treecast server sends.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Content type of HLS playlists.
pub const PLAYLIST_TYPE: &str = "application/vnd.apple.mpegurl";
/// Content type of MPEG-TS segments.
pub const SEGMENT_TYPE: &str = "video/mp2t";
/// Cache-Control of immutable objects (segments, signatures).
pub const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// A body of fixed bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|e: Infallible| match e {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty() -> Body {
    full(Bytes::new())
}

/// A response with an empty body.
pub fn empty_response() -> Response<Body> {
    Response::new(empty())
}

/// A body that streams a growing segment as its bytes arrive. If the
/// segment fails, the response is cut off with an error, so a client never
/// takes a partial segment for a whole one.
pub fn growing(body: &GrowingBody) -> Body {
    let reader = body.reader();
    let s = stream::unfold(reader, |mut r| async move {
        match r.next_chunk().await {
            Ok(Some(chunk)) => Some((Ok(Frame::data(chunk)), r)),
            Ok(None) => None,
            Err(e) => Some((Err(Box::new(e) as BoxError), r)),
        }
    });
    StreamBody::new(s).boxed_unsync()
}

/// Adds the headers every response carries: CORS for hls.js in pages from
/// any origin.
pub fn with_cors(mut resp: Response<Body>) -> Response<Body> {
    let h = resp.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Content-Length, Content-Type, Date"),
    );
    resp
}

/// The answer to a HEAD request: `resp` without its body, keeping the
/// length the body would have had when it is known.
pub fn head_only(resp: Response<Body>) -> Response<Body> {
    let len = http_body::Body::size_hint(resp.body()).exact();
    let (mut parts, _) = resp.into_parts();
    if let Some(len) = len {
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    Response::from_parts(parts, empty())
}

/// A response with `body`, its content type and caching policy.
pub fn object(
    status: StatusCode,
    body: impl Into<Bytes>,
    content_type: &'static str,
    cache_control: &'static str,
) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control),
    );
    r
}

/// A plain-text response, never cached.
pub fn text(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let mut msg = msg.into();
    msg.push('\n');
    object(status, msg, "text/plain; charset=utf-8", "no-store")
}

/// A JSON response, never cached.
pub fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    object(status, body, "application/json", "no-store")
}

/// The text exposition of every metric in `registry`.
pub fn render_metrics(registry: &prometheus::Registry) -> String {
    use prometheus::Encoder;
    let mut out = Vec::new();
    // Encoding gathered families into a Vec does not fail.
    let _ = prometheus::TextEncoder::new().encode(&registry.gather(), &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// A Prometheus text exposition response.
pub fn prometheus(text: String) -> Response<Body> {
    object(
        StatusCode::OK,
        text,
        "text/plain; version=0.0.4; charset=utf-8",
        "no-store",
    )
}

/// The status class label of a response (`2xx`, `4xx`, ...).
pub fn status_class(resp: &Response<Body>) -> &'static str {
    match resp.status().as_u16() / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}

/// Reads a request body of at most `max` bytes; a longer or broken one is
/// answered with 413 and the reason, naming `what` the body was for.
pub async fn read_body(
    body: hyper::body::Incoming,
    max: usize,
    what: &str,
) -> Result<Bytes, Response<Body>> {
    use http_body_util::BodyExt;
    match http_body_util::Limited::new(body, max).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(_) => Err(text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("{what} body over {max} bytes, or unreadable"),
        )),
    }
}

/// A JSON request body that could not be taken: the answer to send, and a
/// metric label (`too_large` or `malformed`).
#[derive(Debug)]
pub struct BodyRefused {
    /// The answer (413 or 400, with the reason).
    pub response: Response<Body>,
    /// `too_large` or `malformed`.
    pub label: &'static str,
}

/// Reads a JSON request body of at most `max` bytes into `T`, naming
/// `what` it was in the answer when it cannot.
pub async fn read_json<T: serde::de::DeserializeOwned>(
    body: hyper::body::Incoming,
    max: usize,
    what: &str,
) -> Result<T, BodyRefused> {
    let bytes = read_body(body, max, what)
        .await
        .map_err(|response| BodyRefused {
            response,
            label: "too_large",
        })?;
    serde_json::from_slice(&bytes).map_err(|e| BodyRefused {
        response: text(StatusCode::BAD_REQUEST, format!("not a {what}: {e}")),
        label: "malformed",
    })
}

/// The response to a CORS preflight.
pub fn preflight() -> Response<Body> {
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, HEAD, OPTIONS, PUT, POST"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Authorization, Content-Type, Range"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    r
}

/// The client's address, put in every request's extensions by [`serve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteAddr(pub std::net::SocketAddr);

/// How long open requests may run on after a shutdown signal.
pub const DRAIN: Duration = Duration::from_secs(3);
/// How long a connection may take to send a request's headers, and may sit
/// idle between requests: a client that vanished (its FIN lost, its
/// process killed behind a NAT) does not hold a connection slot forever.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// A server's request handler: answers every request (problems are
/// responses, never errors). [`serve`] adds the CORS headers (unless the
/// handler decides them itself, [`Handler::CORS_ANY_ORIGIN`]) and strips
/// the body of answers to HEAD, so handlers answer HEAD as they answer GET.
pub trait Handler: Send + Sync + 'static {
    /// Every response is readable by pages of any origin ([`with_cors`]):
    /// true for the origin and the edge, which serve public content; false
    /// for a server on a viewer's machine, which grants origins itself.
    const CORS_ANY_ORIGIN: bool = true;

    /// Answers one request.
    fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> impl Future<Output = Response<Body>> + Send;
}

/// Serves HTTP/1.1 on `listener` with `service` until `shutdown` changes:
/// at most `max_connections` at once (more are refused), each closed when
/// its next request's headers take over [`HEADER_TIMEOUT`], every
/// connection task owned here, open requests given [`DRAIN`] to finish at
/// shutdown.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    service: Arc<H>,
    max_connections: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let limit = Arc::new(Semaphore::new(max_connections));
    let graceful = GracefulShutdown::new();
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => { warn!(error = %e, "accept failed"); continue; }
                };
                let Ok(permit) = limit.clone().try_acquire_owned() else {
                    warn!(%peer, max_connections, "connection limit reached; refusing connection");
                    continue;
                };
                let svc = service.clone();
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(
                        TokioIo::new(stream),
                        service_fn(move |mut req: Request<Incoming>| {
                            req.extensions_mut().insert(RemoteAddr(peer));
                            let head = req.method() == http::Method::HEAD;
                            let svc = svc.clone();
                            async move {
                                let resp = svc.handle(req).await;
                                let resp = if H::CORS_ANY_ORIGIN { with_cors(resp) } else { resp };
                                Ok::<_, Infallible>(if head { head_only(resp) } else { resp })
                            }
                        }),
                    );
                let conn = graceful.watch(conn);
                conns.spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                    drop(permit);
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(DRAIN, graceful.shutdown()).await;
    conns.abort_all();
}
