//! The treecast edge: what viewers' peers and players connect to.
//!
//! Today it is a pull-through cache of the origin that serves the origin's
//! URL layout with one origin fetch per object. The tracker and the root of
//! the delivery tree come next (see `docs/edge.md`).
//!
//! # Layout
//!
//! - [`cache`]: the single-flight pull-through cache.
//! - [`origin`]: the HTTP client for the origin.
//! - [`server`]: HTTP routes.
//! - [`run`]: starting and stopping a whole edge ([`EdgeHandle`]).
//! - [`config`], [`metrics`]: configuration and Prometheus metrics.

pub mod cache;
pub mod config;
pub mod metrics;
pub mod origin;
pub mod run;
pub mod server;

pub use config::EdgeConfig;
pub use run::EdgeHandle;
pub mod root;
pub mod tracker;
