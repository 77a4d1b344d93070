//! Getting through NATs: the agent's QUIC socket as others see it, and
//! the packets that open this peer's NAT to a child about to dial in.
//!
//! - **Observe**: the tracker asks a peer behind a NAT for its reflexive
//!   address (`Assignment::observe`); the agent dials the edge's QUIC
//!   endpoint from its one QUIC socket, sends `Frame::Observe`, and the
//!   edge answers with the address the packets came from. A NAT that maps
//!   one internal socket to one external port whatever the destination
//!   (endpoint-independent mapping, "cone") shows every peer that same
//!   address. The answer is kept for [`OBSERVE_FOR`] and sent in the next
//!   heartbeat.
//! - **Punch**: the tracker names children about to dial this peer from
//!   other sites (`Assignment::punch`); the agent sends a few datagrams to
//!   each from the QUIC socket. They open this peer's NAT towards the
//!   child, so the child's handshake, retried for a few seconds, gets in
//!   (a simultaneous open). The datagrams are a few zero bytes, which a
//!   QUIC endpoint drops as malformed; their only job is the NAT's state.
//!
//! quinn owns the socket's receive side; sending a raw datagram needs the
//! same socket (the NAT mapping is per socket), so the agent binds it
//! itself and keeps a clone for [`Traversal::punch`]. quinn has no API for
//! either step (upstream quinn lacks the address-discovery extension).

use std::net::{SocketAddr, UdpSocket};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};
use treecast_proto::quic::{client_config, parse_fingerprint, SERVER_NAME};
use treecast_proto::tracker::ObserveAt;
use treecast_proto::tree::{self, TreeError};

/// How long an observed address is trusted before the edge is asked again
/// (a NAT may drop an idle mapping and pick another port).
pub const OBSERVE_FOR: Duration = Duration::from_secs(60);
/// Longest an observation may take.
const OBSERVE_TIMEOUT: Duration = Duration::from_secs(3);
/// Datagrams sent to each address punched to: one may be lost.
const PUNCH_PACKETS: usize = 3;
/// What a punch datagram carries: too short to be a QUIC packet, and with
/// the fixed bit clear, so any QUIC endpoint drops it.
const PUNCH_PAYLOAD: [u8; 4] = [0; 4];

/// One observation: which edge said what, and when.
#[derive(Debug, Clone, Copy)]
struct Observation {
    edge: SocketAddr,
    reflexive: SocketAddr,
    at: Instant,
}

/// The agent's traversal state; see the module docs.
#[derive(Debug)]
pub struct Traversal {
    endpoint: quinn::Endpoint,
    /// The endpoint's socket, for raw datagrams.
    socket: UdpSocket,
    observed: Mutex<Option<Observation>>,
    /// Serialises observations: every channel's tracker task may ask at
    /// once, and one answer serves them all.
    observing: tokio::sync::Mutex<()>,
}

impl Traversal {
    /// Traversal over `endpoint`, whose socket `socket` is a clone of.
    pub fn new(endpoint: quinn::Endpoint, socket: UdpSocket) -> Self {
        Self {
            endpoint,
            socket,
            observed: Mutex::new(None),
            observing: tokio::sync::Mutex::new(()),
        }
    }

    fn fresh(&self, edge: SocketAddr) -> Option<SocketAddr> {
        let o = (*self.observed.lock().unwrap_or_else(|e| e.into_inner()))?;
        (o.edge == edge && o.at.elapsed() < OBSERVE_FOR).then_some(o.reflexive)
    }

    /// This socket's address as `at` sees it: the last answer while fresh,
    /// else asked now. `None` (logged) when the edge cannot be asked.
    pub async fn observe(&self, at: &ObserveAt) -> Option<SocketAddr> {
        if let Some(r) = self.fresh(at.addr) {
            return Some(r);
        }
        let _one = self.observing.lock().await;
        if let Some(r) = self.fresh(at.addr) {
            return Some(r);
        }
        match tokio::time::timeout(OBSERVE_TIMEOUT, self.ask(at)).await {
            Ok(Ok(reflexive)) => {
                info!(edge = %at.addr, %reflexive, "the edge sees this peer's QUIC socket at its reflexive address");
                *self.observed.lock().unwrap_or_else(|e| e.into_inner()) = Some(Observation {
                    edge: at.addr,
                    reflexive,
                    at: Instant::now(),
                });
                Some(reflexive)
            }
            Ok(Err(e)) => {
                warn!(edge = %at.addr, error = %e, "cannot learn this peer's reflexive address");
                None
            }
            Err(_) => {
                warn!(edge = %at.addr, "the edge did not tell this peer its reflexive address in time");
                None
            }
        }
    }

    async fn ask(&self, at: &ObserveAt) -> Result<SocketAddr, TreeError> {
        let fp = at
            .cert_fingerprint
            .as_deref()
            .and_then(parse_fingerprint)
            .ok_or_else(|| TreeError::Protocol("no valid edge certificate fingerprint".into()))?;
        let config = client_config(fp).map_err(|e| TreeError::Protocol(e.to_string()))?;
        let conn = self
            .endpoint
            .connect_with(config, at.addr, SERVER_NAME)
            .map_err(|e| TreeError::Protocol(e.to_string()))?
            .await?;
        tree::observe(&conn).await
    }

    /// Opens this peer's NAT towards each of `targets` (see the module
    /// docs). Returns how many were sent to.
    pub fn punch(&self, targets: &[SocketAddr]) -> usize {
        let mut sent = 0;
        for &t in targets {
            let mut ok = false;
            for _ in 0..PUNCH_PACKETS {
                // The socket is non-blocking (quinn set it so): a full
                // buffer drops a datagram, which the others cover.
                ok |= self.socket.send_to(&PUNCH_PAYLOAD, t).is_ok();
            }
            debug!(target = %t, ok, "punched towards a child");
            sent += usize::from(ok);
        }
        sent
    }
}
