//! The edge's configuration: one TOML file, overridden by flags.
//!
//! ```toml
//! listen = "127.0.0.1:8081"          # HTTP for players, peers and operators
//! origin = "http://127.0.0.1:8080"   # the origin to pull from
//! origin_timeout_ms = 10000          # wait for an origin response head
//! cache_max_mb = 512                 # byte budget for cached segments
//! max_connections = 8192
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
    /// Base URL of the origin. Default `http://127.0.0.1:8080`.
    pub origin: String,
    /// Longest wait for the origin's response head, in milliseconds. The
    /// origin holds a request for the next segment up to two target
    /// durations, so keep this above that. Default 10000.
    pub origin_timeout_ms: u64,
    /// Byte budget of the segment cache, in MiB. Default 512.
    pub cache_max_mb: usize,
    /// Most concurrent HTTP connections. Default 8192.
    pub max_connections: usize,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            origin: "http://127.0.0.1:8080".into(),
            origin_timeout_ms: 10_000,
            cache_max_mb: 512,
            max_connections: 8192,
        }
    }
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// A value is out of range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl EdgeConfig {
    /// Reads a config file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
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

    /// Checks values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.origin_uri()?;
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
        let c: EdgeConfig = toml::from_str(&text).expect("example parses");
        c.validate().expect("example valid");
        assert_eq!(c, EdgeConfig::default());
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
