//! Channel names and segment file names.
//!
//! A channel name appears in URLs (`/live/<channel>/...`), metric labels and
//! file names, so it is restricted to a small, safe alphabet. Segment files are
//! named by their media sequence number, which only grows for a channel (the
//! origin persists it across restarts), so a segment URL always names the same
//! bytes.

use std::fmt;
use std::str::FromStr;

/// Longest channel name accepted, in bytes.
pub const MAX_CHANNEL_LEN: usize = 64;

/// A validated channel name: 1 to 64 of `a-z`, `0-9`, `-`, `_`, not starting
/// with `-` or `_`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(String);

/// A channel name that breaks the rules of [`ChannelName`].
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("invalid channel name {name:?}: use 1 to {MAX_CHANNEL_LEN} of a-z, 0-9, '-', '_', starting with a letter or digit")]
pub struct InvalidChannelName {
    /// The rejected name, truncated to a printable length.
    pub name: String,
}

impl ChannelName {
    /// Validates `name`.
    pub fn new(name: &str) -> Result<Self, InvalidChannelName> {
        let ok_char =
            |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_';
        let bytes = name.as_bytes();
        let valid = !bytes.is_empty()
            && bytes.len() <= MAX_CHANNEL_LEN
            && bytes.iter().all(|&c| ok_char(c))
            && bytes[0] != b'-'
            && bytes[0] != b'_';
        if valid {
            Ok(Self(name.to_owned()))
        } else {
            Err(InvalidChannelName {
                name: name.chars().take(80).collect(),
            })
        }
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for ChannelName {
    type Err = InvalidChannelName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A file under `/live/<channel>/`, parsed from the last URL path component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentFile {
    /// `index.m3u8`: the live media playlist.
    Playlist,
    /// `<seq>.ts`: the media segment with that media sequence number.
    Segment(u64),
    /// `<seq>.sig`: the origin's signed digest of that segment.
    Signature(u64),
}

impl SegmentFile {
    /// Parses a file name; `None` for anything that is not one of ours.
    pub fn parse(name: &str) -> Option<Self> {
        if name == "index.m3u8" {
            return Some(Self::Playlist);
        }
        let (stem, ext) = name.split_once('.')?;
        // Only plain decimal digits: no sign, no leading '+', bounded length.
        if stem.is_empty() || stem.len() > 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let seq = stem.parse().ok()?;
        match ext {
            "ts" => Some(Self::Segment(seq)),
            "sig" => Some(Self::Signature(seq)),
            _ => None,
        }
    }

    /// The file name, the inverse of [`SegmentFile::parse`].
    pub fn file_name(self) -> String {
        match self {
            Self::Playlist => "index.m3u8".to_owned(),
            Self::Segment(seq) => format!("{seq}.ts"),
            Self::Signature(seq) => format!("{seq}.sig"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn channel_names() {
        assert!(ChannelName::new("demo").is_ok());
        assert!(ChannelName::new("town-hall_2026").is_ok());
        for bad in [
            "",
            "Demo",
            "-x",
            "_x",
            "a/b",
            "a.b",
            "..",
            "a b",
            &"x".repeat(65),
        ] {
            assert!(ChannelName::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn segment_files() {
        assert_eq!(
            SegmentFile::parse("index.m3u8"),
            Some(SegmentFile::Playlist)
        );
        assert_eq!(SegmentFile::parse("42.ts"), Some(SegmentFile::Segment(42)));
        assert_eq!(
            SegmentFile::parse("42.sig"),
            Some(SegmentFile::Signature(42))
        );
        for bad in [
            "",
            ".ts",
            "+1.ts",
            "-1.ts",
            "1.mp4",
            "a.ts",
            "1.ts.ts",
            "99999999999999999999999.ts",
        ] {
            assert_eq!(SegmentFile::parse(bad), None, "{bad:?} accepted");
        }
    }

    proptest! {
        #[test]
        fn segment_file_round_trip(seq in any::<u64>(), sig in any::<bool>()) {
            let f = if sig { SegmentFile::Signature(seq) } else { SegmentFile::Segment(seq) };
            prop_assert_eq!(SegmentFile::parse(&f.file_name()), Some(f));
        }

        #[test]
        fn parse_never_panics(s in ".{0,40}") {
            let _ = SegmentFile::parse(&s);
            let _ = ChannelName::new(&s);
        }
    }
}
