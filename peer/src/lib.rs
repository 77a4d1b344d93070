//! treecast peer: the agent on each viewer's machine.
//!
//! One agent per machine serves every channel its edges carry: a player
//! asking the loopback proxy for a channel makes it join that channel's
//! tree through the edge's tracker; it receives each segment from its
//! parent over QUIC as it is cut, forwards every chunk to its own children
//! at once, verifies each segment against the origin's signature, and
//! serves the player a little behind live. What the tree does not deliver
//! in time comes from the edge over HTTP. A channel no player asks for is
//! left after an idle time.
//!
//! # Layout
//!
//! - [`cli`]: the command line (`peer`, `treecast peer`).
//! - [`config`]: [`PeerConfig`], the one configuration struct.
//! - [`agent`]: the channels joined, opened on demand and left when idle;
//!   what every channel shares (edges, key, endpoint, upload cap).
//! - [`install`]: `peer install | uninstall | status`: the per-user
//!   service that starts the agent at login.
//! - [`store`]: sans-IO segment store and local playlist (verification,
//!   deadlines, the trailing window).
//! - [`shared`]: state the tasks share; where every segment and playlist
//!   enters.
//! - [`upstream`]: the link to the parent and the warm backup; switching.
//! - [`links`]: sans-IO: which links to keep (make before break,
//!   cooldowns, the warm backup).
//! - [`liveness`]: sans-IO: when a parent has gone silent, from the link's
//!   round trip and cadence.
//! - [`downstream`]: admitting children and pushing to them.
//! - [`fallback`]: fetching from the edge what the tree did not deliver.
//! - [`http_feed`]: a site leader's stream over HTTP, when no UDP leaves
//!   its site.
//! - [`traversal`]: the reflexive address, punching through NATs.
//! - [`tracker`]: join, heartbeat with stats, report, leave.
//! - [`proxy`]: the player's local HTTP server.
//! - [`guard`]: sans-IO: who may use the proxy (loopback `Host` names,
//!   allowed page origins, CORS).
//! - [`status`]: what `/status` says, as typed data.
//! - [`viewer`]: the player's stalls, inferred from its requests and
//!   reported by the plugin.
//! - [`edge_client`]: HTTP requests to an edge.
//! - [`edges`]: the event's edges, the one in use, failing over.
//! - [`metrics`]: Prometheus counters.
//! - [`run`]: [`PeerHandle`], starting and stopping it all.

pub mod agent;
pub mod cli;
pub mod config;
pub mod downstream;
pub mod edge_client;
pub mod edges;
pub mod fallback;
pub mod guard;
pub mod http_feed;
pub mod install;
pub mod links;
pub mod liveness;
pub mod metrics;
pub mod proxy;
pub mod run;
pub mod shared;
pub mod status;
pub mod store;
pub mod tracker;
pub mod traversal;
pub mod upstream;
pub mod viewer;

pub use config::PeerConfig;
pub use run::{PeerHandle, StartError};
