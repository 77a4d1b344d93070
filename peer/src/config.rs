//! The peer's configuration: one TOML file, overridden by flags.
//!
//! ```toml
//! edge = "http://127.0.0.1:8081"     # the edge: tracker, fallback, origin key
//! channel = "demo"                   # what to watch
//! proxy_listen = "127.0.0.1:8090"    # the player's local HTTP proxy (loopback only)
//! quic_listen = "0.0.0.0:0"          # UDP for parent and children; 0 = any port
//! # advertise = "192.0.2.7:5000"     # QUIC address children should use
//! # max_upload_kbps = 8000           # upload cap; 0 = leaf only; unset = no cap
//! buffer_secs = 4.0                  # how far behind live the player is fed
//! fallback_grace_ms = 1000           # tree gets this long before the edge is asked
//! gap_ms = 1000                      # longest silence before switching (usually sooner: 4 RTTs or the link's cadence, 120 ms at least)
//! # origin_key = "hex"               # pin the origin's key instead of asking the edge
//! # site = "paris-office"            # peers on one site prefer each other
//! # token = "s3cret"                 # viewer token, if the channel needs one
//! ```
//!
//! Defaults live in the `Default` impl below; `peer` runs without a file.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http::Uri;
use serde::Deserialize;
use treecast_proto::app::{load_toml, ConfigError};
use treecast_proto::{ChannelName, OriginPublicKey};

/// The whole peer configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PeerConfig {
    /// Base URL of the edge. Default `http://127.0.0.1:8081`.
    pub edge: String,
    /// Channel to watch. Default `demo`.
    pub channel: String,
    /// The local proxy's address; must be loopback. Default
    /// `127.0.0.1:8090`.
    pub proxy_listen: SocketAddr,
    /// The QUIC (UDP) address for the parent and children. Default
    /// `0.0.0.0:0` (any port).
    pub quic_listen: SocketAddr,
    /// The QUIC address given to the tracker for children to connect to.
    /// Default: the bound port on the address this host uses to reach the
    /// edge.
    pub advertise: Option<SocketAddr>,
    /// Upload cap over all children in kb/s; 0 means leaf only. Default:
    /// no cap.
    pub max_upload_kbps: Option<u32>,
    /// How far behind the live edge the local playlist ends, in seconds:
    /// every segment it lists is already verified in memory. Default 4.
    pub buffer_secs: f64,
    /// How long after a segment is listed live the tree has to deliver it
    /// before it is fetched from the edge, in milliseconds. Default 1000.
    pub fallback_grace_ms: u64,
    /// Longest silence (no data, no answer to pings) before a parent is
    /// lost, in milliseconds; the link's round trips and cadence usually
    /// decide sooner (`crate::liveness`). Default 1000.
    pub gap_ms: u64,
    /// Largest segment accepted, in bytes. Default 16 MiB.
    pub max_segment_bytes: usize,
    /// The origin's public key (hex). Default: asked from the edge.
    pub origin_key: Option<String>,
    /// Site label for the tracker. Default: the tracker uses the subnet.
    pub site: Option<String>,
    /// Viewer token for channels that need one.
    pub token: Option<String>,
    /// Fault injection for tests and the swarm harness: corrupt one byte of
    /// every segment whose sequence number is a multiple of this, in what
    /// is forwarded to children. Never set it for real viewers.
    pub tamper_every: Option<u64>,
}

impl Default for PeerConfig {
    fn default() -> Self {
        Self {
            edge: "http://127.0.0.1:8081".into(),
            channel: "demo".into(),
            proxy_listen: SocketAddr::from(([127, 0, 0, 1], 8090)),
            quic_listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            advertise: None,
            max_upload_kbps: None,
            buffer_secs: 4.0,
            fallback_grace_ms: 1000,
            gap_ms: 1000,
            max_segment_bytes: 16 << 20,
            origin_key: None,
            site: None,
            token: None,
            tamper_every: None,
        }
    }
}

impl PeerConfig {
    /// Reads a TOML file; missing fields take their defaults.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        Ok(load_toml(path)?)
    }

    /// Checks the values that cannot be checked by their types.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.edge_uri()?;
        self.channel_name()?;
        self.pinned_origin_key()?;
        if !self.proxy_listen.ip().is_loopback() {
            return Err(ConfigError::Invalid(format!(
                "proxy_listen {} is not a loopback address: the local proxy serves only this machine's player",
                self.proxy_listen
            )));
        }
        if !(self.buffer_secs >= 0.0 && self.buffer_secs <= 60.0) {
            return Err(ConfigError::Invalid(format!(
                "buffer_secs {} must be between 0 and 60",
                self.buffer_secs
            )));
        }
        if self.gap_ms < 50 {
            return Err(ConfigError::Invalid(format!(
                "gap_ms {} is below 50 ms: a parent would be dropped on ordinary jitter",
                self.gap_ms
            )));
        }
        if self.max_segment_bytes < 64 * 1024 {
            return Err(ConfigError::Invalid(
                "max_segment_bytes must be at least 64 KiB".into(),
            ));
        }
        Ok(())
    }

    /// The edge's base URL, parsed.
    pub fn edge_uri(&self) -> Result<Uri, ConfigError> {
        let uri: Uri = self
            .edge
            .parse()
            .map_err(|e| ConfigError::Invalid(format!("edge URL {:?}: {e}", self.edge)))?;
        if uri.scheme_str() != Some("http") || uri.authority().is_none() {
            return Err(ConfigError::Invalid(format!(
                "edge URL {:?} must look like http://host:port",
                self.edge
            )));
        }
        Ok(uri)
    }

    /// The channel, checked.
    pub fn channel_name(&self) -> Result<ChannelName, ConfigError> {
        ChannelName::new(&self.channel).map_err(|e| ConfigError::Invalid(e.to_string()))
    }

    /// The pinned origin key, if one is configured.
    pub fn pinned_origin_key(&self) -> Result<Option<OriginPublicKey>, ConfigError> {
        self.origin_key
            .as_deref()
            .map(|k| {
                k.trim()
                    .parse()
                    .map_err(|e| ConfigError::Invalid(format!("origin_key: {e}")))
            })
            .transpose()
    }

    /// `buffer_secs` as a duration.
    pub fn buffer(&self) -> Duration {
        Duration::from_secs_f64(self.buffer_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        PeerConfig::default().validate().expect("defaults");
        let bad = PeerConfig {
            proxy_listen: "0.0.0.0:8090".parse().expect("addr"),
            ..PeerConfig::default()
        };
        let e = bad.validate().expect_err("public proxy").to_string();
        assert!(e.contains("loopback"), "{e}");
        let bad = PeerConfig {
            edge: "ftp://x".into(),
            ..PeerConfig::default()
        };
        assert!(bad.validate().is_err());
        let bad = PeerConfig {
            origin_key: Some("zz".into()),
            ..PeerConfig::default()
        };
        assert!(bad
            .validate()
            .expect_err("bad key")
            .to_string()
            .contains("origin_key"));
    }
}
