//! Starting and stopping a whole edge; every task is owned by the
//! [`EdgeHandle`] and stopped by one shutdown signal.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::info;
use treecast_proto::http::{serve, DRAIN};
use treecast_proto::keyfile::{self, KeyError};
use treecast_proto::ticket::SigningKey;
use treecast_proto::viewer::ReportBook;

use crate::root::{self, Root};
use crate::tracker::service::{TrackerService, TrackerSettings};
use crate::tracker::TrackerConfig;
use treecast_proto::quic::{Identity, QuicSetupError};

use crate::cache::{Cache, CacheConfig};
use crate::config::{ConfigError, EdgeConfig};
use crate::metrics::EdgeMetrics;
use crate::origin::OriginClient;
use crate::server::EdgeService;

/// Why the edge could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The ticket signing key could not be loaded or created.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The QUIC endpoint could not be set up.
    #[error(transparent)]
    Quic(#[from] QuicSetupError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source} (is another process using it?)")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The IO error.
        source: std::io::Error,
    },
}

/// A running edge.
#[derive(Debug)]
pub struct EdgeHandle {
    local_addr: SocketAddr,
    quic_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    cache: Arc<Cache>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl EdgeHandle {
    /// Binds and starts serving.
    pub async fn start(config: EdgeConfig) -> Result<Self, StartError> {
        config.validate()?;
        let origin = OriginClient::new(
            &config.origin_uri()?,
            Duration::from_millis(config.origin_timeout_ms),
        );
        let metrics = EdgeMetrics::new();
        let cache = Cache::new(
            origin,
            CacheConfig {
                max_bytes: config.cache_max_mb << 20,
                default_playlist_ttl: Duration::from_secs(1),
                origin_key: config.pinned_origin_key()?,
            },
            metrics.cache.clone(),
        );
        let identity = Identity::generate()?;
        let quic_server = identity.server_config()?;
        let endpoint =
            root::bind(config.quic_listen, quic_server).map_err(|source| StartError::Bind {
                addr: config.quic_listen,
                source,
            })?;
        let quic_addr = endpoint.local_addr().map_err(|source| StartError::Bind {
            addr: config.quic_listen,
            source,
        })?;
        // The second port peers behind NATs ask (`observe_listen`).
        let observe_at = config
            .observe_listen
            .unwrap_or(SocketAddr::new(quic_addr.ip(), 0));
        let observe_endpoint =
            root::bind(observe_at, identity.server_config()?).map_err(|source| {
                StartError::Bind {
                    addr: observe_at,
                    source,
                }
            })?;
        let observe_addr = observe_endpoint
            .local_addr()
            .map_err(|source| StartError::Bind {
                addr: observe_at,
                source,
            })?;
        let key_path = config.data_dir.join("edge.key");
        let (seed, created) = keyfile::load_or_create(&key_path)?;
        let t = &config.tracker;
        let tracker = Arc::new(TrackerService::new(
            TrackerSettings {
                core: TrackerConfig {
                    root_slots: t.root_slots,
                    max_depth: t.max_depth,
                    max_children: t.max_children,
                    stream_kbps: t.stream_kbps,
                    promote_after: Duration::from_secs(t.promote_after_secs),
                    probation_slots: t.probation_slots,
                    heartbeat_timeout: Duration::from_secs(t.heartbeat_timeout_secs),
                    ..TrackerConfig::default()
                },
                ticket_ttl: Duration::from_secs(t.ticket_ttl_secs),
                viewer_tokens: t.viewer_tokens.clone(),
                max_channels: 64,
                rate_per_sec: t.rate_per_sec,
                root_addr: Some(quic_addr),
                observe_also: Some(observe_addr),
                root_fingerprint: Some(identity.fingerprint_hex()),
            },
            SigningKey::from_bytes(&seed),
            metrics.tracker.clone(),
        ));
        if created {
            info!(path = %key_path.display(), ticket_key = %tracker.ticket_key(), "generated a new ticket signing key");
        }
        let ticket_key = SigningKey::from_bytes(&seed).verifying_key();
        let vouch = tracker.clone();
        let root = Root::new(
            cache.clone(),
            ticket_key,
            metrics.root.clone(),
            config.tracker.root_slots as usize,
            Arc::new(move |channel, peer| vouch.names_the_edge(channel, peer)),
        );
        let history = Arc::new(crate::dashboard::History::default());
        let sampler_metrics = metrics.clone();
        let metrics_only = config.metrics_listen.map(|_| {
            Arc::new(crate::server::MetricsOnly {
                metrics: metrics.clone(),
            })
        });
        let service = Arc::new(EdgeService {
            cache: cache.clone(),
            metrics,
            history: history.clone(),
            stream_kbps: config.tracker.stream_kbps,
            pricing: crate::dashboard::Pricing {
                per_gb: config.price_per_gb,
                currency: config.currency.clone(),
            },
            dashboard_token: config.dashboard_token.clone(),
            serve_metrics: config.metrics_listen.is_none(),
            event_edges: config.event_edges.clone(),
            tracker: tracker.clone(),
            player_reports: std::sync::Mutex::new(ReportBook::new(
                crate::server::DIRECT_REPORT_SESSIONS,
            )),
        });
        let bind_err = |source| StartError::Bind {
            addr: config.listen,
            source,
        };
        let listener = TcpListener::bind(config.listen).await.map_err(bind_err)?;
        let local_addr = listener.local_addr().map_err(bind_err)?;
        let (shutdown, rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        tasks.spawn(serve(listener, service, config.max_connections, rx.clone()));
        tasks.spawn(crate::dashboard::run_sampler(
            history,
            tracker.clone(),
            sampler_metrics,
            rx.clone(),
        ));
        let mut metrics_addr = None;
        if let (Some(addr), Some(handler)) = (config.metrics_listen, metrics_only) {
            let err = |source| StartError::Bind { addr, source };
            let l = TcpListener::bind(addr).await.map_err(err)?;
            let bound = l.local_addr().map_err(err)?;
            info!(addr = %bound, "metrics on a separate address");
            metrics_addr = Some(bound);
            tasks.spawn(serve(l, handler, 64, rx.clone()));
        }
        tasks.spawn(tick(tracker, rx.clone()));
        tasks.spawn(root.clone().serve(observe_endpoint, rx.clone()));
        tasks.spawn(root.serve(endpoint, rx));
        info!(%local_addr, %quic_addr, origin = %config.origin, "edge listening");
        Ok(Self {
            local_addr,
            quic_addr,
            metrics_addr,
            cache,
            shutdown,
            tasks,
        })
    }

    /// The HTTP address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The QUIC address actually bound (the root of the tree).
    pub fn quic_addr(&self) -> SocketAddr {
        self.quic_addr
    }

    /// The separate metrics address actually bound, if configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The cache (for status and tests).
    pub fn cache(&self) -> &Arc<Cache> {
        &self.cache
    }

    /// Stops accepting, lets open requests finish briefly, then stops all.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        let _ = tokio::time::timeout(DRAIN + Duration::from_secs(1), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        self.tasks.abort_all();
    }
}

/// Runs the tracker's timeouts every half second until shutdown.
async fn tick(tracker: Arc<TrackerService>, mut shutdown: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = every.tick() => tracker.tick(std::time::Instant::now()),
            _ = shutdown.changed() => return,
        }
    }
}
