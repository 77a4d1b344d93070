//! The treecast origin: a live MPEG-TS feed in, signed HLS out.
//!
//! A producer pushes MPEG-TS (HTTP PUT/POST, UDP, or the `origin ingest`
//! CLI for files and stdin). Each channel's stream is cut into segments at
//! keyframes, every segment is signed with the origin's Ed25519 key, and a
//! sliding-window live playlist is served for edges to pull.
//!
//! # Layout
//!
//! - [`ts`]: MPEG-TS parsing pieces (framing, packets, PSI, PES, NAL units,
//!   timestamps), all sans-IO.
//! - [`segmenter`]: the sans-IO segmenter, bytes in, segment events out.
//! - [`playlist`]: the sans-IO live playlist window and its rendering.
//! - [`channel`]: a channel's segments, signatures and playlist; the
//!   registry of channels and their persisted state.
//! - [`publish`]: the server side of publishing: sessions (one publisher
//!   into one channel), and the UDP and file input drivers.
//! - [`source`]: reading a file, stdin or UDP feed (pacing, seamless
//!   looping), for `origin ingest` and the origin's file inputs.
//! - [`server`]: the HTTP routes.
//! - [`run`]: starting and stopping a whole origin ([`OriginHandle`]).
//! - [`push_client`]: the `origin ingest` client that pushes a file, stdin or UDP
//!   feed to an origin and shows the producer what is happening.
//! - [`config`], [`metrics`]: configuration and Prometheus metrics.

pub mod channel;
pub mod config;
pub mod metrics;
pub mod playlist;
pub mod publish;
pub mod push_client;
pub mod rtmp;
pub mod run;
pub mod segmenter;
pub mod server;
pub mod source;
pub mod srt;
pub mod ts;

pub use config::OriginConfig;
pub use run::OriginHandle;
