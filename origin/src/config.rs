//! The origin's configuration: one TOML file, overridden by flags.
//!
//! ```toml
//! listen = "127.0.0.1:8080"        # HTTP address for HLS, ingest, API, metrics
//! data_dir = "./origin-data"       # signing key and per-channel state
//! max_channels = 16
//!
//! [publish]
//! key = "change-me-now"            # publishers must present it (optional; with SRT on, 10-79 bytes)
//!
//! [segments]
//! segment_seconds = 2.0            # cut at the first keyframe after this much media
//! max_target_duration = 12         # EXT-X-TARGETDURATION is learned from the GOP, up to this
//! # target_duration = 3            # or fixed, whatever the GOP (long GOPs get forced cuts)
//! window_segments = 6              # fewest segments listed in the live playlist
//!
//! [rtmp]                           # RTMP publishers (OBS, hardware encoders)
//! listen = "127.0.0.1:1935"        # rtmp://HOST:1935/live/<channel>, key as <channel>?key=<key>
//!
//! [srt]                            # MPEG-TS over SRT (OBS, vMix, ffmpeg as callers)
//! listen = "127.0.0.1:9000"        # srt://HOST:9000?streamid=<channel>, passphrase = publish key
//! latency_ms = 500                 # SRT receive latency
//!
//! [[udp]]                          # MPEG-TS over UDP into a channel
//! listen = "127.0.0.1:5000"
//! channel = "demo"
//!
//! [[file]]                         # a file looped in real time into a channel
//! path = "media/sample.ts"
//! channel = "loop"
//! ```
//!
//! Every field has a default; `origin serve` runs with no file at all.
//! Defaults live in one place: the `Default` impls below.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use treecast_proto::ChannelName;

use crate::playlist::MIN_WINDOW_SEGMENTS;

/// The whole origin configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OriginConfig {
    /// HTTP listen address. Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Directory for the signing key (`origin.key`) and channel state
    /// (`channels/<name>.json`). Created if missing. Default `./origin-data`.
    pub data_dir: PathBuf,
    /// Signing key file (hex Ed25519 seed). Default `<data_dir>/origin.key`,
    /// generated on first start.
    pub signing_key: Option<PathBuf>,
    /// Most channels served at once. Default 16.
    pub max_channels: usize,
    /// Most concurrent HTTP connections. Default 4096.
    pub max_connections: usize,
    /// Who may publish.
    pub publish: PublishConfig,
    /// How streams are cut and listed.
    pub segments: SegmentsConfig,
    /// RTMP ingest. Default: off.
    pub rtmp: Option<RtmpInput>,
    /// SRT ingest. Default: off.
    pub srt: Option<SrtInput>,
    /// UDP inputs.
    pub udp: Vec<UdpInput>,
    /// Files looped into channels in real time (a test card, a demo).
    pub file: Vec<FileInput>,
}

/// Publishing access.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PublishConfig {
    /// Shared publish key. When set, `/ingest/` requests must send
    /// `Authorization: Bearer <key>` or `?key=<key>`. Default: none (anyone
    /// who can reach the origin may publish; bind it to a private address).
    pub key: Option<String>,
}

/// Segmenting and playlist shape.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SegmentsConfig {
    /// Media per segment to aim for, in seconds: a segment is cut at the
    /// first keyframe at or after this. Default 2.0 (match the encoder's GOP).
    pub segment_seconds: f64,
    /// EXT-X-TARGETDURATION in seconds, fixed for the stream whatever its
    /// GOP: a GOP that runs past it is cut on a non-keyframe (see
    /// docs/segmenting.md). Default: none, the target is learned from the
    /// stream's first GOP (a 2 s GOP gets 3 s) before anything is published.
    pub target_duration: Option<u64>,
    /// The largest target duration learned, in seconds. Default 12 (room for
    /// OBS's default GOP of 250 frames at 24 fps and up).
    pub max_target_duration: u64,
    /// Fewest segments listed in the live playlist; the window also always
    /// spans at least three target durations. Default 6 (the minimum).
    pub window_segments: usize,
}

/// The RTMP listener.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RtmpInput {
    /// TCP address to accept publishers on (RTMP's port is 1935).
    pub listen: SocketAddr,
}

/// The SRT listener.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SrtInput {
    /// UDP address to accept SRT callers on.
    pub listen: SocketAddr,
    /// SRT receive latency in milliseconds: how long a packet may take,
    /// retransmissions included, before SRT gives up on it (the larger of
    /// this and the caller's own is used). Default 500 (SRT's advice is
    /// four round trips; a burst at a keyframe on a busy host needs room too).
    #[serde(default = "SrtInput::default_latency_ms")]
    pub latency_ms: u64,
}

impl SrtInput {
    /// The default [`SrtInput::latency_ms`].
    pub const DEFAULT_LATENCY_MS: u64 = 500;

    fn default_latency_ms() -> u64 {
        Self::DEFAULT_LATENCY_MS
    }

    /// An SRT listener on `listen` with the defaults.
    pub fn on(listen: SocketAddr) -> Self {
        Self {
            listen,
            latency_ms: Self::DEFAULT_LATENCY_MS,
        }
    }
}

/// One UDP MPEG-TS input.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UdpInput {
    /// Address to receive datagrams on.
    pub listen: SocketAddr,
    /// Channel the datagrams are published to.
    pub channel: String,
}

/// One MPEG-TS file played into a channel forever, paced by its own
/// timestamps; each pass starts with a discontinuity.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileInput {
    /// The file.
    pub path: PathBuf,
    /// Channel it is published to.
    pub channel: String,
}

impl Default for OriginConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./origin-data"),
            signing_key: None,
            max_channels: 16,
            max_connections: 4096,
            publish: PublishConfig::default(),
            segments: SegmentsConfig::default(),
            rtmp: None,
            srt: None,
            udp: Vec::new(),
            file: Vec::new(),
        }
    }
}

impl Default for SegmentsConfig {
    fn default() -> Self {
        Self {
            segment_seconds: 2.0,
            target_duration: None,
            max_target_duration: 12,
            window_segments: MIN_WINDOW_SEGMENTS,
        }
    }
}

pub use treecast_proto::app::ConfigError;

impl OriginConfig {
    /// Reads a config file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        Ok(treecast_proto::app::load_toml(path)?)
    }

    /// Checks values against each other.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.segments;
        if !(s.segment_seconds > 0.0 && s.segment_seconds <= 60.0) {
            return Err(ConfigError::Invalid(format!(
                "segments.segment_seconds = {} must be above 0 and at most 60",
                s.segment_seconds
            )));
        }
        for (name, value) in [
            ("target_duration", s.target_duration),
            ("max_target_duration", Some(s.max_target_duration)),
        ] {
            if let Some(t) = value.filter(|&t| (t as f64) < s.segment_seconds.ceil() || t > 60) {
                return Err(ConfigError::Invalid(format!(
                    "segments.{name} = {t} must be at least segment_seconds rounded up ({}) and at most 60",
                    s.segment_seconds.ceil()
                )));
            }
        }
        if s.window_segments < MIN_WINDOW_SEGMENTS || s.window_segments > 1000 {
            return Err(ConfigError::Invalid(format!(
                "segments.window_segments = {} must be between {MIN_WINDOW_SEGMENTS} and 1000",
                s.window_segments
            )));
        }
        if self.max_channels == 0 || self.max_connections == 0 {
            return Err(ConfigError::Invalid(
                "max_channels and max_connections must be at least 1".into(),
            ));
        }
        if self.publish.key.as_deref() == Some("") {
            return Err(ConfigError::Invalid("publish.key must not be empty".into()));
        }
        if let Some(srt) = self
            .srt
            .as_ref()
            .filter(|s| !(20..=10_000).contains(&s.latency_ms))
        {
            return Err(ConfigError::Invalid(format!(
                "srt.latency_ms = {} must be between 20 and 10000",
                srt.latency_ms
            )));
        }
        if let (Some(_), Some(key)) = (&self.srt, &self.publish.key) {
            // SRT's passphrase rule: the key doubles as the passphrase.
            if !(10..=79).contains(&key.len()) {
                return Err(ConfigError::Invalid(format!(
                    "publish.key is {} bytes; with SRT on it is also the SRT passphrase, which must be 10 to 79 bytes",
                    key.len()
                )));
            }
        }
        for u in &self.udp {
            ChannelName::new(&u.channel)
                .map_err(|e| ConfigError::Invalid(format!("udp input {}: {e}", u.listen)))?;
        }
        Ok(())
    }

    /// Where the signing key lives.
    pub fn signing_key_path(&self) -> PathBuf {
        self.signing_key
            .clone()
            .unwrap_or_else(|| self.data_dir.join("origin.key"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_example_parses() {
        let doc = include_str!("config.rs");
        let start = doc.find("//! ```toml").expect("example") + "//! ```toml".len();
        let end = start + doc[start..].find("//! ```").expect("end");
        let toml_text: String = doc[start..end]
            .lines()
            .map(|l| l.trim_start_matches("//!").trim_start())
            .collect::<Vec<_>>()
            .join("\n");
        let mut c: OriginConfig = toml::from_str(&toml_text).expect("example parses");
        // The example's path is relative to the repository root.
        assert_eq!(c.file[0].path, PathBuf::from("media/sample.ts"));
        c.file[0].path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../media/sample.ts");
        c.validate().expect("example is valid");
        assert_eq!(c.udp.len(), 1);
        assert_eq!(c.publish.key.as_deref(), Some("change-me-now"));
    }

    #[test]
    fn defaults_are_valid_and_bad_values_are_explained() {
        OriginConfig::default().validate().expect("defaults valid");
        let mut c = OriginConfig::default();
        c.segments.target_duration = Some(1);
        let e = c.validate().expect_err("target below segment").to_string();
        assert!(e.contains("target_duration"), "{e}");
        let e = toml::from_str::<OriginConfig>("listen = 5")
            .expect_err("bad type")
            .to_string();
        assert!(e.contains("listen"), "{e}");
        assert!(
            toml::from_str::<OriginConfig>("lisen = \"x\"").is_err(),
            "typo rejected"
        );
    }
}
