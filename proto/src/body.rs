//! A segment body that grows while many readers stream it.
//!
//! - one [`BodyWriter`] appends chunks as they are produced (the origin's
//!   segmenter, or an edge's single origin fetch);
//! - any number of [`GrowingBody`] handles hand out [`BodyReader`]s, which
//!   yield the bytes already there at once and then wait for more, so a
//!   request that arrives mid-segment is streamed the rest as it arrives
//!   instead of polling;
//! - the writer finishes the body (readers see the end) or fails it (readers
//!   see an error). Dropping an unfinished writer fails the body, so a reader
//!   can never wait forever on a producer that went away.
//!
//! When the body finishes its chunks are joined into one buffer, so a
//! complete segment is served as a single contiguous `Bytes`.

use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use tokio::sync::Notify;

/// Why a body ended without completing.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("segment body failed: {0}")]
pub struct BodyFailed(pub String);

#[derive(Debug)]
enum End {
    Complete,
    Failed(BodyFailed),
}

#[derive(Debug, Default)]
struct State {
    /// Chunks in order; after completion a single joined chunk.
    chunks: Vec<Bytes>,
    /// Byte offset at which each chunk starts.
    starts: Vec<usize>,
    len: usize,
    end: Option<End>,
    /// When the writer finished it (parents time deliveries from here).
    completed: Option<std::time::Instant>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    notify: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves the state consistent (every
        // update is a push or an assignment), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The reading side of a growing body; cheap to clone.
#[derive(Debug, Clone)]
pub struct GrowingBody {
    shared: Arc<Shared>,
}

/// The single writing side of a growing body.
#[derive(Debug)]
pub struct BodyWriter {
    shared: Arc<Shared>,
}

impl GrowingBody {
    /// Creates an empty body and its writer.
    pub fn new() -> (BodyWriter, GrowingBody) {
        let shared = Arc::new(Shared::default());
        (
            BodyWriter {
                shared: shared.clone(),
            },
            GrowingBody { shared },
        )
    }

    /// A body that is already complete with `bytes`.
    pub fn complete(bytes: Bytes) -> GrowingBody {
        let (writer, body) = Self::new();
        writer.push(bytes);
        writer.finish();
        body
    }

    /// A reader positioned at the start.
    pub fn reader(&self) -> BodyReader {
        self.reader_at(0)
    }

    /// A reader positioned at byte `pos`, which may not be written yet (the
    /// reader then waits for it; a body that completes shorter ends there).
    pub fn reader_at(&self, pos: usize) -> BodyReader {
        BodyReader {
            shared: self.shared.clone(),
            pos,
        }
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.shared.lock().len
    }

    /// Whether no bytes were written yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `other` reads the same body (not merely equal bytes).
    pub fn same(&self, other: &GrowingBody) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// Whether the writer finished the body successfully.
    pub fn is_complete(&self) -> bool {
        matches!(self.shared.lock().end, Some(End::Complete))
    }

    /// Whether the body failed.
    pub fn failure(&self) -> Option<BodyFailed> {
        match &self.shared.lock().end {
            Some(End::Failed(e)) => Some(e.clone()),
            _ => None,
        }
    }

    /// When the body was completed, if it is.
    pub fn completed_at(&self) -> Option<std::time::Instant> {
        self.shared.lock().completed
    }

    /// The whole body, if it is complete.
    pub fn bytes(&self) -> Option<Bytes> {
        let state = self.shared.lock();
        match state.end {
            Some(End::Complete) => Some(state.chunks.first().cloned().unwrap_or_default()),
            _ => None,
        }
    }

    /// Waits until the body is complete and returns it.
    pub async fn wait_complete(&self) -> Result<Bytes, BodyFailed> {
        let mut reader = self.reader();
        while reader.next_chunk().await?.is_some() {}
        Ok(self.bytes().unwrap_or_default())
    }
}

impl BodyWriter {
    /// Appends a chunk and wakes waiting readers. Ignored after the end.
    pub fn push(&self, chunk: Bytes) {
        if chunk.is_empty() {
            return;
        }
        {
            let mut state = self.shared.lock();
            if state.end.is_some() {
                return;
            }
            let start = state.len;
            state.len += chunk.len();
            state.starts.push(start);
            state.chunks.push(chunk);
        }
        self.shared.notify.notify_waiters();
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.shared.lock().len
    }

    /// Whether no bytes were written yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Marks the body complete and joins its chunks into one buffer.
    pub fn finish(self) {
        {
            let mut state = self.shared.lock();
            if state.chunks.len() > 1 {
                let mut joined = BytesMut::with_capacity(state.len);
                for c in &state.chunks {
                    joined.extend_from_slice(c);
                }
                state.chunks = vec![joined.freeze()];
                state.starts = vec![0];
            }
            state.end = Some(End::Complete);
            state.completed = Some(std::time::Instant::now());
        }
        self.shared.notify.notify_waiters();
        // `Drop` sees the end already set and does nothing.
    }

    /// Ends the body with an error that every reader will see.
    pub fn fail(self, reason: impl Into<String>) {
        self.set_failed(reason.into());
    }

    fn set_failed(&self, reason: String) {
        {
            let mut state = self.shared.lock();
            if state.end.is_some() {
                return;
            }
            state.end = Some(End::Failed(BodyFailed(reason)));
        }
        self.shared.notify.notify_waiters();
    }
}

impl Drop for BodyWriter {
    fn drop(&mut self) {
        self.set_failed("producer went away before the body was complete".into());
    }
}

/// Streams a [`GrowingBody`] from the start, waiting for bytes not yet written.
#[derive(Debug)]
pub struct BodyReader {
    shared: Arc<Shared>,
    pos: usize,
}

impl BodyReader {
    /// The next chunk; `Ok(None)` at the end of a complete body.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, BodyFailed> {
        loop {
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            // Register interest before looking, so a push between the look
            // and the await is not missed.
            notified.as_mut().enable();
            {
                let state = self.shared.lock();
                if self.pos < state.len {
                    let idx = state.starts.partition_point(|&s| s <= self.pos) - 1;
                    let chunk = &state.chunks[idx];
                    let out = chunk.slice(self.pos - state.starts[idx]..);
                    self.pos += out.len();
                    return Ok(Some(out));
                }
                match &state.end {
                    Some(End::Complete) => return Ok(None),
                    Some(End::Failed(e)) => return Err(e.clone()),
                    None => {}
                }
            }
            notified.await;
        }
    }

    /// Bytes this reader has yielded so far.
    pub fn position(&self) -> usize {
        self.pos
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn reader_sees_existing_then_new_bytes() {
        let (w, body) = GrowingBody::new();
        w.push(Bytes::from_static(b"ab"));
        let mut r = body.reader();
        assert_eq!(r.next_chunk().await, Ok(Some(Bytes::from_static(b"ab"))));
        let waiter = tokio::spawn(async move {
            let mut all = Vec::new();
            while let Some(c) = r.next_chunk().await.expect("no failure") {
                all.extend_from_slice(&c);
            }
            all
        });
        w.push(Bytes::from_static(b"cd"));
        w.push(Bytes::from_static(b"e"));
        w.finish();
        let rest = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("reader finished")
            .expect("task ok");
        assert_eq!(rest, b"cde");
        assert_eq!(body.bytes(), Some(Bytes::from_static(b"abcde")));
    }

    #[tokio::test]
    async fn a_reader_at_an_offset_starts_mid_chunk_or_waits_for_it() {
        let (w, body) = GrowingBody::new();
        w.push(Bytes::from_static(b"abc"));
        w.push(Bytes::from_static(b"de"));
        let mut mid = body.reader_at(1);
        assert_eq!(mid.next_chunk().await, Ok(Some(Bytes::from_static(b"bc"))));
        assert_eq!(mid.next_chunk().await, Ok(Some(Bytes::from_static(b"de"))));
        // Past what is written: it waits, then reads from exactly there.
        let mut ahead = body.reader_at(6);
        let waiter = tokio::spawn(async move { ahead.next_chunk().await });
        w.push(Bytes::from_static(b"fgh"));
        let got = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("reader woke")
            .expect("task ok");
        assert_eq!(got, Ok(Some(Bytes::from_static(b"gh"))));
        // A body that completes shorter than the offset ends there.
        w.finish();
        assert_eq!(body.reader_at(100).next_chunk().await, Ok(None));
    }

    #[tokio::test]
    async fn late_reader_after_join_gets_everything() {
        let (w, body) = GrowingBody::new();
        for part in [&b"12"[..], b"34", b"56"] {
            w.push(Bytes::copy_from_slice(part));
        }
        let mut early = body.reader();
        assert_eq!(
            early.next_chunk().await,
            Ok(Some(Bytes::from_static(b"12")))
        );
        w.finish();
        // The early reader continues from its offset within the joined buffer.
        assert_eq!(
            early.next_chunk().await,
            Ok(Some(Bytes::from_static(b"3456")))
        );
        assert_eq!(early.next_chunk().await, Ok(None));
        assert_eq!(
            body.wait_complete().await,
            Ok(Bytes::from_static(b"123456"))
        );
    }

    #[tokio::test]
    async fn dropped_writer_fails_readers() {
        let (w, body) = GrowingBody::new();
        let mut r = body.reader();
        drop(w);
        assert!(r.next_chunk().await.is_err());
        assert!(body.failure().is_some());
        assert_eq!(body.bytes(), None);
    }
}
