//! The edges a peer may use, and which one it uses now.
//!
//! A peer is given one edge or several (`edge = [...]`, `--edge` repeated,
//! or one DNS name with several addresses). Each edge roots its own trees
//! and runs its own tracker; the peer joins one and fails over to another
//! when its edge stops answering:
//!
//! - at start every edge is probed (`GET /healthz`) at once; among those
//!   that answer within [`TIE_MARGIN`] of the fastest, one is drawn at
//!   random, so an audience given the same list splits evenly over equally
//!   near edges, and a far or dead edge is never chosen while a near one
//!   answers. Edges that do not answer are reported and kept for later;
//! - a request to the current edge that fails in transport (no
//!   connection, no answer in time) moves the peer to the next edge that
//!   has not failed in the last [`FAILED_FOR`]; every task using the edge
//!   (the tracker, the fallback) sees the move, and the tracker joins the
//!   new edge's tree at once, naming the parent it still streams from;
//! - an answer with an error status is not a failure of the edge.
//!
//! [`EdgeChoice`] decides (sans-IO: failures and times in, the edge to use
//! out); [`Edges`] drives it with the HTTP clients.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use http::Uri;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::edge_client::{EdgeClient, EdgeError};

/// An edge that failed is not chosen again for this long while another
/// has not failed.
pub const FAILED_FOR: Duration = Duration::from_secs(10);
/// Edges answering the probe within this of the fastest count as equally
/// near.
pub const TIE_MARGIN: Duration = Duration::from_millis(20);
/// How long the start-up probe waits for each edge.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Which edge to use; see the module docs.
#[derive(Debug, Clone)]
pub struct EdgeChoice {
    current: usize,
    failed_at: Vec<Option<Instant>>,
}

impl EdgeChoice {
    /// A choice among `n` edges (at least one), starting with `first`.
    pub fn new(n: usize, first: usize) -> Self {
        let n = n.max(1);
        Self {
            current: first.min(n - 1),
            failed_at: vec![None; n],
        }
    }

    /// The edge in use.
    pub fn current(&self) -> usize {
        self.current
    }

    /// The probe's answers (round-trip time per edge, `None`: no answer)
    /// and a random draw: the edge to start with.
    pub fn from_probe(rtts: &[Option<Duration>], draw: u64, now: Instant) -> Self {
        let mut choice = Self::new(rtts.len(), 0);
        for (i, r) in rtts.iter().enumerate() {
            if r.is_none() {
                choice.failed_at[i] = Some(now);
            }
        }
        if let Some(best) = rtts.iter().flatten().min() {
            let near: Vec<usize> = (0..rtts.len())
                .filter(|&i| rtts[i].is_some_and(|r| r <= *best + TIE_MARGIN))
                .collect();
            choice.current = near[(draw % near.len() as u64) as usize];
        }
        choice
    }

    /// Edge `index` failed in transport at `now`. Returns the edge to use
    /// from now on when that is a different one: `prefer` if given and it
    /// has not failed lately (the edge a parent said it moved to), else the
    /// next in order.
    pub fn failed(&mut self, index: usize, now: Instant, prefer: Option<usize>) -> Option<usize> {
        *self.failed_at.get_mut(index)? = Some(now);
        if index != self.current || self.failed_at.len() == 1 {
            return None;
        }
        let recent = |t: &Option<Instant>| t.is_some_and(|t| now.duration_since(t) < FAILED_FOR);
        if let Some(p) =
            prefer.filter(|&p| p != index && self.failed_at.get(p).is_some_and(|t| !recent(t)))
        {
            self.current = p;
            return Some(p);
        }
        let n = self.failed_at.len();
        let next = (1..n).map(|k| (index + k) % n);
        // The next edge that has not failed lately; if every one has, the
        // one that failed longest ago (it may be back).
        let pick = next
            .clone()
            .find(|&i| !recent(&self.failed_at[i]))
            .or_else(|| next.min_by_key(|&i| self.failed_at[i]))?;
        self.current = pick;
        Some(pick)
    }

    /// Edge `index` answered.
    pub fn succeeded(&mut self, index: usize) {
        if let Some(slot) = self.failed_at.get_mut(index) {
            *slot = None;
        }
    }
}

/// The edge URLs a peer was given: one URL per address when a host name
/// resolves to several, in a random order per peer (`draw`), so a DNS name
/// spreads its audience. Names that do not resolve are kept as they are
/// (the probe reports them).
pub async fn expand(uris: &[Uri], draw: u64) -> Vec<Uri> {
    let mut out = Vec::new();
    for uri in uris {
        let host = uri.host().unwrap_or_default();
        let port = uri.port_u16().unwrap_or(80);
        if host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok()
        {
            out.push(uri.clone());
            continue;
        }
        let addrs: Vec<SocketAddr> = match tokio::net::lookup_host((host, port)).await {
            Ok(a) => a.collect(),
            Err(e) => {
                warn!(edge = %uri, error = %e, "edge name does not resolve; kept to try later");
                out.push(uri.clone());
                continue;
            }
        };
        let mut addrs = addrs;
        addrs.dedup();
        if addrs.len() <= 1 {
            out.push(uri.clone());
            continue;
        }
        let k = (draw % addrs.len() as u64) as usize;
        addrs.rotate_left(k);
        for a in addrs {
            match format!("http://{a}").parse() {
                Ok(u) => out.push(u),
                Err(e) => warn!(address = %a, error = %e, "unusable edge address"),
            }
        }
    }
    out
}

/// The edges, their clients and the current choice.
#[derive(Debug)]
pub struct Edges {
    clients: Vec<EdgeClient>,
    choice: Mutex<EdgeChoice>,
    /// The index of the edge in use; changes on a failover.
    pub changed: watch::Sender<usize>,
    /// The edge the parent last said it is placed by (`Frame::Edge`), when
    /// it is one of these and not the one in use: the tracker task checks
    /// the edge in use.
    pub hinted: watch::Sender<Option<usize>>,
}

/// True for a failure of the edge itself (no connection, no answer), as
/// opposed to an answer saying no.
pub fn is_edge_failure(e: &EdgeError) -> bool {
    matches!(e, EdgeError::Transport(_) | EdgeError::Timeout(_))
}

impl Edges {
    /// Edges served by `clients` (at least one), starting with `choice`.
    pub fn new(clients: Vec<EdgeClient>, choice: EdgeChoice) -> Self {
        let current = choice.current();
        Self {
            clients,
            choice: Mutex::new(choice),
            changed: watch::channel(current).0,
            hinted: watch::channel(None).0,
        }
    }

    /// Probes every edge at once and starts with the nearest (see the
    /// module docs); `draw` breaks ties.
    pub async fn probe(clients: Vec<EdgeClient>, draw: u64) -> Self {
        let probes = clients.iter().map(|c| async move {
            let t = Instant::now();
            match c.get("/healthz", 1024, PROBE_TIMEOUT).await {
                Ok(_) => Some(t.elapsed()),
                Err(e) => {
                    warn!(edge = c.base(), error = %e, "edge does not answer; kept to try later");
                    None
                }
            }
        });
        let rtts = futures_util::future::join_all(probes).await;
        let choice = EdgeChoice::from_probe(&rtts, draw, Instant::now());
        let edges = Self::new(clients, choice);
        let (i, c) = edges.current();
        info!(edge = c.base(), rtt_ms = ?rtts[i].map(|r| r.as_millis()), of = edges.clients.len(), "using edge");
        edges
    }

    fn lock(&self) -> MutexGuard<'_, EdgeChoice> {
        // Updates are single calls; a poisoned lock is consistent.
        self.choice.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The edge in use and its index.
    pub fn current(&self) -> (usize, &EdgeClient) {
        let i = self.lock().current();
        (i, &self.clients[i])
    }

    /// The client of edge `index` (of the edge in use if out of range).
    pub fn client(&self, index: usize) -> &EdgeClient {
        self.clients.get(index).unwrap_or_else(|| self.current().1)
    }

    /// Every edge's base URL, in order.
    pub fn bases(&self) -> Vec<String> {
        self.clients.iter().map(|c| c.base().to_owned()).collect()
    }

    /// The parent said its tracker is the edge at `base`: remembered for
    /// the tracker task when that is another of these edges. Anything else
    /// (an edge this peer was not given) is ignored, so a parent can only
    /// make its child check its own edge, never send it elsewhere.
    pub fn hint(&self, base: &str) {
        let Some(i) = self.clients.iter().position(|c| c.base() == base) else {
            return;
        };
        if i != self.current().0 {
            self.hinted.send_replace(Some(i));
        }
    }

    /// Records how a request to edge `index` went: a transport failure of
    /// the edge in use moves to another.
    pub fn record<T>(&self, index: usize, result: &Result<T, EdgeError>) {
        self.record_preferring(index, result, None);
    }

    /// As [`record`](Self::record), moving to `prefer` on a failure when it
    /// has not failed lately.
    pub fn record_preferring<T>(
        &self,
        index: usize,
        result: &Result<T, EdgeError>,
        prefer: Option<usize>,
    ) {
        match result {
            Ok(_) => self.lock().succeeded(index),
            Err(e) if is_edge_failure(e) => {
                let moved = self.lock().failed(index, Instant::now(), prefer);
                if let Some(next) = moved {
                    warn!(
                        failed = self.clients[index].base(),
                        next = self.clients[next].base(),
                        error = %e,
                        "edge unreachable; moving to another edge"
                    );
                    self.changed.send_replace(next);
                }
            }
            Err(_) => {}
        }
    }

    /// GETs `path` from the edge in use; when that edge fails, once more
    /// from the one it moved to.
    pub async fn get(
        &self,
        path: &str,
        limit: usize,
        timeout: Duration,
    ) -> Result<bytes::Bytes, EdgeError> {
        let (i, c) = self.current();
        let r = c.get(path, limit, timeout).await;
        self.record(i, &r);
        match r {
            Err(e) if is_edge_failure(&e) && self.current().0 != i => {
                let (j, c) = self.current();
                let r = c.get(path, limit, timeout).await;
                self.record(j, &r);
                r
            }
            r => r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_probe_picks_among_the_nearest_and_never_a_silent_one() {
        let now = Instant::now();
        let rtts = [Some(5 * MS), None, Some(12 * MS), Some(300 * MS)];
        let picks: std::collections::BTreeSet<usize> = (0..20)
            .map(|d| EdgeChoice::from_probe(&rtts, d, now).current())
            .collect();
        assert_eq!(
            picks,
            [0, 2].into(),
            "within the margin of the fastest only"
        );
        // Nothing answers: start with the first, every one marked failed.
        assert_eq!(EdgeChoice::from_probe(&[None, None], 7, now).current(), 0);
    }

    #[test]
    fn a_failure_of_the_current_edge_moves_to_the_next_that_has_not_failed() {
        let t = Instant::now();
        let mut c = EdgeChoice::new(3, 0);
        assert_eq!(c.failed(0, t, None), Some(1));
        // A late failure report about an edge no longer in use moves nothing.
        assert_eq!(c.failed(0, t, None), None);
        // Edge 1 fails too: 2 is next; then 2 fails and both others failed
        // lately: the one that failed longest ago.
        assert_eq!(c.failed(1, t + MS, None), Some(2));
        assert_eq!(c.failed(2, t + 2 * MS, None), Some(0));
        // Long after, an edge that failed counts as back.
        let later = t + FAILED_FOR + 3 * MS;
        assert_eq!(c.failed(0, later, None), Some(1));
        c.succeeded(2);
        assert_eq!(c.failed(1, later, None), Some(2));
    }

    #[test]
    fn a_failure_moves_to_the_edge_the_parent_named_unless_it_failed_too() {
        let t = Instant::now();
        let mut c = EdgeChoice::new(3, 0);
        assert_eq!(
            c.failed(0, t, Some(2)),
            Some(2),
            "the parent's edge, not the next"
        );
        let mut c = EdgeChoice::new(3, 0);
        assert_eq!(c.failed(2, t, None), None);
        assert_eq!(c.failed(0, t, Some(2)), Some(1), "edge 2 failed lately");
    }

    #[test]
    fn one_edge_stays_the_edge() {
        let mut c = EdgeChoice::new(1, 0);
        assert_eq!(c.failed(0, Instant::now(), None), None);
        assert_eq!(c.current(), 0);
        assert_eq!(
            c.failed(5, Instant::now(), None),
            None,
            "an unknown index is ignored"
        );
    }

    #[tokio::test]
    async fn a_name_with_several_addresses_becomes_several_edges() {
        let uris: Vec<Uri> = vec![
            "http://localhost:8081".parse().expect("uri"),
            "http://127.0.0.2:9000".parse().expect("uri"),
        ];
        let out = expand(&uris, 0).await;
        let local: Vec<String> = std::net::ToSocketAddrs::to_socket_addrs(&("localhost", 8081))
            .expect("localhost resolves")
            .map(|a| format!("http://{a}/"))
            .collect();
        let mut dedup = local.clone();
        dedup.dedup();
        let want = if dedup.len() > 1 { dedup.len() + 1 } else { 2 };
        assert_eq!(out.len(), want, "{out:?} from {local:?}");
        assert_eq!(
            out.last().map(|u| u.to_string()),
            Some("http://127.0.0.2:9000/".into())
        );
    }
}
