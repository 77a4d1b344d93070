//! The tracker: places every peer of a channel in a delivery tree rooted at
//! the edge.
//!
//! [`core`] is the placement policy as a pure state machine: joins,
//! heartbeats, leaves and reports go in with the time passed in; peers'
//! parents and backups come out. No sockets, no clock: it can be tested and
//! simulated at a million peers deterministically. [`service`] drives it
//! from HTTP+JSON requests ([`wire`], shared with peers in `treecast_proto::tracker`), signing tickets and limiting rates.

pub mod core;
pub mod service;
pub use treecast_proto::tracker as wire;

pub use self::core::{
    Assignment, Heartbeat, JoinError, JoinRequest, Node, PeerId, PeerView, Report, Tracker,
    TrackerConfig, TrackerEvent, UnknownPeer,
};
