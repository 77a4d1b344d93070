//! Getting through NATs: the agent's QUIC socket as others see it, and
//! the packets that open this peer's NAT to a child about to dial in.
//!
//! - **Observe**: the tracker asks a peer behind a NAT for its reflexive
//!   address (`Assignment::observe`); the agent dials the edge's QUIC
//!   endpoint from its one QUIC socket, sends `Frame::Observe`, and the
//!   edge answers with the address the packets came from. A NAT that maps
//!   one internal socket to one external port whatever the destination
//!   (endpoint-independent mapping, "cone") shows every peer that same
//!   address. The edge has a second port (`ObserveAt::also`) that the
//!   agent asks too: a NAT that maps per destination (symmetric) shows
//!   the two different ports, and then nobody elsewhere could punch
//!   through it, so the agent reports no address and stays reachable
//!   from its own site only (as RFC 5780's mapping test does). The
//!   answer is kept for [`OBSERVE_FOR`] and sent in the next heartbeat.
//!   When the edge never answers at all (its HTTP does), UDP does not
//!   leave this peer's site: the agent says so in its heartbeats, and the
//!   tracker makes it its site's leader or puts it under one
//!   ([`crate::http_feed`]).
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

/// One observation: which edge said what, and when. `reflexive` is
/// `None` when the mapping depends on the destination.
#[derive(Debug, Clone, Copy)]
struct Observation {
    edge: SocketAddr,
    reflexive: Option<SocketAddr>,
    at: Instant,
}

/// The agent's traversal state; see the module docs.
#[derive(Debug)]
pub struct Traversal {
    endpoint: quinn::Endpoint,
    /// The endpoint's socket, for raw datagrams.
    socket: UdpSocket,
    observed: Mutex<Option<Observation>>,
    /// The edge's QUIC endpoint never answered: no UDP leaves the site.
    no_udp: std::sync::atomic::AtomicBool,
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
            no_udp: std::sync::atomic::AtomicBool::new(false),
            observing: tokio::sync::Mutex::new(()),
        }
    }

    /// Whether the edge's QUIC endpoint never answered this agent.
    pub fn no_udp(&self) -> bool {
        self.no_udp.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn fresh(&self, edge: SocketAddr) -> Option<Observation> {
        let o = (*self.observed.lock().unwrap_or_else(|e| e.into_inner()))?;
        (o.edge == edge && o.at.elapsed() < OBSERVE_FOR).then_some(o)
    }

    /// This socket's address as `at` sees it: the last answer while fresh,
    /// else asked now. `None` when the edge cannot be asked (logged), and
    /// when the NAT maps per destination.
    pub async fn observe(&self, at: &ObserveAt) -> Option<SocketAddr> {
        if let Some(o) = self.fresh(at.addr) {
            return o.reflexive;
        }
        let _one = self.observing.lock().await;
        if let Some(o) = self.fresh(at.addr) {
            return o.reflexive;
        }
        let first = match tokio::time::timeout(OBSERVE_TIMEOUT, self.ask(at, at.addr)).await {
            Ok(r) => r,
            Err(_) => {
                // No answer to QUIC at all, while the tracker (HTTP)
                // answers: UDP does not leave this site.
                if !self.no_udp.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    warn!(edge = %at.addr, "the edge never answered QUIC: UDP seems blocked on the way out; this peer will take the stream over HTTP or from its site");
                }
                return None;
            }
        };
        let first = match first {
            Ok(a) => a,
            Err(e) => {
                warn!(edge = %at.addr, error = %e, "cannot learn this peer's reflexive address");
                return None;
            }
        };
        // The second port tells a mapping per destination (symmetric)
        // apart. When it does not answer (an operator who opened only the
        // first), the mapping is untested and the first answer is used:
        // the outcomes of traversals, reported to the tracker, then tell.
        let second = match at.also {
            Some(also) => match tokio::time::timeout(OBSERVE_TIMEOUT, self.ask(at, also)).await {
                Ok(Ok(a)) => Some(a),
                Ok(Err(e)) => {
                    warn!(edge = %also, error = %e, "the edge's second QUIC port did not answer; this NAT's mapping is untested");
                    None
                }
                Err(_) => {
                    warn!(edge = %also, "the edge's second QUIC port did not answer in time; this NAT's mapping is untested");
                    None
                }
            },
            None => None,
        };
        let reflexive = match second {
            Some(second) if second != first => {
                warn!(edge = %at.addr, %first, %second, "this peer's NAT maps each destination to another port (symmetric): only its own site can reach it");
                None
            }
            _ => {
                info!(edge = %at.addr, reflexive = %first, "the edge sees this peer's QUIC socket at its reflexive address");
                Some(first)
            }
        };
        *self.observed.lock().unwrap_or_else(|e| e.into_inner()) = Some(Observation {
            edge: at.addr,
            reflexive,
            at: Instant::now(),
        });
        reflexive
    }

    async fn ask(&self, at: &ObserveAt, addr: SocketAddr) -> Result<SocketAddr, TreeError> {
        let fp = at
            .cert_fingerprint
            .as_deref()
            .and_then(parse_fingerprint)
            .ok_or_else(|| TreeError::Protocol("no valid edge certificate fingerprint".into()))?;
        let config = client_config(fp).map_err(|e| TreeError::Protocol(e.to_string()))?;
        let conn = self
            .endpoint
            .connect_with(config, addr, SERVER_NAME)
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
