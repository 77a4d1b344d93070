//! Starting and stopping a whole peer; every task is owned by the
//! [`PeerHandle`] and stopped by one shutdown signal (after which the peer
//! leaves the tree politely, so its children are re-placed at once).

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{info, warn};
use treecast_proto::app::ConfigError;
use treecast_proto::http::{serve, DRAIN};
use treecast_proto::quic::{Identity, QuicSetupError};
use treecast_proto::OriginPublicKey;

use crate::config::PeerConfig;
use crate::edge_client::{EdgeClient, EdgeError};
use crate::edges::{self, Edges};
use crate::metrics::PeerMetrics;
use crate::proxy::{self, Proxy, Status};
use crate::shared::Shared;
use crate::store::{Store, StoreConfig};
use crate::{downstream, fallback, tracker, upstream};

/// Why the peer could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The QUIC endpoint could not be set up.
    #[error(transparent)]
    Quic(#[from] QuicSetupError),
    /// An address could not be bound.
    #[error("cannot listen on {addr}: {source} (is another process using it?)")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The IO error.
        source: std::io::Error,
    },
    /// The origin's key could not be had from any edge.
    #[error("cannot get the origin's public key from the edges ({edge}): {source}")]
    OriginKey {
        /// The edge.
        edge: String,
        /// Why.
        source: EdgeError,
    },
    /// The edge sent something that is not a key.
    #[error("the edge's /origin/key is not a public key: {0}")]
    BadOriginKey(String),
}

/// A running peer.
#[derive(Debug)]
pub struct PeerHandle {
    proxy_addr: SocketAddr,
    quic_addr: SocketAddr,
    shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

/// How long to keep asking the edge for the origin's key at start.
const KEY_ATTEMPTS: u32 = 40;

async fn origin_key(config: &PeerConfig, edges: &Edges) -> Result<OriginPublicKey, StartError> {
    if let Some(k) = config.pinned_origin_key()? {
        return Ok(k);
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
        match edges.get("/origin/key", 1024, Duration::from_secs(3)).await {
            Ok(b) => {
                let text = String::from_utf8_lossy(&b);
                return text
                    .trim()
                    .parse()
                    .map_err(|e| StartError::BadOriginKey(format!("{e}")));
            }
            Err(source) if attempt >= KEY_ATTEMPTS => {
                return Err(StartError::OriginKey {
                    edge: edges.bases().join(", "),
                    source,
                })
            }
            Err(e) => {
                if attempt == 1 {
                    warn!(error = %e, "edge not ready; retrying");
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

/// The address this host uses to reach `edge`: what children on other
/// hosts can reach too. No packet is sent.
fn local_ip_towards(edge: &http::Uri) -> Option<std::net::IpAddr> {
    let host = edge.host()?.trim_start_matches('[').trim_end_matches(']');
    let port = edge.port_u16().unwrap_or(80);
    let target = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .ok()?
        .next()?;
    let bind: SocketAddr = if target.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = UdpSocket::bind(bind).ok()?;
    s.connect(target).ok()?;
    Some(s.local_addr().ok()?.ip())
}

impl PeerHandle {
    /// Binds, asks the edge for the origin key, and starts.
    pub async fn start(config: PeerConfig) -> Result<Self, StartError> {
        config.validate()?;
        let channel = config.channel_name()?;
        let (edge_uris, unusable) = config.edge_uris()?;
        for why in &unusable {
            warn!("{why}; using the other edges");
        }
        let identity = Identity::generate()?;
        let fingerprint = identity.fingerprint_hex();
        // The certificate is fresh per process: its fingerprint is this
        // peer's random draw among equally near edges.
        let draw = u64::from_str_radix(fingerprint.get(..16).unwrap_or("0"), 16).unwrap_or(0);
        let edge_uris = edges::expand(&edge_uris, draw).await;
        let edges = Edges::probe(edge_uris.iter().map(EdgeClient::new).collect(), draw).await;
        let edge_uri = edge_uris[edges.current().0].clone();
        let key = origin_key(&config, &edges).await?;
        let bind_err = |addr| move |source| StartError::Bind { addr, source };
        let endpoint = quinn::Endpoint::server(identity.server_config()?, config.quic_listen)
            .map_err(bind_err(config.quic_listen))?;
        let quic_addr = endpoint
            .local_addr()
            .map_err(bind_err(config.quic_listen))?;
        let advertise = config.advertise.unwrap_or_else(|| {
            if quic_addr.ip().is_unspecified() {
                let ip = local_ip_towards(&edge_uri).unwrap_or(quic_addr.ip());
                SocketAddr::new(ip, quic_addr.port())
            } else {
                quic_addr
            }
        });
        let listener = TcpListener::bind(config.proxy_listen)
            .await
            .map_err(bind_err(config.proxy_listen))?;
        let proxy_addr = listener
            .local_addr()
            .map_err(bind_err(config.proxy_listen))?;
        let store = Store::new(
            channel.clone(),
            key,
            StoreConfig {
                buffer: config.buffer(),
                grace: Duration::from_millis(config.fallback_grace_ms),
                ..StoreConfig::default()
            },
        );
        let (reports_tx, reports) = mpsc::channel(8);
        let shared = Arc::new(Shared::new(
            channel,
            config,
            store,
            PeerMetrics::new(),
            edges,
            reports_tx,
            advertise,
            fingerprint,
        ));
        let (shutdown, rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let proxy = Arc::new(Proxy {
            shared: shared.clone(),
        });
        tasks.spawn(serve(listener, proxy, 256, rx.clone()));
        tasks.spawn(tracker::run(shared.clone(), reports, rx.clone()));
        tasks.spawn(upstream::run(shared.clone(), endpoint.clone(), rx.clone()));
        tasks.spawn(downstream::serve(
            shared.clone(),
            endpoint.clone(),
            rx.clone(),
        ));
        tasks.spawn(fallback::run(shared.clone(), rx));
        info!(%proxy_addr, %quic_addr, %advertise, channel = %shared.channel, "peer started");
        Ok(Self {
            proxy_addr,
            quic_addr,
            shared,
            endpoint,
            shutdown,
            tasks,
        })
    }

    /// The local proxy's address.
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_addr
    }

    /// The QUIC address bound.
    pub fn quic_addr(&self) -> SocketAddr {
        self.quic_addr
    }

    /// The player's URL.
    pub fn playlist_url(&self) -> String {
        format!(
            "http://{}/live/{}/index.m3u8",
            self.proxy_addr, self.shared.channel
        )
    }

    /// The status the proxy's `/status` shows.
    pub fn status(&self) -> Status {
        proxy::status(&self.shared)
    }

    /// Leaves the tree, stops every task and closes the endpoint.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        let _ = tokio::time::timeout(DRAIN + Duration::from_secs(1), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        self.tasks.abort_all();
        self.endpoint.close(0u32.into(), b"peer shutting down");
    }
}
