//! One RTMP connection as a state machine: bytes from the publisher in,
//! bytes to send back, publish requests and transport stream out.
//!
//! The handshake and the chunk stream, AMF commands and acknowledgements are
//! `rml_rtmp`'s ([`Handshake`], [`ServerSession`]); this type strings them
//! together, accepts the `connect` of any application name, hands `publish`
//! requests to the driver (which checks the key and the channel), and
//! remuxes the media of an accepted publish with [`FlvRemuxer`].
//!
//! `rml_rtmp` was chosen over xiu's `rtmp` crate because it is sans-IO: it
//! takes bytes and returns packets and events, as every core here does, and
//! brings no runtime, stream hub or configuration of its own. The protocol
//! has not changed since its last release.

use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{
    ServerSession, ServerSessionConfig, ServerSessionEvent, ServerSessionResult,
};

use super::flv::{FlvRemuxer, RemuxError};

/// Why a connection cannot go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionError {
    /// The client's handshake is not RTMP.
    #[error("RTMP handshake failed: {0}")]
    Handshake(String),
    /// The chunk stream or a command does not parse.
    #[error("RTMP protocol error: {0}")]
    Protocol(String),
}

/// What the driver must do.
#[derive(Debug, PartialEq, Eq)]
pub enum Output {
    /// Bytes for the client, in order.
    Send(Vec<u8>),
    /// The client asks to publish `stream_key` in application `app`:
    /// answer with [`Connection::accept_publish`] or
    /// [`Connection::reject_publish`].
    Publish {
        /// To answer with.
        request_id: u32,
        /// The application name (`live` in `rtmp://host/live/...`).
        app: String,
        /// Everything after the application: `<channel>[?key=...]`.
        stream_key: String,
    },
    /// Transport stream bytes of the accepted publish.
    Media(Vec<u8>),
    /// A tag that could not be remuxed.
    Problem(RemuxError),
    /// The client ended its publish.
    Unpublished,
}

enum Stage {
    Handshake(Box<Handshake>),
    Session(Box<ServerSession>),
}

/// The connection; see the module docs.
pub struct Connection {
    stage: Stage,
    publishing: bool,
    remux: FlvRemuxer,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let stage = match self.stage {
            Stage::Handshake(_) => "handshake",
            Stage::Session(_) => "session",
        };
        f.debug_struct("Connection")
            .field("stage", &stage)
            .field("publishing", &self.publishing)
            .finish_non_exhaustive()
    }
}

impl Default for Connection {
    fn default() -> Self {
        Self::new()
    }
}

fn protocol(e: impl std::fmt::Display) -> ConnectionError {
    ConnectionError::Protocol(e.to_string())
}

impl Connection {
    /// A connection waiting for the client's handshake.
    pub fn new() -> Self {
        Self {
            stage: Stage::Handshake(Box::new(Handshake::new(PeerType::Server))),
            publishing: false,
            remux: FlvRemuxer::new(),
        }
    }

    /// Whether a publish has been accepted.
    pub fn is_publishing(&self) -> bool {
        self.publishing
    }

    /// Handles bytes from the client.
    pub fn handle_input(&mut self, data: &[u8]) -> Result<Vec<Output>, ConnectionError> {
        let mut out = Vec::new();
        let session = match &mut self.stage {
            Stage::Session(s) => s,
            Stage::Handshake(h) => {
                let result = h
                    .process_bytes(data)
                    .map_err(|e| ConnectionError::Handshake(e.to_string()))?;
                let (response, rest) = match result {
                    HandshakeProcessResult::InProgress { response_bytes } => {
                        if !response_bytes.is_empty() {
                            out.push(Output::Send(response_bytes));
                        }
                        return Ok(out);
                    }
                    HandshakeProcessResult::Completed {
                        response_bytes,
                        remaining_bytes,
                    } => (response_bytes, remaining_bytes),
                };
                if !response.is_empty() {
                    out.push(Output::Send(response));
                }
                let (session, first) =
                    ServerSession::new(ServerSessionConfig::new()).map_err(protocol)?;
                self.stage = Stage::Session(Box::new(session));
                self.results(first, &mut out)?;
                if !rest.is_empty() {
                    out.extend(self.handle_input(&rest)?);
                }
                return Ok(out);
            }
        };
        let results = session.handle_input(data).map_err(protocol)?;
        self.results(results, &mut out)?;
        Ok(out)
    }

    /// Accepts the publish request `request_id`: media flows from now on.
    pub fn accept_publish(&mut self, request_id: u32) -> Result<Vec<Output>, ConnectionError> {
        let Stage::Session(s) = &mut self.stage else {
            return Ok(Vec::new());
        };
        let results = s.accept_request(request_id).map_err(protocol)?;
        self.publishing = true;
        let mut out = Vec::new();
        self.results(results, &mut out)?;
        Ok(out)
    }

    /// Refuses the publish request `request_id` with `why`, which the
    /// client shows its user (OBS and ffmpeg print it).
    pub fn reject_publish(
        &mut self,
        request_id: u32,
        why: &str,
    ) -> Result<Vec<Output>, ConnectionError> {
        let Stage::Session(s) = &mut self.stage else {
            return Ok(Vec::new());
        };
        let results = s
            .reject_request(request_id, "NetStream.Publish.BadName", why)
            .map_err(protocol)?;
        let mut out = Vec::new();
        self.results(results, &mut out)?;
        Ok(out)
    }

    fn results(
        &mut self,
        results: Vec<ServerSessionResult>,
        out: &mut Vec<Output>,
    ) -> Result<(), ConnectionError> {
        let mut media = Vec::new();
        for r in results {
            match r {
                ServerSessionResult::OutboundResponse(p) => out.push(Output::Send(p.bytes)),
                ServerSessionResult::RaisedEvent(e) => self.event(e, out, &mut media)?,
                ServerSessionResult::UnhandleableMessageReceived(_) => {}
            }
        }
        if !media.is_empty() {
            out.push(Output::Media(media));
        }
        Ok(())
    }

    fn event(
        &mut self,
        event: ServerSessionEvent,
        out: &mut Vec<Output>,
        media: &mut Vec<u8>,
    ) -> Result<(), ConnectionError> {
        match event {
            ServerSessionEvent::ConnectionRequested { request_id, .. } => {
                let Stage::Session(s) = &mut self.stage else {
                    return Ok(());
                };
                let results = s.accept_request(request_id).map_err(protocol)?;
                for r in results {
                    if let ServerSessionResult::OutboundResponse(p) = r {
                        out.push(Output::Send(p.bytes));
                    }
                }
            }
            ServerSessionEvent::PublishStreamRequested {
                request_id,
                app_name,
                stream_key,
                ..
            } => out.push(Output::Publish {
                request_id,
                app: app_name,
                stream_key,
            }),
            ServerSessionEvent::VideoDataReceived {
                data, timestamp, ..
            } if self.publishing => {
                if let Err(e) = self.remux.video(timestamp.value, &data, media) {
                    out.push(Output::Problem(e));
                }
            }
            ServerSessionEvent::AudioDataReceived {
                data, timestamp, ..
            } if self.publishing => {
                if let Err(e) = self.remux.audio(timestamp.value, &data, media) {
                    out.push(Output::Problem(e));
                }
            }
            ServerSessionEvent::StreamMetadataChanged { metadata, .. } => {
                let video = metadata.video_codec_id.is_some() || metadata.video_width.is_some();
                let audio =
                    metadata.audio_codec_id.is_some() || metadata.audio_sample_rate.is_some();
                self.remux.announce(video, audio);
            }
            ServerSessionEvent::PublishStreamFinished { .. } if self.publishing => {
                self.publishing = false;
                // A later publish on this connection is a new stream.
                self.remux = FlvRemuxer::new();
                // Media of this batch first: it came before the unpublish.
                if !media.is_empty() {
                    out.push(Output::Media(std::mem::take(media)));
                }
                out.push(Output::Unpublished);
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_handshake_that_is_not_rtmp_fails() {
        let mut c = Connection::new();
        let e = c
            .handle_input(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect_err("not rtmp");
        assert!(matches!(e, ConnectionError::Handshake(_)), "{e}");
    }

    #[test]
    fn a_client_handshake_is_answered() {
        let mut client = Handshake::new(PeerType::Client);
        let c0c1 = client.generate_outbound_p0_and_p1().expect("c0c1");
        let mut c = Connection::new();
        let out = c.handle_input(&c0c1).expect("in progress");
        let Some(Output::Send(s0s1s2)) = out.first() else {
            panic!("no answer: {out:?}");
        };
        let done = client.process_bytes(s0s1s2).expect("valid answer");
        let HandshakeProcessResult::Completed { response_bytes, .. } = done else {
            panic!("client handshake not complete");
        };
        let out = c.handle_input(&response_bytes).expect("completes");
        assert!(
            out.iter().any(|o| matches!(o, Output::Send(_))),
            "the session's first messages follow the handshake"
        );
    }

    proptest! {
        /// Garbage after a valid handshake is an error or ignored, never a
        /// panic.
        #[test]
        fn garbage_after_the_handshake_never_panics(data in proptest::collection::vec(any::<u8>(), 0..4_000)) {
            let mut client = Handshake::new(PeerType::Client);
            let c0c1 = client.generate_outbound_p0_and_p1().expect("c0c1");
            let mut c = Connection::new();
            let out = c.handle_input(&c0c1).expect("in progress");
            let Some(Output::Send(s)) = out.first() else { panic!("no answer") };
            let HandshakeProcessResult::Completed { response_bytes, .. } =
                client.process_bytes(s).expect("valid") else { panic!("incomplete") };
            c.handle_input(&response_bytes).expect("completes");
            for chunk in data.chunks(97) {
                if c.handle_input(chunk).is_err() {
                    break;
                }
            }
        }
    }
}
