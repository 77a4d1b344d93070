//! A peer's uplink test: bytes in from the peer, its uplink's rate out.
//!
//! Before a peer may take children, the tracker asks it to send a
//! second's worth of bytes at the rate its probation slots would carry
//! ([`UPLINK_TEST_PATH`](treecast_proto::tracker::UPLINK_TEST_PATH)). The
//! edge reads the body for at most
//! [`UPLINK_TEST_WINDOW`] from its first byte: an uplink that
//! carries the rate delivers the whole body in about a second; a smaller
//! one delivers what it can, and the rate is what arrived over the time it
//! took. The first chunk is not counted (it arrived at the window's start,
//! in no measured time).
//!
//! [`UplinkMeter`] is the sans-IO arithmetic; [`measure`] the driver that
//! reads a hyper body with it.

use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;
use treecast_proto::tracker::UplinkTestResult;

/// How long an unfinished test's body is still read after the answer,
/// so the peer gets the answer before the connection closes (closing a
/// socket with unread bytes resets it, and the reset can overtake the
/// answer).
const DRAIN: Duration = Duration::from_secs(5);

/// How long the edge waits for a test's first byte.
const FIRST_BYTE: Duration = Duration::from_secs(3);

/// Why no rate was measured.
#[derive(Debug, thiserror::Error)]
pub enum UplinkTestError {
    /// No byte arrived in time.
    #[error("no uplink test bytes within {0:?}")]
    NoBytes(Duration),
    /// The body broke off.
    #[error("the uplink test's body broke off: {0}")]
    Body(String),
}

/// What arrived of one test, and when.
#[derive(Debug, Default)]
pub struct UplinkMeter {
    first: Option<Instant>,
    last: Option<Instant>,
    /// Bytes after the first chunk.
    counted: u64,
    bytes: u64,
}

impl UplinkMeter {
    /// `n` bytes arrived at `now`.
    pub fn handle_bytes(&mut self, now: Instant, n: u64) {
        self.bytes += n;
        if self.first.is_none() {
            self.first = Some(now);
        } else {
            self.counted += n;
        }
        self.last = Some(now);
    }

    /// When reading must stop: `window` after the first byte.
    pub fn deadline(&self, window: Duration) -> Option<Instant> {
        self.first.map(|f| f + window)
    }

    /// The rate so far. A body that arrived all at once (no measurable
    /// time between its chunks) went as fast as it was sent: its rate is
    /// taken over a millisecond.
    pub fn result(&self) -> Option<UplinkTestResult> {
        let (first, last) = (self.first?, self.last?);
        let ms = last.duration_since(first).as_millis().max(1) as u64;
        let kbps = (self.counted * 8 / ms).min(u64::from(u32::MAX)) as u32;
        Some(UplinkTestResult {
            bytes: self.bytes,
            kbps,
        })
    }
}

/// Reads `body` for at most `window` from its first byte, and at most
/// `limit` bytes; the rate it arrived at. A body still arriving when
/// reading stops is drained in the background for up to [`DRAIN`].
pub async fn measure(
    mut body: Incoming,
    limit: u64,
    window: Duration,
) -> Result<UplinkTestResult, UplinkTestError> {
    let mut meter = UplinkMeter::default();
    let done = loop {
        let deadline = meter
            .deadline(window)
            .unwrap_or_else(|| Instant::now() + FIRST_BYTE);
        let Ok(frame) = tokio::time::timeout_at(deadline, body.frame()).await else {
            break false;
        };
        match frame {
            None => break true,
            Some(Err(e)) => return Err(UplinkTestError::Body(e.to_string())),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    meter.handle_bytes(Instant::now(), data.len() as u64);
                }
            }
        }
        if meter.bytes >= limit {
            break false;
        }
    };
    let result = meter.result().ok_or(UplinkTestError::NoBytes(FIRST_BYTE))?;
    if !done {
        // Ends by itself: at the body's end, the peer's hang-up, or DRAIN.
        tokio::spawn(async move {
            let _ = tokio::time::timeout(DRAIN, async {
                while let Some(Ok(_)) = body.frame().await {}
            })
            .await;
        });
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_what_arrived_after_the_first_chunk_over_the_time_it_took() {
        let t0 = Instant::now();
        let mut m = UplinkMeter::default();
        assert!(m.result().is_none());
        m.handle_bytes(t0, 10_000);
        // 125,000 bytes in the next second: 1 Mb/s.
        for i in 1..=10 {
            m.handle_bytes(t0 + Duration::from_millis(100 * i), 12_500);
        }
        let r = m.result().expect("bytes arrived");
        assert_eq!(r.bytes, 135_000);
        assert_eq!(r.kbps, 1_000);
        assert_eq!(
            m.deadline(Duration::from_millis(1500)),
            Some(t0 + Duration::from_millis(1500))
        );
    }

    #[test]
    fn a_body_that_arrived_at_once_is_as_fast_as_a_millisecond_allows() {
        let t0 = Instant::now();
        let mut m = UplinkMeter::default();
        m.handle_bytes(t0, 1_000);
        m.handle_bytes(t0, 500_000);
        assert_eq!(m.result().map(|r| r.kbps), Some(4_000_000));
    }
}
