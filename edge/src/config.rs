//! The edge's configuration: one TOML file, overridden by flags.
//!
//! ```toml
//! listen = "127.0.0.1:8081"          # HTTP for players, peers and operators
//! quic_listen = "127.0.0.1:8444"     # UDP: the root of the delivery tree
//! # observe_listen = "127.0.0.1:8445" # UDP: a second port peers behind NATs ask (default: any free port on quic_listen's address)
//! origin = "http://127.0.0.1:8080"   # where to pull from: the origin, another edge, or an HTTP cache
//! # origin_key = "hex"               # pin the origin's key (`origin key` prints it); default: asked from `origin`
//! origin_timeout_ms = 10000          # wait for an origin response head
//! cache_max_mb = 512                 # byte budget for cached segments
//! max_connections = 8192
//! data_dir = "./edge-data"           # the ticket signing key (edge.key)
//! # dashboard_token = "s3cret"       # protect /dashboard and /api/ (Bearer or ?token=)
//! # metrics_listen = "127.0.0.1:9101" # serve /metrics there instead
//! # price_per_gb = 0.05              # what 1 GB of edge egress costs: the dashboard shows the saving
//! currency = "USD"                   # the unit of price_per_gb
//! # event_edges = ["http://edge-b:8081"] # the event's other edges: the dashboard shows them too
//!
//! [tracker]
//! root_slots = 4                     # peers the edge feeds itself
//! max_depth = 12                     # deepest a peer may sit
//! max_children = 6                   # most children of any peer
//! stream_kbps = 2000                 # one child slot per this much measured upload
//! promote_after_secs = 10            # newcomers are leaves this long
//! probation_slots = 2                # children a promoted peer may take before it proves its upload
//! heartbeat_timeout_secs = 6         # silent this long: gone
//! ticket_ttl_secs = 60
//! rate_per_sec = 20                  # tracker requests per client address
//!
//! [tracker.viewer_tokens]            # channels that need a viewer token
//! # town-hall = "s3cret"
//! ```
//!
//! Defaults live in the `Default` impl below; `edge serve` runs without a file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The whole edge configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EdgeConfig {
    /// HTTP listen address. Default `127.0.0.1:8081`.
    pub listen: SocketAddr,
    /// QUIC (UDP) address where the edge's direct children connect.
    /// Default `127.0.0.1:8444`.
    pub quic_listen: SocketAddr,
    /// A second QUIC (UDP) address that tells peers where their packets
    /// come from. A peer behind a NAT asks here and at `quic_listen`: two
    /// different answers mean a mapping that depends on the destination
    /// (a symmetric NAT), which no peer elsewhere can punch through, so
    /// the peer does not offer itself across its NAT. Default: any free
    /// port on `quic_listen`'s address.
    pub observe_listen: Option<SocketAddr>,
    /// Base URL to pull the origin's URL layout from: the origin itself,
    /// another edge, or a standard HTTP cache in front of either (see
    /// `docs/edge.md`, "Tiers"). Default `http://127.0.0.1:8080`.
    pub origin: String,
    /// The origin's public key (hex, as `origin key` prints it). Every
    /// signature and segment is checked with it before the edge serves
    /// it. Default: asked once from `origin`'s `/origin/key`; pin it when
    /// the source is not the origin itself.
    pub origin_key: Option<String>,
    /// Longest wait for the origin's response head, in milliseconds. The
    /// origin holds a request for the next segment up to two target
    /// durations, so keep this above that. Default 10000.
    pub origin_timeout_ms: u64,
    /// Byte budget of the segment cache, in MiB. Default 512.
    pub cache_max_mb: usize,
    /// Most concurrent HTTP connections. Default 8192.
    pub max_connections: usize,
    /// Directory for the ticket signing key (`edge.key`, generated on first
    /// start). Default `./edge-data`.
    pub data_dir: PathBuf,
    /// Bearer token required for `/dashboard` and `/api/` (header
    /// `Authorization: Bearer …` or `?token=…`). Default none: open.
    pub dashboard_token: Option<String>,
    /// A separate address for `/metrics` (then not served on `listen`).
    /// Default none: `/metrics` on `listen`.
    pub metrics_listen: Option<SocketAddr>,
    /// What one gigabyte (10^9 bytes) of egress from this edge costs, in
    /// `currency`: the dashboard multiplies the bytes peers carried by it to
    /// show what P2P saved. Default none: bytes only.
    pub price_per_gb: Option<f64>,
    /// Currency of `price_per_gb`, as shown. Default `USD`.
    pub currency: String,
    /// Base URLs of the event's other edges, as the operator's browser
    /// reaches them: the dashboard gathers their figures (each edge answers
    /// for itself; give them one `dashboard_token`). Default none.
    pub event_edges: Vec<String>,
    /// The tracker.
    pub tracker: TrackerSection,
}

/// Tracker settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TrackerSection {
    /// Peers the edge feeds itself. Default 4.
    pub root_slots: u32,
    /// Deepest depth a peer may sit at. Default 12.
    pub max_depth: u8,
    /// Most children of any peer. Default 6.
    pub max_children: u8,
    /// Stream bitrate in kb/s: a parent gets a child slot per this much
    /// upload its children measured. Default 2000.
    pub stream_kbps: u32,
    /// Seconds a newcomer stays a leaf. Default 10.
    pub promote_after_secs: u64,
    /// Children a promoted peer may take before its children's reports
    /// prove what its upload carries (then it earns slots by delivery).
    /// Default 2. With `max_depth` 12 and 4 root slots, 2 places about
    /// 16,000 peers before anyone has proven more: raise it for a flash
    /// crowd on a network known to have the upload (an office LAN).
    pub probation_slots: u8,
    /// Seconds without a heartbeat after which a peer is gone. Default 6.
    pub heartbeat_timeout_secs: u64,
    /// Seconds a ticket stays valid. Default 60.
    pub ticket_ttl_secs: u64,
    /// Tracker requests per second per client address (burst twice that).
    /// Default 20.
    pub rate_per_sec: f64,
    /// Viewer tokens of channels that require one. Default none.
    pub viewer_tokens: std::collections::HashMap<String, String>,
}

impl Default for TrackerSection {
    fn default() -> Self {
        Self {
            root_slots: 4,
            max_depth: 12,
            max_children: 6,
            stream_kbps: 2000,
            promote_after_secs: 10,
            probation_slots: 2,
            heartbeat_timeout_secs: 6,
            ticket_ttl_secs: 60,
            rate_per_sec: 20.0,
            viewer_tokens: Default::default(),
        }
    }
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            quic_listen: SocketAddr::from(([127, 0, 0, 1], 8444)),
            observe_listen: None,
            origin: "http://127.0.0.1:8080".into(),
            origin_key: None,
            origin_timeout_ms: 10_000,
            cache_max_mb: 512,
            max_connections: 8192,
            data_dir: PathBuf::from("./edge-data"),
            dashboard_token: None,
            metrics_listen: None,
            price_per_gb: None,
            currency: "USD".into(),
            event_edges: Vec::new(),
            tracker: TrackerSection::default(),
        }
    }
}

pub use treecast_proto::app::ConfigError;

impl EdgeConfig {
    /// Reads a config file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        Ok(treecast_proto::app::load_toml(path)?)
    }

    /// The origin URL, checked.
    pub fn origin_uri(&self) -> Result<http::Uri, ConfigError> {
        let uri: http::Uri = self
            .origin
            .parse()
            .map_err(|e| ConfigError::Invalid(format!("origin = {:?}: {e}", self.origin)))?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(ConfigError::Invalid(format!(
                "origin = {:?}: expected http://HOST:PORT",
                self.origin
            )));
        }
        Ok(uri)
    }

    /// The pinned origin key, checked.
    pub fn pinned_origin_key(
        &self,
    ) -> Result<Option<treecast_proto::OriginPublicKey>, ConfigError> {
        treecast_proto::app::pinned_origin_key(self.origin_key.as_deref())
    }

    /// Checks values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.origin_uri()?;
        self.pinned_origin_key()?;
        for e in &self.event_edges {
            let ok = e.parse::<http::Uri>().is_ok_and(|u| {
                matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()
            });
            if !ok {
                return Err(ConfigError::Invalid(format!(
                    "event_edges: {e:?} is not an http(s)://HOST:PORT URL"
                )));
            }
        }
        let t = &self.tracker;
        if t.root_slots == 0
            || t.max_depth == 0
            || t.max_children == 0
            || t.probation_slots == 0
            || t.stream_kbps == 0
            || t.rate_per_sec <= 0.0
            || t.heartbeat_timeout_secs == 0
        {
            return Err(ConfigError::Invalid("tracker: root_slots, max_depth, max_children, probation_slots, stream_kbps, rate_per_sec and heartbeat_timeout_secs must be above 0".into()));
        }
        if self.price_per_gb.is_some_and(|p| !p.is_finite() || p < 0.0) {
            return Err(ConfigError::Invalid(
                "price_per_gb must be a number of at least 0".into(),
            ));
        }
        if self.origin_timeout_ms < 100 || self.cache_max_mb == 0 || self.max_connections == 0 {
            return Err(ConfigError::Invalid(
                "origin_timeout_ms must be at least 100; cache_max_mb and max_connections at least 1".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_example_parses_and_bad_values_are_explained() {
        let doc = include_str!("config.rs");
        let start = doc.find("//! ```toml").map(|i| i + 11).unwrap_or(0);
        let end = start + doc[start..].find("//! ```").unwrap_or(0);
        let text: String = doc[start..end]
            .lines()
            .map(|l| l.trim_start_matches("//!").trim_start())
            .collect::<Vec<_>>()
            .join("\n");
        let text = text.replace("# town-hall", "town-hall");
        let c: EdgeConfig = toml::from_str(&text).expect("example parses");
        c.validate().expect("example valid");
        assert_eq!(
            c.tracker.viewer_tokens.get("town-hall").map(String::as_str),
            Some("s3cret")
        );
        let defaults = EdgeConfig::default();
        assert_eq!(
            EdgeConfig {
                tracker: defaults.tracker.clone(),
                ..c
            },
            defaults
        );
        let bad = EdgeConfig {
            origin: "ftp://x".into(),
            ..EdgeConfig::default()
        };
        assert!(bad
            .validate()
            .expect_err("rejected")
            .to_string()
            .contains("http://HOST:PORT"));
    }
}
