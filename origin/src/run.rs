//! Starting and stopping a whole origin: key, channels, HTTP server, UDP
//! inputs and the retention sweeper, all owned by one [`OriginHandle`].
//!
//! Every task is in the handle's `JoinSet`; [`OriginHandle::shutdown`] sends
//! one signal, lets open requests finish for a moment, then aborts what is
//! left. Dropping the handle aborts everything.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::info;
use treecast_proto::http::serve;
use treecast_proto::{ChannelName, OriginPublicKey};

use crate::channel::Channels;
use crate::config::{ConfigError, OriginConfig};
use crate::metrics::OriginMetrics;
use crate::playlist::PlaylistConfig;
use crate::publish::{run_file, run_udp, Ingest};
use crate::rtmp::run_rtmp;
use crate::server::OriginService;
use crate::srt::run_srt;
use treecast_proto::keyfile::{self, KeyError};

/// Why the origin could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The signing key could not be loaded or created.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {source} (is another process using it?)")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The IO error.
        source: std::io::Error,
    },
}

/// A running origin.
#[derive(Debug)]
pub struct OriginHandle {
    local_addr: SocketAddr,
    udp_addrs: Vec<SocketAddr>,
    rtmp_addr: Option<SocketAddr>,
    public_key: OriginPublicKey,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl OriginHandle {
    /// Loads the key, binds every socket and starts serving.
    pub async fn start(config: OriginConfig) -> Result<Self, StartError> {
        config.validate()?;
        let key_path = config.signing_key_path();
        let (seed, created) = keyfile::load_or_create(&key_path)?;
        let key = treecast_proto::OriginKey::from_seed(seed);
        let public_key = key.public();
        if created {
            info!(path = %key_path.display(), %public_key, "generated a new origin signing key; give peers this public key");
        }
        let metrics = OriginMetrics::new();
        let channels = Arc::new(Channels::new(
            Arc::new(key),
            metrics.ingest.clone(),
            PlaylistConfig {
                target_duration: config
                    .segments
                    .target_duration
                    .unwrap_or(config.segments.max_target_duration),
                window_segments: config.segments.window_segments,
            },
            config.data_dir.join("channels"),
            config.max_channels,
        ));
        let ingest = Arc::new(Ingest::new(
            channels.clone(),
            config.segments.clone(),
            metrics.ingest.clone(),
        ));
        let service = Arc::new(OriginService {
            ingest: ingest.clone(),
            channels: channels.clone(),
            metrics,
            publish_key: config.publish.key.clone(),
            public_key,
        });
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(bind_error(config.listen))?;
        let local_addr = listener.local_addr().map_err(bind_error(config.listen))?;
        let (shutdown, rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let mut udp_addrs = Vec::new();
        for input in &config.udp {
            let socket = UdpSocket::bind(input.listen)
                .await
                .map_err(bind_error(input.listen))?;
            udp_addrs.push(socket.local_addr().unwrap_or(input.listen));
            // Validated in `config.validate()`.
            let Ok(channel) = ChannelName::new(&input.channel) else {
                continue;
            };
            info!(listen = %input.listen, %channel, "receiving MPEG-TS over UDP");
            tasks.spawn(run_udp(ingest.clone(), socket, channel, rx.clone()));
        }
        for input in &config.file {
            let Ok(channel) = ChannelName::new(&input.channel) else {
                continue;
            };
            info!(file = %input.path.display(), %channel, "looping file into channel in real time");
            tasks.spawn(run_file(
                ingest.clone(),
                input.path.clone(),
                channel,
                rx.clone(),
            ));
        }
        let mut rtmp_addr = None;
        if let Some(rtmp) = &config.rtmp {
            let listener = TcpListener::bind(rtmp.listen)
                .await
                .map_err(bind_error(rtmp.listen))?;
            let addr = listener.local_addr().unwrap_or(rtmp.listen);
            info!(listen = %addr, "accepting RTMP publishers: rtmp://{addr}/live/<channel>");
            rtmp_addr = Some(addr);
            let key = config.publish.key.as_deref().map(Arc::from);
            tasks.spawn(run_rtmp(ingest.clone(), listener, key, rx.clone()));
        }
        if let Some(srt) = &config.srt {
            let latency = Duration::from_millis(srt.latency_ms);
            let bound = crate::srt::bind(srt.listen, latency)
                .await
                .map_err(bind_error(srt.listen))?;
            info!(listen = %srt.listen, "accepting SRT callers: srt://{}?streamid=<channel>", srt.listen);
            let key = config.publish.key.as_deref().map(Arc::from);
            tasks.spawn(run_srt(
                ingest.clone(),
                srt.listen,
                latency,
                bound,
                key,
                rx.clone(),
            ));
        }
        tasks.spawn(sweep(channels, rx.clone()));
        tasks.spawn(serve(listener, service, config.max_connections, rx));
        info!(%local_addr, "origin listening");
        Ok(Self {
            local_addr,
            udp_addrs,
            rtmp_addr,
            public_key,
            shutdown,
            tasks,
        })
    }

    /// The HTTP address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The RTMP listener's bound address, if RTMP is on.
    pub fn rtmp_addr(&self) -> Option<SocketAddr> {
        self.rtmp_addr
    }

    /// The UDP input addresses actually bound, in config order.
    pub fn udp_addrs(&self) -> &[SocketAddr] {
        &self.udp_addrs
    }

    /// The origin's public signing key.
    pub fn public_key(&self) -> OriginPublicKey {
        self.public_key
    }

    /// Stops accepting, lets open requests finish briefly, then stops all.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        let _ = tokio::time::timeout(
            treecast_proto::http::DRAIN + Duration::from_secs(1),
            async { while self.tasks.join_next().await.is_some() {} },
        )
        .await;
        self.tasks.abort_all();
    }
}

/// Maps a failure to bind `addr` to the start error that names it.
fn bind_error(addr: SocketAddr) -> impl FnOnce(std::io::Error) -> StartError {
    move |source| StartError::Bind { addr, source }
}

async fn sweep(channels: Arc<Channels>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => channels.sweep(SystemTime::now()),
            _ = shutdown.changed() => return,
        }
    }
}
