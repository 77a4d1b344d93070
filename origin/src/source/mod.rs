//! Where a stream comes from: the readers `origin ingest` and the origin's
//! own file inputs share.
//!
//! - [`read_source`] reads a file (optionally looped and paced in real time
//!   by its own timestamps, the way `ffmpeg -re` does), stdin, or UDP
//!   datagrams, and sends chunks down a bounded channel;
//! - [`Pacer`] turns packets into media time for the pacing;
//! - [`looping::Looper`] makes a looped file one continuous stream.

pub mod looping;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch};

use crate::ts::packet::PacketHeader;
use crate::ts::pes::PesHeader;
use crate::ts::timestamp::Unwrapper;
use crate::ts::{PACKET_LEN, SYNC_BYTE, TICKS_PER_SECOND};
use looping::Looper;

/// Why a source could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The input file could not be opened or read.
    #[error("cannot read input {path}: {source}")]
    Input {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The input is not MPEG-TS.
    #[error("{0} does not look like MPEG-TS (no 0x47 sync byte every 188 bytes); remux it with: ffmpeg -i INPUT -c copy -f mpegts out.ts")]
    NotTransportStream(String),
    /// `--loop` on something that cannot be rewound.
    #[error("--loop needs a file input")]
    LoopNeedsFile,
    /// The UDP address could not be bound.
    #[error("cannot listen for UDP on {addr}: {source}")]
    UdpBind {
        /// The address.
        addr: SocketAddr,
        /// The IO error.
        source: std::io::Error,
    },
}

/// Where the stream comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// An MPEG-TS file.
    File(PathBuf),
    /// Standard input.
    Stdin,
    /// MPEG-TS datagrams received on this address.
    Udp(SocketAddr),
}

/// Paces a transport stream by its timestamps.
///
/// Feed each packet to [`Pacer::observe`]; it answers with the media time
/// since the feed began (continuing across loops and timestamp jumps) when
/// the packet carries a decode timestamp of the first timed stream.
#[derive(Debug)]
pub struct Pacer {
    pid: Option<u16>,
    unwrap: Unwrapper,
    origin: Option<i64>,
    /// Media time already played before the last jump.
    offset: i64,
    last: i64,
}

impl Default for Pacer {
    fn default() -> Self {
        Self::new()
    }
}

impl Pacer {
    /// A pacer that has seen nothing.
    pub fn new() -> Self {
        Self {
            pid: None,
            unwrap: Unwrapper::new(TICKS_PER_SECOND as i64, 10 * TICKS_PER_SECOND as i64),
            origin: None,
            offset: 0,
            last: 0,
        }
    }

    /// Media time at `packet`, if it carries a timestamp of the paced stream.
    pub fn observe(&mut self, packet: &[u8; PACKET_LEN]) -> Option<Duration> {
        let h = PacketHeader::parse(packet).ok()?;
        if !h.payload_start || h.pid == 0 || self.pid.is_some_and(|p| p != h.pid) {
            return None;
        }
        let pes = PesHeader::parse(&packet[h.payload_offset..]).ok()?;
        let ts = pes.dts.or(pes.pts)?;
        self.pid.get_or_insert(h.pid);
        let u = self.unwrap.unwrap(ts);
        let origin = *self.origin.get_or_insert(u.ticks);
        if u.jump {
            // Looped or restarted: continue from where playback was.
            self.offset = self.last;
            self.origin = Some(u.ticks);
        }
        let now = self.offset + (u.ticks - self.origin.unwrap_or(origin)).max(0);
        self.last = self.last.max(now);
        Some(Duration::from_micros(
            (self.last as u64) * 1_000_000 / TICKS_PER_SECOND,
        ))
    }
}

/// Checks that `head` (the first bytes of an input) look like MPEG-TS.
pub fn looks_like_ts(head: &[u8]) -> bool {
    (0..PACKET_LEN.min(head.len())).any(|start| {
        let mut syncs = head[start..].iter().step_by(PACKET_LEN);
        let n = (head.len() - start).div_ceil(PACKET_LEN).min(4);
        n >= 2 && syncs.by_ref().take(n).all(|&b| b == SYNC_BYTE)
    })
}

/// Bytes read at a time when paced: small, so pacing is smooth.
const PACED_CHUNK: usize = 7 * PACKET_LEN * 8;
/// Bytes read at a time as fast as possible: large, because each chunk
/// costs a blocking-pool read and an HTTP chunk, and a file pushed whole
/// spent more time on those than on the bytes.
const FAST_CHUNK: usize = PACKET_LEN * 1392;

/// How a source is read.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// The input.
    pub input: Input,
    /// Repeat a file forever.
    pub looped: bool,
    /// Pace by the stream's own timestamps.
    pub realtime: bool,
}

/// Reads `source` into `tx` until it ends, the receiver goes away or
/// `stop` fires. Also used by `origin serve --file` to loop a file in.
pub async fn read_source(
    config: SourceConfig,
    tx: mpsc::Sender<Bytes>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), SourceError> {
    match &config.input {
        Input::Udp(addr) => {
            let socket =
                tokio::net::UdpSocket::bind(addr)
                    .await
                    .map_err(|source| SourceError::UdpBind {
                        addr: *addr,
                        source,
                    })?;
            let mut buf = vec![0u8; 65_536];
            loop {
                tokio::select! {
                    r = socket.recv_from(&mut buf) => {
                        let Ok((n, _)) = r else { continue };
                        if tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                            return Ok(());
                        }
                    }
                    _ = stop.changed() => return Ok(()),
                }
            }
        }
        Input::Stdin => {
            if config.looped {
                return Err(SourceError::LoopNeedsFile);
            }
            let reader = tokio::io::stdin();
            let mut pacer = Pacer::new();
            let mut pass = Pass {
                pacer: &mut pacer,
                looper: None,
                started: Instant::now(),
            };
            pump(reader, "stdin", &config, &tx, &mut stop, &mut pass)
                .await
                .map(|_| ())
        }
        Input::File(path) => {
            let open = || async {
                tokio::fs::File::open(path)
                    .await
                    .map_err(|source| SourceError::Input {
                        path: path.clone(),
                        source,
                    })
            };
            let mut head = vec![0u8; 4 * PACKET_LEN];
            let n = open()
                .await?
                .read(&mut head)
                .await
                .map_err(|source| SourceError::Input {
                    path: path.clone(),
                    source,
                })?;
            if !looks_like_ts(&head[..n]) {
                return Err(SourceError::NotTransportStream(path.display().to_string()));
            }
            let mut pacer = Pacer::new();
            let started = Instant::now();
            let mut looper = config.looped.then(Looper::new);
            loop {
                let file = open().await?;
                let name = path.display().to_string();
                let mut pass = Pass {
                    pacer: &mut pacer,
                    looper: looper.as_mut(),
                    started,
                };
                let stopped = pump(file, &name, &config, &tx, &mut stop, &mut pass).await?;
                if stopped || !config.looped {
                    return Ok(());
                }
                if let Some(tail) = looper.as_mut().map(Looper::next_pass) {
                    if !tail.is_empty() && tx.send(Bytes::from(tail)).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// How one pass over an input is paced and rewritten.
struct Pass<'a> {
    pacer: &'a mut Pacer,
    /// Set when a file is looped.
    looper: Option<&'a mut Looper>,
    started: Instant,
}

/// Copies `reader` into `tx`, pacing by timestamps if asked. Returns whether
/// it stopped early (stop signal or the sender went away).
async fn pump(
    mut reader: impl tokio::io::AsyncRead + Unpin,
    name: &str,
    config: &SourceConfig,
    tx: &mpsc::Sender<Bytes>,
    stop: &mut watch::Receiver<bool>,
    pass: &mut Pass<'_>,
) -> Result<bool, SourceError> {
    let chunk = if config.realtime {
        PACED_CHUNK
    } else {
        FAST_CHUNK
    };
    let mut buf = vec![0u8; chunk];
    loop {
        let n = tokio::select! {
            r = read_full(&mut reader, &mut buf) => r.map_err(|source| SourceError::Input { path: name.into(), source })?,
            _ = stop.changed() => return Ok(true),
        };
        if n == 0 {
            return Ok(false);
        }
        let chunk = match pass.looper.as_mut() {
            Some(looper) => Bytes::from(looper.feed(&buf[..n])),
            None => Bytes::copy_from_slice(&buf[..n]),
        };
        if config.realtime {
            let due = chunk
                .chunks_exact(PACKET_LEN)
                .filter_map(|p| p.try_into().ok().and_then(|p| pass.pacer.observe(p)))
                .last();
            if let Some(due) = due {
                tokio::select! {
                    _ = tokio::time::sleep_until((pass.started + due).into()) => {}
                    _ = stop.changed() => return Ok(true),
                }
            }
        }
        if tx.send(chunk).await.is_err() {
            return Ok(true);
        }
    }
}

async fn read_full(
    r: &mut (impl tokio::io::AsyncRead + Unpin),
    buf: &mut [u8],
) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let m = r.read(&mut buf[n..]).await?;
        if m == 0 {
            break;
        }
        n += m;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_transport_streams() {
        let mut ts = vec![0u8; 4 * PACKET_LEN];
        for i in 0..4 {
            ts[i * PACKET_LEN] = SYNC_BYTE;
        }
        assert!(looks_like_ts(&ts));
        assert!(!looks_like_ts(b"\x00\x00\x00\x20ftypisom"));
        assert!(!looks_like_ts(&[]));
    }

    #[test]
    fn pacer_continues_across_a_loop() {
        let sample = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../media/sample.ts"))
            .expect("sample");
        let mut pacer = Pacer::new();
        let mut last = Duration::ZERO;
        for _ in 0..2 {
            for p in sample.chunks_exact(PACKET_LEN) {
                if let Some(t) = pacer.observe(p.try_into().expect("packet")) {
                    assert!(t >= last, "media time went backwards");
                    last = t;
                }
            }
        }
        // Two passes over a 16 s clip: about 32 s of media.
        assert!(
            last > Duration::from_secs(31) && last < Duration::from_secs(33),
            "{last:?}"
        );
    }
}
