//! The peer's configuration: one TOML file, overridden by flags.
//!
//! ```toml
//! edge = "http://127.0.0.1:8081"     # the edge: tracker, fallback, origin key
//! # edge = ["http://edge-a:8081", "http://edge-b:8081"]  # or several: the nearest is used, the others on failure
//! # channel = ["demo"]               # channels to join at start and keep; unset = none, joined when a player asks
//! proxy_listen = "127.0.0.1:8090"    # the player's local HTTP proxy (loopback only; 8091–8099 if taken)
//! idle_secs = 30.0                   # leave a channel's tree this long after its player stopped asking
//! max_channels = 8                   # channels joined at once (players asking for more are refused)
//! # page_origins = ["https://townhall.example.com"]  # web pages allowed to use this agent (CORS)
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

/// The local proxy's default port: where players and the player plugin
/// look for the agent first.
pub const DEFAULT_PROXY_PORT: u16 = 8090;
/// Ports the agent takes, in order, when it is asked for the default
/// port and that one is taken; the player plugin looks at each.
pub const PROXY_PORTS: std::ops::RangeInclusive<u16> = DEFAULT_PROXY_PORT..=8099;
/// Most channels any configuration may ask for at once.
pub const MAX_CHANNELS_LIMIT: usize = 64;

/// The whole peer configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PeerConfig {
    /// Base URLs of the event's edges: one (`edge = "http://…"`) or
    /// several (`edge = ["http://…", …]`); a name with several addresses
    /// counts as one edge per address. The nearest is used and the others
    /// when it fails (`crate::edges`). Default `http://127.0.0.1:8081`.
    #[serde(deserialize_with = "one_or_many")]
    pub edge: Vec<String>,
    /// Channels joined at start and kept joined whether or not a player
    /// asks (`channel = "demo"`, a list, or `--channel` repeated). Default:
    /// none; any channel is joined when a player asks for its playlist
    /// and left [`idle_secs`](Self::idle_secs) after the player stopped.
    #[serde(deserialize_with = "one_or_many")]
    pub channel: Vec<String>,
    /// The local proxy's address; must be loopback. When it is the
    /// default port and that is taken, the next free port of
    /// [`PROXY_PORTS`] is used (the player plugin looks there too).
    /// Default `127.0.0.1:8090`.
    pub proxy_listen: SocketAddr,
    /// Seconds after the last player request for a channel (joined on
    /// demand) before the agent leaves its tree. Default 30.
    pub idle_secs: f64,
    /// Most channels joined at once, pre-joined ones included; a player
    /// asking for one more is refused (503) until one is left. Default 8.
    pub max_channels: usize,
    /// Web page origins (`scheme://host[:port]`) whose pages may use this
    /// agent from a browser (CORS and Private Network Access). The agent's
    /// own pages (`/player/`) and the edges' origins are always allowed.
    /// Default: none more.
    pub page_origins: Vec<String>,
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
            edge: vec!["http://127.0.0.1:8081".into()],
            channel: Vec::new(),
            proxy_listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_PROXY_PORT)),
            idle_secs: 30.0,
            max_channels: 8,
            page_origins: Vec::new(),
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
        self.edge_uris()?;
        let channels = self.channel_names()?;
        self.pinned_origin_key()?;
        self.origins()?;
        if !(1..=MAX_CHANNELS_LIMIT).contains(&self.max_channels) {
            return Err(ConfigError::Invalid(format!(
                "max_channels {} must be between 1 and {MAX_CHANNELS_LIMIT}",
                self.max_channels
            )));
        }
        if channels.len() > self.max_channels {
            return Err(ConfigError::Invalid(format!(
                "{} channels to pre-join but max_channels is {}",
                channels.len(),
                self.max_channels
            )));
        }
        if !(self.idle_secs >= 1.0 && self.idle_secs <= 86_400.0) {
            return Err(ConfigError::Invalid(format!(
                "idle_secs {} must be between 1 and 86400",
                self.idle_secs
            )));
        }
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

    /// The edges' base URLs, parsed, and what is wrong with the entries
    /// that could not be used (reported at start; the rest are used).
    /// An error when none is usable.
    pub fn edge_uris(&self) -> Result<(Vec<Uri>, Vec<String>), ConfigError> {
        let mut good = Vec::new();
        let mut bad = Vec::new();
        for e in &self.edge {
            match parse_edge(e) {
                Ok(u) => good.push(u),
                Err(why) => bad.push(why),
            }
        }
        if good.is_empty() {
            return Err(ConfigError::Invalid(if bad.is_empty() {
                "no edge given: edge = \"http://host:port\" or --edge URL".into()
            } else {
                bad.join("; ")
            }));
        }
        Ok((good, bad))
    }

    /// The channels to pre-join, checked, without repeats.
    pub fn channel_names(&self) -> Result<Vec<ChannelName>, ConfigError> {
        let mut out: Vec<ChannelName> = Vec::new();
        for c in &self.channel {
            let name = ChannelName::new(c).map_err(|e| ConfigError::Invalid(e.to_string()))?;
            if !out.contains(&name) {
                out.push(name);
            }
        }
        Ok(out)
    }

    /// `page_origins`, checked and normalised (`scheme://host[:port]`,
    /// lower case, no path).
    pub fn origins(&self) -> Result<Vec<String>, ConfigError> {
        self.page_origins
            .iter()
            .map(|o| {
                normalise_origin(o).ok_or_else(|| {
                    ConfigError::Invalid(format!(
                        "page origin {o:?} must look like https://host or http://host:port"
                    ))
                })
            })
            .collect()
    }

    /// `idle_secs` as a duration.
    pub fn idle(&self) -> Duration {
        Duration::from_secs_f64(self.idle_secs)
    }

    /// The pinned origin key, if one is configured.
    pub fn pinned_origin_key(&self) -> Result<Option<OriginPublicKey>, ConfigError> {
        treecast_proto::app::pinned_origin_key(self.origin_key.as_deref())
    }

    /// `buffer_secs` as a duration.
    pub fn buffer(&self) -> Duration {
        Duration::from_secs_f64(self.buffer_secs)
    }
}

/// `scheme://host[:port]` of an http(s) URL or origin, lower case; `None`
/// for anything else (a path, a query, another scheme).
pub fn normalise_origin(o: &str) -> Option<String> {
    let uri: Uri = o.trim().parse().ok()?;
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return None;
    }
    if uri
        .path_and_query()
        .is_some_and(|p| p.as_str() != "/" && !p.as_str().is_empty())
    {
        return None;
    }
    let authority = uri.authority()?.as_str().to_ascii_lowercase();
    if authority.contains('@') {
        return None;
    }
    Some(format!("{scheme}://{authority}"))
}

fn parse_edge(e: &str) -> Result<Uri, String> {
    let uri: Uri = e.parse().map_err(|err| format!("edge URL {e:?}: {err}"))?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        return Err(format!("edge URL {e:?} must look like http://host:port"));
    }
    Ok(uri)
}

/// `edge = "url"` or `edge = ["url", …]`.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
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
            edge: vec!["ftp://x".into()],
            ..PeerConfig::default()
        };
        assert!(bad.validate().is_err());
        // A bad entry among good ones is reported, the rest used.
        let mixed = PeerConfig {
            edge: vec!["nonsense".into(), "http://127.0.0.1:9".into()],
            ..PeerConfig::default()
        };
        let (good, bad) = mixed.edge_uris().expect("one usable");
        assert_eq!(good.len(), 1);
        assert!(bad[0].contains("nonsense"), "{bad:?}");
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

    #[test]
    fn edge_is_one_url_or_a_list() {
        let one: PeerConfig = toml::from_str(r#"edge = "http://a:1""#).expect("one");
        assert_eq!(one.edge, ["http://a:1"]);
        let many: PeerConfig =
            toml::from_str(r#"edge = ["http://a:1", "http://b:2"]"#).expect("many");
        assert_eq!(many.edge, ["http://a:1", "http://b:2"]);
    }
}
