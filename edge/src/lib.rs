//! The treecast edge: what viewers' peers and players connect to.
//!
//! A pull-through cache of the origin serving its URL layout with one origin
//! fetch per object; the tracker that places peers in delivery trees; and
//! the root of those trees, pushing segments to its children over QUIC.
//!
//! # Layout
//!
//! - [`cache`]: the single-flight pull-through cache.
//! - [`origin`]: the HTTP client for the origin.
//! - [`server`]: HTTP routes.
//! - [`tracker`]: the placement state machine and its HTTP+JSON driver.
//! - [`uplink_test`]: measuring a peer's uplink before it takes children.
//! - [`root`]: the QUIC root of every delivery tree.
//! - [`dashboard`]: the operator dashboard, its JSON API and history.
//! - [`run`]: starting and stopping a whole edge ([`EdgeHandle`]).
//! - [`cli`]: the command line (`edge`, `treecast edge`).
//! - [`config`], [`metrics`]: configuration and Prometheus metrics.

pub mod cache;
pub mod cli;
pub mod config;
pub mod dashboard;
pub mod metrics;
pub mod origin;
pub mod run;
pub mod server;

pub use config::EdgeConfig;
pub use run::EdgeHandle;
pub mod root;
pub mod tracker;
pub mod uplink_test;
