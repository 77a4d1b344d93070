//! The agent: one per machine, any number of channels, each joined while a
//! player plays it.
//!
//! - the agent owns what the machine has once: the event's edges, the
//!   origin's key, the QUIC endpoint (one UDP socket for every channel's
//!   parents and children), the upload cap shared by every channel's
//!   children, and the figures of [`AgentMetrics`];
//! - each channel joined is a [`Session`]: its store, its tree tasks
//!   (tracker, upstream, fallback, [`crate::tracker`] and the rest), its
//!   counters. A player asking for `/live/<channel>/index.m3u8` opens one
//!   ([`Agent::open`]): the name is checked, the edge is asked for the
//!   channel's playlist (a channel no edge carries creates nothing), and
//!   that playlist seeds the store, so the first segments come from the
//!   edge (counted as fallbacks) while the tracker places the peer (a
//!   channel pre-joined at start has no player waiting, and lets the tree
//!   deliver);
//! - channels named in the configuration are opened at start and kept;
//!   the others are left (the tracker is told) once no player has asked
//!   for anything of theirs for `idle_secs` ([`reap`]);
//! - at most `max_channels` are joined at once; a player asking for one
//!   more is refused until one is left;
//! - children connecting over QUIC name their channel in their hello
//!   ([`crate::downstream`] finds its session with [`Agent::session`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{info, warn};
use treecast_proto::http::DRAIN;
use treecast_proto::tree::UploadCap;
use treecast_proto::uplink::Shedder;
use treecast_proto::{ChannelName, OriginPublicKey};

use crate::config::PeerConfig;
use crate::edge_client::EdgeError;
use crate::edges::{is_edge_failure, Edges};
use crate::metrics::{AgentMetrics, PeerMetrics};
use crate::shared::{Shared, Source};
use crate::store::{Store, StoreConfig};
use crate::traversal::Traversal;
use crate::{fallback, http_feed, tracker, upstream};

/// Largest playlist the agent accepts from the edge when it opens a
/// channel.
const PLAYLIST_LIMIT: usize = 1 << 20;
/// How long the edge gets to answer for a channel being opened.
const OPEN_TIMEOUT: Duration = Duration::from_secs(3);
/// How often idle channels are looked for.
const REAP_EVERY: Duration = Duration::from_secs(1);

/// Why a channel could not be opened. Nothing is created when one is.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The name is not a channel name.
    #[error("{0}")]
    BadName(String),
    /// No edge carries the channel (the edge answered 404).
    #[error("no edge carries channel {0}")]
    Unknown(String),
    /// `max_channels` are joined already.
    #[error("{0} channels are playing already (max_channels); stop one and retry")]
    Full(usize),
    /// The edge could not be asked, or refused for another reason; a
    /// retry may succeed.
    #[error("cannot open channel {channel}: {source}")]
    Edge {
        /// The channel.
        channel: String,
        /// What the edge said, or why it could not be asked.
        source: EdgeError,
    },
    /// The agent is stopping.
    #[error("the agent is shutting down")]
    ShuttingDown,
}

/// Why a session was opened, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// A player asked.
    Player,
    /// The configuration pre-joins it.
    Config,
}

/// One joined channel: its shared state and its tasks.
#[derive(Debug)]
pub struct Session {
    /// The channel's state, as every task of it sees it.
    pub shared: Arc<Shared>,
    /// Times deliveries to this channel's children and sheds the newest
    /// when they run late (per channel: segment numbers are per channel).
    pub shedder: Arc<Shedder>,
    /// Kept while the agent runs (pre-joined).
    pinned: bool,
    /// When a player last asked for something of this channel, ms after
    /// the agent started.
    last_used_ms: AtomicU64,
    /// Stops this session's tasks.
    stop: watch::Sender<bool>,
    tasks: Mutex<JoinSet<()>>,
}

impl Session {
    /// A player asked for something of this channel now.
    pub fn touch(&self, agent: &Agent) {
        self.last_used_ms.store(agent.ms_now(), Ordering::Relaxed);
    }

    /// Kept while the agent runs.
    pub fn pinned(&self) -> bool {
        self.pinned
    }

    /// Stops its tasks (the tracker task leaves the tree first) and waits
    /// for them, at most the drain time.
    async fn close(&self) {
        let _ = self.stop.send(true);
        let mut tasks = std::mem::take(&mut *lock(&self.tasks));
        let _ = tokio::time::timeout(DRAIN + Duration::from_secs(1), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        tasks.abort_all();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update under these locks is a single call; a panic elsewhere
    // leaves them consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What every session shares; see the module docs.
#[derive(Debug)]
pub struct Agent {
    /// Settings.
    pub config: PeerConfig,
    /// The event's edges and the one in use.
    pub edges: Arc<Edges>,
    key: OriginPublicKey,
    /// The QUIC endpoint every channel uses.
    pub endpoint: quinn::Endpoint,
    /// Reflexive address and punching, over that endpoint's socket.
    pub traversal: Arc<Traversal>,
    /// This agent's QUIC address as given to trackers.
    pub advertise: SocketAddr,
    /// Its certificate fingerprint.
    pub fingerprint: String,
    /// The upload cap every channel's children share (`None`: no cap).
    pub upload_cap: Option<Arc<UploadCap>>,
    /// The agent's own figures.
    pub metrics: AgentMetrics,
    sessions: Mutex<BTreeMap<ChannelName, Arc<Session>>>,
    shutdown: watch::Receiver<bool>,
    started: Instant,
}

impl Agent {
    /// An agent with no channel open yet.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: PeerConfig,
        edges: Arc<Edges>,
        key: OriginPublicKey,
        endpoint: quinn::Endpoint,
        punch_socket: std::net::UdpSocket,
        advertise: SocketAddr,
        fingerprint: String,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let upload_cap = config
            .max_upload_kbps
            .filter(|&k| k > 0)
            .map(|k| Arc::new(UploadCap::new(k)));
        Self {
            config,
            edges,
            key,
            traversal: Arc::new(Traversal::new(endpoint.clone(), punch_socket)),
            endpoint,
            advertise,
            fingerprint,
            upload_cap,
            metrics: AgentMetrics::new(),
            sessions: Mutex::new(BTreeMap::new()),
            shutdown,
            started: Instant::now(),
        }
    }

    fn ms_now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Seconds since the agent started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The session of `channel`, if it is joined.
    pub fn session(&self, channel: &str) -> Option<Arc<Session>> {
        let name = ChannelName::new(channel).ok()?;
        lock(&self.sessions).get(&name).cloned()
    }

    /// Every joined channel's session, by name.
    pub fn sessions(&self) -> Vec<Arc<Session>> {
        lock(&self.sessions).values().cloned().collect()
    }

    /// The session of `channel`, joining it first if needed; see the
    /// module docs.
    pub async fn open(&self, channel: &str, why: Why) -> Result<Arc<Session>, OpenError> {
        let name = ChannelName::new(channel).map_err(|e| OpenError::BadName(e.to_string()))?;
        if let Some(s) = self.find_or_refuse(&name)? {
            return Ok(s);
        }
        // Ask the edge before creating anything: a name no edge carries
        // leaves no trace.
        let path = format!("/live/{name}/index.m3u8");
        let playlist = match self.edges.get(&path, PLAYLIST_LIMIT, OPEN_TIMEOUT).await {
            Ok(b) => b,
            Err(EdgeError::Status { status, .. }) if status == http::StatusCode::NOT_FOUND => {
                return Err(OpenError::Unknown(name.to_string()))
            }
            Err(source) => {
                if is_edge_failure(&source) {
                    warn!(channel = %name, error = %source, "cannot reach the edge to open a channel");
                }
                return Err(OpenError::Edge {
                    channel: name.to_string(),
                    source,
                });
            }
        };
        if *self.shutdown.borrow() {
            return Err(OpenError::ShuttingDown);
        }
        let session = {
            let mut sessions = lock(&self.sessions);
            // Another request may have opened it meanwhile.
            if let Some(s) = sessions.get(&name) {
                return Ok(s.clone());
            }
            if sessions.len() >= self.config.max_channels {
                return Err(OpenError::Full(sessions.len()));
            }
            let s = Arc::new(self.start_session(name.clone(), why));
            sessions.insert(name.clone(), s.clone());
            self.metrics.channels.set(sessions.len() as i64);
            s
        };
        if why == Why::Player {
            // A player is waiting: the edge's playlist lets the fallback
            // fetch the first segments at once instead of after the join.
            // A pre-joined channel has nobody waiting and lets the tree
            // deliver.
            session.shared.on_playlist(playlist, Source::Edge);
        }
        session.touch(self);
        let label = match why {
            Why::Player => "player",
            Why::Config => "config",
        };
        self.metrics
            .channels_joined
            .with_label_values(&[label])
            .inc();
        info!(channel = %name, why = label, "joined a channel");
        Ok(session)
    }

    /// The joined session of `name`, touched; or `Full` when there is none
    /// and no room for it.
    fn find_or_refuse(&self, name: &ChannelName) -> Result<Option<Arc<Session>>, OpenError> {
        let sessions = lock(&self.sessions);
        if let Some(s) = sessions.get(name) {
            s.touch(self);
            return Ok(Some(s.clone()));
        }
        if sessions.len() >= self.config.max_channels {
            return Err(OpenError::Full(sessions.len()));
        }
        Ok(None)
    }

    fn start_session(&self, channel: ChannelName, why: Why) -> Session {
        let pinned = why == Why::Config;
        let store = Store::new(
            channel.clone(),
            self.key,
            StoreConfig {
                buffer: self.config.buffer(),
                grace: Duration::from_millis(self.config.fallback_grace_ms),
                first_buffer_from_edge: why == Why::Player,
                ..StoreConfig::default()
            },
        );
        let (reports_tx, reports) = mpsc::channel(8);
        let shared = Arc::new(Shared::new(
            channel.clone(),
            self.config.clone(),
            store,
            PeerMetrics::for_channel(channel.as_str()),
            self.edges.clone(),
            reports_tx,
            self.advertise,
            self.fingerprint.clone(),
            self.traversal.clone(),
        ));
        let (stop, rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        tasks.spawn(tracker::run(shared.clone(), reports, rx.clone()));
        tasks.spawn(upstream::run(
            shared.clone(),
            self.endpoint.clone(),
            rx.clone(),
        ));
        tasks.spawn(http_feed::run(shared.clone(), rx.clone()));
        tasks.spawn(fallback::run(shared.clone(), rx));
        Session {
            shared,
            shedder: Shedder::new(),
            pinned,
            last_used_ms: AtomicU64::new(self.ms_now()),
            stop,
            tasks: Mutex::new(tasks),
        }
    }

    /// Sessions no player has used for `idle_secs`, taken out of the map
    /// (pre-joined ones never are).
    fn take_idle(&self) -> Vec<Arc<Session>> {
        let now = self.ms_now();
        let idle = self.config.idle().as_millis() as u64;
        let mut sessions = lock(&self.sessions);
        let gone: Vec<ChannelName> = sessions
            .iter()
            .filter(|(_, s)| {
                !s.pinned && now.saturating_sub(s.last_used_ms.load(Ordering::Relaxed)) >= idle
            })
            .map(|(n, _)| n.clone())
            .collect();
        let out = gone.iter().filter_map(|n| sessions.remove(n)).collect();
        self.metrics.channels.set(sessions.len() as i64);
        out
    }

    /// Every session, taken out of the map.
    fn take_all(&self) -> Vec<Arc<Session>> {
        let mut sessions = lock(&self.sessions);
        let out = std::mem::take(&mut *sessions).into_values().collect();
        self.metrics.channels.set(0);
        out
    }

    /// The text exposition of the agent's and every channel's metrics.
    pub fn render_metrics(&self) -> String {
        let sessions = self.sessions();
        crate::metrics::render(
            std::iter::once(self.metrics.registry())
                .chain(sessions.iter().map(|s| s.shared.metrics.registry())),
        )
    }
}

/// Leaves idle channels every [`REAP_EVERY`] until `shutdown`; then
/// leaves every channel.
pub async fn reap(agent: Arc<Agent>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(REAP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut closing = JoinSet::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                for s in agent.take_idle() {
                    info!(channel = %s.shared.channel, idle_secs = agent.config.idle_secs, "no player for the idle time: leaving the channel");
                    agent.metrics.channels_left.with_label_values(&["idle"]).inc();
                    closing.spawn(async move { s.close().await });
                }
            }
            Some(_) = closing.join_next(), if !closing.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    for s in agent.take_all() {
        agent
            .metrics
            .channels_left
            .with_label_values(&["shutdown"])
            .inc();
        closing.spawn(async move { s.close().await });
    }
    while closing.join_next().await.is_some() {}
}
