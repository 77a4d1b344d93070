//! treecast peer: the agent on each viewer's machine.
//!
//! It joins the channel's tree through the edge's tracker, receives each
//! segment from its parent over QUIC as it is cut, forwards every chunk to
//! its own children at once, verifies each segment against the origin's
//! signature, and serves the viewer's player from a loopback HTTP proxy a
//! little behind live. What the tree does not deliver in time comes from the
//! edge over HTTP.
//!
//! # Layout
//!
//! - [`cli`]: the command line (`peer`, `treecast peer`).
//! - [`config`]: [`PeerConfig`], the one configuration struct.
//! - [`store`]: sans-IO segment store and local playlist (verification,
//!   deadlines, the trailing window).
//! - [`shared`]: state the tasks share; where every segment and playlist
//!   enters.
//! - [`upstream`]: the link to the parent and the warm backup; switching.
//! - [`liveness`]: sans-IO: when a parent has gone silent, from the link's
//!   round trip and cadence.
//! - [`downstream`]: admitting children and pushing to them.
//! - [`fallback`]: fetching from the edge what the tree did not deliver.
//! - [`tracker`]: join, heartbeat with stats, report, leave.
//! - [`proxy`]: the player's local HTTP server and `/status`.
//! - [`viewer`]: the player's stalls, inferred from its requests and
//!   reported by the plugin.
//! - [`edge_client`]: HTTP requests to an edge.
//! - [`edges`]: the event's edges, the one in use, failing over.
//! - [`metrics`]: Prometheus counters.
//! - [`run`]: [`PeerHandle`], starting and stopping it all.

pub mod cli;
pub mod config;
pub mod downstream;
pub mod edge_client;
pub mod edges;
pub mod fallback;
pub mod liveness;
pub mod metrics;
pub mod proxy;
pub mod run;
pub mod shared;
pub mod store;
pub mod tracker;
pub mod upstream;
pub mod viewer;

pub use config::PeerConfig;
pub use run::{PeerHandle, StartError};
