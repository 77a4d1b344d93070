//! Starting and stopping a whole agent; every task is owned by the
//! [`PeerHandle`] and stopped by one shutdown signal (after which the
//! agent leaves every channel's tree politely, so children are re-placed
//! at once).

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn};
use treecast_proto::app::ConfigError;
use treecast_proto::http::{serve, DRAIN};
use treecast_proto::quic::{Identity, QuicSetupError};
use treecast_proto::OriginPublicKey;

use crate::agent::{self, Agent, OpenError, Why};
use crate::config::{PeerConfig, DEFAULT_PROXY_PORT, PROXY_PORTS};
use crate::downstream;
use crate::edge_client::{EdgeClient, EdgeError};
use crate::edges::{self, Edges};
use crate::guard::Policy;
use crate::proxy::Proxy;
use crate::status::{agent_status, AgentStatus};

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
    /// A channel named in the configuration could not be joined.
    #[error(transparent)]
    Channel(#[from] OpenError),
}

/// A running agent.
#[derive(Debug)]
pub struct PeerHandle {
    proxy_addr: SocketAddr,
    quic_addr: SocketAddr,
    agent: Arc<Agent>,
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

/// A QUIC endpoint on `addr`, and a clone of its socket.
fn bind_quic(
    server: quinn::ServerConfig,
    addr: SocketAddr,
) -> std::io::Result<(quinn::Endpoint, UdpSocket)> {
    let socket = UdpSocket::bind(addr)?;
    socket.set_nonblocking(true)?;
    let clone = socket.try_clone()?;
    let runtime =
        quinn::default_runtime().ok_or_else(|| std::io::Error::other("no async runtime found"))?;
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server),
        socket,
        runtime,
    )?;
    Ok((endpoint, clone))
}

/// Binds the local proxy: `addr`, or when that is the default port and
/// taken, the next free port of [`PROXY_PORTS`] (where the player plugin
/// looks).
async fn bind_proxy(addr: SocketAddr) -> Result<TcpListener, StartError> {
    let first = TcpListener::bind(addr).await;
    match first {
        Ok(l) => Ok(l),
        Err(source)
            if addr.port() == DEFAULT_PROXY_PORT
                && source.kind() == std::io::ErrorKind::AddrInUse =>
        {
            for port in PROXY_PORTS.skip(1) {
                if let Ok(l) = TcpListener::bind(SocketAddr::new(addr.ip(), port)).await {
                    warn!(taken = %addr, port, "the default proxy port is taken; using the next free one");
                    return Ok(l);
                }
            }
            Err(StartError::Bind { addr, source })
        }
        Err(source) => Err(StartError::Bind { addr, source }),
    }
}

impl PeerHandle {
    /// Binds, asks the edge for the origin key, starts, and joins the
    /// configured channels.
    pub async fn start(config: PeerConfig) -> Result<Self, StartError> {
        config.validate()?;
        let channels = config.channel_names()?;
        let page_origins = config.origins()?;
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
        // The socket is bound here, not by quinn: traversal sends raw
        // datagrams from the same socket (`crate::traversal`).
        let (endpoint, punch_socket) = bind_quic(identity.server_config()?, config.quic_listen)
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
        let listener = bind_proxy(config.proxy_listen).await?;
        let proxy_addr = listener
            .local_addr()
            .map_err(bind_err(config.proxy_listen))?;
        // Pages the edges serve may use the agent, and those configured.
        let edge_origins = edges
            .bases()
            .into_iter()
            .filter_map(|b| crate::config::normalise_origin(&b));
        let policy = Policy::new(proxy_addr.port(), edge_origins.chain(page_origins));
        let (shutdown, rx) = watch::channel(false);
        let agent = Arc::new(Agent::new(
            config,
            Arc::new(edges),
            key,
            endpoint,
            punch_socket,
            advertise,
            fingerprint,
            rx.clone(),
        ));
        let mut tasks = JoinSet::new();
        let proxy = Arc::new(Proxy {
            agent: agent.clone(),
            policy,
        });
        tasks.spawn(serve(listener, proxy, 256, rx.clone()));
        tasks.spawn(downstream::serve(agent.clone(), rx.clone()));
        tasks.spawn(agent::reap(agent.clone(), rx));
        let handle = Self {
            proxy_addr,
            quic_addr,
            agent,
            shutdown,
            tasks,
        };
        for channel in &channels {
            if let Err(e) = handle.agent.open(channel.as_str(), Why::Config).await {
                handle.shutdown().await;
                return Err(e.into());
            }
        }
        info!(%proxy_addr, %quic_addr, %advertise, channels = channels.len(), "peer started");
        Ok(handle)
    }

    /// The local proxy's address.
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_addr
    }

    /// The QUIC address bound.
    pub fn quic_addr(&self) -> SocketAddr {
        self.quic_addr
    }

    /// The player's URL for `channel`.
    pub fn playlist_url(&self, channel: &str) -> String {
        format!("http://{}/live/{channel}/index.m3u8", self.proxy_addr)
    }

    /// The channels joined now.
    pub fn channels(&self) -> Vec<String> {
        self.agent
            .sessions()
            .iter()
            .map(|s| s.shared.channel.to_string())
            .collect()
    }

    /// The status the proxy's `/status` shows.
    pub fn status(&self) -> AgentStatus {
        agent_status(&self.agent)
    }

    /// Leaves every tree, stops every task and closes the endpoint.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        let _ = tokio::time::timeout(DRAIN + Duration::from_secs(2), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        self.tasks.abort_all();
        self.agent
            .endpoint
            .close(0u32.into(), b"peer shutting down");
    }
}
