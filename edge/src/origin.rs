//! The edge's HTTP client for its origin.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use treecast_proto::app::error_chain;

/// Why a fetch from the origin failed.
#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    /// The URL could not be built (a bug or a bad configured base URL).
    #[error("bad origin URL {0}")]
    Url(String),
    /// No connection, or the request failed in transport.
    #[error("request to the origin failed: {0}")]
    Transport(String),
    /// No response head within the timeout.
    #[error("the origin did not answer within {0:?}")]
    Timeout(Duration),
    /// The origin answered with something other than 200.
    #[error("the origin answered {status}: {message}")]
    Status {
        /// Its status.
        status: StatusCode,
        /// Its explanation (the start of its body).
        message: String,
    },
}

/// Fetches objects from one origin.
#[derive(Debug, Clone)]
pub struct OriginClient {
    base: String,
    client: Client<HttpConnector, Empty<Bytes>>,
    timeout: Duration,
}

/// A 200 response whose body is still arriving.
#[derive(Debug)]
pub struct OriginResponse {
    body: Incoming,
}

impl OriginResponse {
    /// The next piece of the body; `None` at its end.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, hyper::Error> {
        while let Some(frame) = self.body.frame().await {
            if let Ok(data) = frame?.into_data() {
                if !data.is_empty() {
                    return Ok(Some(data));
                }
            }
        }
        Ok(None)
    }

    /// The whole body.
    pub async fn collect(self) -> Result<Bytes, hyper::Error> {
        Ok(self.body.collect().await?.to_bytes())
    }
}

impl OriginClient {
    /// A client for the origin at `base` (e.g. `http://127.0.0.1:8080`);
    /// `timeout` bounds the wait for a response head.
    pub fn new(base: &Uri, timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        connector.set_nodelay(true);
        Self {
            base: base.to_string().trim_end_matches('/').to_owned(),
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout,
        }
    }

    /// GETs `path` (starting with `/`).
    pub async fn get(&self, path: &str) -> Result<OriginResponse, OriginError> {
        let url = format!("{}{path}", self.base);
        let uri: Uri = url.parse().map_err(|_| OriginError::Url(url.clone()))?;
        let req = Request::get(uri)
            .body(Empty::new())
            .map_err(|_| OriginError::Url(url))?;
        let resp = tokio::time::timeout(self.timeout, self.client.request(req))
            .await
            .map_err(|_| OriginError::Timeout(self.timeout))?
            .map_err(|e| OriginError::Transport(error_chain(&e)))?;
        let status = resp.status();
        if status != StatusCode::OK {
            let body = tokio::time::timeout(self.timeout, resp.into_body().collect())
                .await
                .ok()
                .and_then(Result::ok)
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let message: String = String::from_utf8_lossy(&body)
                .trim()
                .chars()
                .take(300)
                .collect();
            return Err(OriginError::Status { status, message });
        }
        Ok(OriginResponse {
            body: resp.into_body(),
        })
    }
}
