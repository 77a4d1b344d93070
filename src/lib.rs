//! treecast: the whole network in one command, and the harness that
//! measures it.
//!
//! The roles live in their own crates (`treecast-origin`, `treecast-edge`,
//! `treecast-peer`, shared `treecast-proto`); this crate runs them together.
//!
//! # Layout
//!
//! - [`cluster`]: origin and edge in this process, peers as child
//!   processes, all on loopback.
//! - [`player`]: a simulated HLS player following a peer's local playlist.
//! - [`swarm`]: the swarm harness and its JSON report.
//! - [`netlab`]: the network lab `swarm --net` runs the peers in.
//! - [`demo`]: the one-command demo.
//! - [`relay_bench`]: CPU and memory of one peer relaying to its children.
//! - [`tracker_load`]: an HTTP load generator for an edge's tracker.
//! - [`sim`]: a deterministic simulation of a whole event around the real
//!   tracker core.
//! - [`rng`]: the seeded generator behind roles and churn.
//! - [`shield`]: a real nginx as the shield cache in front of the origin.
//! - [`failover`]: several edges behind a shield, one killed mid-event.

pub mod cluster;
pub mod demo;
pub mod failover;
pub mod netlab;
pub mod player;
pub mod relay_bench;
pub mod rng;
pub mod shield;
pub mod sim;
pub mod swarm;
pub mod tracker_load;
