//! What every treecast role must agree on.
//!
//! The origin produces segments, the edge caches and pushes them, peers forward
//! and verify them. All three name channels and segments the same way, check
//! the same signatures, and stream segment bodies that are still growing.
//!
//! # Layout
//!
//! - [`app`]: what every binary does alike (logging, runtime, config files).
//! - [`names`]: channel names and segment file names (`<seq>.ts`, `<seq>.sig`).
//! - [`signature`]: the origin's Ed25519 key and the signed digest record that
//!   proves a segment's bytes came from the origin unchanged.
//! - [`body`]: a segment body that grows as bytes arrive and that many readers
//!   stream from at once (origin live segments, edge single-flight fetches).
//! - [`http`]: response helpers every role's HTTP server uses.
//! - [`keyfile`]: signing keys kept on disk.
//! - [`ticket`]: the edge's signed permission for a child to join a parent.
//! - [`wire`]: the frames parents and children exchange over QUIC.
//! - [`quic`]: QUIC endpoint configs with pinned self-signed certificates.
//! - [`tracker`]: the tracker's HTTP+JSON messages (peer ↔ edge).
//! - [`tree`]: the parent side of the tree protocol (admit a child, push to it).
//! - [`uplink`]: when a parent's uplink is saturated, and which child it sheds.
//! - [`prefetch`]: asking the CPU for a later cache line of a record.
//! - [`viewer`]: the player's own stall reports and the checks they must pass.

pub mod app;
pub mod body;
pub mod forward;
pub mod http;
pub mod keyfile;
pub mod names;
pub mod prefetch;
pub mod quic;
pub mod signature;
pub mod ticket;
pub mod tracker;
pub mod tree;
pub mod uplink;
pub mod viewer;
pub mod wire;

pub use body::{BodyReader, GrowingBody};
pub use names::{ChannelName, InvalidChannelName, SegmentFile};
pub use signature::{OriginKey, OriginPublicKey, SegmentRecord, SignedSegment, VerifyError};
