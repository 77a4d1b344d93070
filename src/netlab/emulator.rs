//! The lab's delay and loss: every IPv4 packet the router namespace
//! forwards is handed to this process (iptables' `NFQUEUE` target), held
//! for the one-way delay of the two links it crosses, or dropped with
//! their loss, and released.
//!
//! Written here because the kernel's netem qdisc is not available on the
//! machines the lab runs on, and no crate emulates links over NFQUEUE;
//! the queue itself is the `nfq` crate. The decisions are a sans-IO core
//! ([`Emulator`]: a packet's header and `now` in, drop or a release time
//! out; [`Hold`]: what is due when) driven by one thread
//! ([`spawn`]) that talks to the kernel.
//!
//! A link's `rtt_ms` is its round trip to the core: a packet from peer A
//! to peer B waits `rtt_A/2 + rtt_B/2` plus each link's jitter (uniform in
//! `[0, jitter]`), and survives each link's loss independently. Jitter
//! keeps a path's packets in order (a queue's delay varies, its order does
//! not) except for a link's `reorder` share of packets, which take their
//! own jittered time and may overtake. Bandwidth is not emulated here: the
//! veth pairs' `tc` qdiscs cap it, in the kernel, with real queues.
//!
//! The driver is the lab's network, so it runs at the highest priority a
//! thread can ask for without real time ([`NICENESS`]) and measures how
//! late it lets packets go ([`Lateness`]): a starved driver delays every
//! link at once, which peers cannot tell from a slow network.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::rng::Rng;

/// One direction of a link's delay and loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Leg {
    /// Fixed one-way delay.
    pub delay: Duration,
    /// Extra delay per packet, uniform in `[0, jitter]`.
    pub jitter: Duration,
    /// Probability a packet is lost on this link.
    pub loss: f64,
    /// Probability a packet's jitter may overtake the packets sent before
    /// it; otherwise a path keeps its packets in order, as queues do.
    pub reorder: f64,
}

/// What happens to a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Lost on the way.
    Drop,
    /// Forwarded at this instant.
    Release(Instant),
}

/// Decides each packet's fate from the links of its source and
/// destination address.
#[derive(Debug)]
pub struct Emulator {
    legs: HashMap<Ipv4Addr, Leg>,
    rng: Rng,
    /// Per path, the latest release time so far (keeps paths in order).
    last: HashMap<(Ipv4Addr, Ipv4Addr), Instant>,
    /// Packets seen, dropped, and not IPv4 (released at once).
    pub counts: Counts,
}

/// What the emulator did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Packets decided.
    pub packets: u64,
    /// Of those, dropped.
    pub dropped: u64,
    /// Of those, not IPv4 or between addresses of no link.
    pub passed: u64,
    /// Of those, released before a packet sent earlier on their path.
    pub reordered: u64,
}

impl Emulator {
    /// An emulator for the links at these addresses.
    pub fn new(legs: HashMap<Ipv4Addr, Leg>, seed: u64) -> Self {
        Self {
            legs,
            rng: Rng::new(seed),
            last: HashMap::new(),
            counts: Counts::default(),
        }
    }

    /// The fate of the packet whose first bytes (the IP header) are
    /// `header`, arriving `now`, standing for `segments` wire packets (a
    /// sender's segmentation-offload batch travels the queue whole; each
    /// of its packets has the link's loss, so the batch is lost with
    /// `1 - (1 - loss)^segments`, as one burst).
    pub fn handle_packet(&mut self, now: Instant, header: &[u8], segments: u32) -> Decision {
        self.counts.packets += 1;
        let Some((src, dst)) = ipv4_addresses(header) else {
            self.counts.passed += 1;
            return Decision::Release(now);
        };
        let mut at = now;
        let mut any = false;
        let mut may_reorder = false;
        for leg in [self.legs.get(&src), self.legs.get(&dst)]
            .into_iter()
            .flatten()
        {
            any = true;
            let loss = 1.0 - (1.0 - leg.loss).powi(segments.max(1) as i32);
            if leg.loss > 0.0 && self.rng.chance(loss) {
                self.counts.dropped += 1;
                return Decision::Drop;
            }
            at += leg.delay + leg.jitter.mul_f64(self.rng.unit());
            may_reorder |= leg.reorder > 0.0 && self.rng.chance(leg.reorder);
        }
        if !any {
            self.counts.passed += 1;
            return Decision::Release(at);
        }
        let last = self.last.entry((src, dst)).or_insert(at);
        if may_reorder {
            self.counts.reordered += u64::from(at < *last);
        } else {
            at = at.max(*last);
            *last = at;
        }
        Decision::Release(at)
    }
}

fn ipv4_addresses(h: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr)> {
    if h.len() < 20 || h[0] >> 4 != 4 {
        return None;
    }
    let addr = |i: usize| Ipv4Addr::new(h[i], h[i + 1], h[i + 2], h[i + 3]);
    Some((addr(12), addr(16)))
}

/// Items held until their release time: earliest first, and in arrival
/// order among equal times.
#[derive(Debug)]
pub struct Hold<T> {
    heap: BinaryHeap<Held<T>>,
    next: u64,
}

#[derive(Debug)]
struct Held<T> {
    at: Instant,
    order: u64,
    item: T,
}

impl<T> PartialEq for Held<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}
impl<T> Eq for Held<T> {}
impl<T> PartialOrd for Held<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Held<T> {
    /// Reversed: the heap's top is the earliest.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.order).cmp(&(self.at, self.order))
    }
}

impl<T> Default for Hold<T> {
    fn default() -> Self {
        Self {
            heap: BinaryHeap::new(),
            next: 0,
        }
    }
}

impl<T> Hold<T> {
    /// Holds `item` until `at`.
    pub fn push(&mut self, at: Instant, item: T) {
        self.heap.push(Held {
            at,
            order: self.next,
            item,
        });
        self.next += 1;
    }

    /// The next item due by `now`, with the time it was due.
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, T)> {
        if self.heap.peek()?.at <= now {
            return self.heap.pop().map(|h| (h.at, h.item));
        }
        None
    }

    /// When the next item is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.heap.peek().map(|h| h.at)
    }

    /// Items held.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

/// How late the driver let packets go, counted as it runs and read by
/// the harness at any time (shared through an `Arc`).
#[derive(Debug, Default)]
pub struct Lateness {
    released: AtomicU64,
    over_10ms: AtomicU64,
    over_100ms: AtomicU64,
    max_us: AtomicU64,
}

/// What [`Lateness`] counted so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct LatenessReport {
    /// Packets released (not dropped).
    pub released: u64,
    /// Of those, released more than 10 ms after they were due.
    pub over_10ms: u64,
    /// Of those, released more than 100 ms after they were due: the
    /// machine was short of CPU, and what the run measured includes it.
    pub over_100ms: u64,
    /// The latest any packet was released, in milliseconds.
    pub max_ms: f64,
}

impl Lateness {
    /// A packet due `late` ago was released.
    pub fn record(&self, late: Duration) {
        self.released.fetch_add(1, AtomicOrdering::Relaxed);
        if late > Duration::from_millis(10) {
            self.over_10ms.fetch_add(1, AtomicOrdering::Relaxed);
        }
        if late > Duration::from_millis(100) {
            self.over_100ms.fetch_add(1, AtomicOrdering::Relaxed);
        }
        self.max_us
            .fetch_max(late.as_micros() as u64, AtomicOrdering::Relaxed);
    }

    /// The counts so far.
    pub fn report(&self) -> LatenessReport {
        LatenessReport {
            released: self.released.load(AtomicOrdering::Relaxed),
            over_10ms: self.over_10ms.load(AtomicOrdering::Relaxed),
            over_100ms: self.over_100ms.load(AtomicOrdering::Relaxed),
            max_ms: self.max_us.load(AtomicOrdering::Relaxed) as f64 / 1000.0,
        }
    }
}

/// The driver could not start.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    /// Entering the router namespace failed.
    #[error("entering network namespace {netns}: {source}")]
    Netns {
        /// The namespace.
        netns: String,
        /// Why.
        source: std::io::Error,
    },
    /// The netfilter queue could not be opened or configured.
    #[error("netfilter queue {queue}: {source} (is the nfnetlink_queue module available?)")]
    Queue {
        /// Queue number.
        queue: u16,
        /// Why.
        source: std::io::Error,
    },
}

/// The running driver; [`stop`](Self::stop) ends it.
#[derive(Debug)]
pub struct EmulatorHandle {
    stop: Arc<AtomicBool>,
    lateness: Arc<Lateness>,
    thread: Option<JoinHandle<Counts>>,
}

impl EmulatorHandle {
    /// How late the driver has let packets go so far.
    pub fn lateness(&self) -> Arc<Lateness> {
        self.lateness.clone()
    }

    /// Stops the driver (held packets are released) and returns its counts.
    pub fn stop(&mut self) -> Option<Counts> {
        self.stop.store(true, AtomicOrdering::Relaxed);
        self.thread.take()?.join().ok()
    }
}

impl Drop for EmulatorHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Longest the driver sleeps with nothing due: how late, at worst, it
/// notices a packet the kernel queued (the queue's socket is not exposed
/// for polling by the `nfq` crate).
const IDLE_POLL: Duration = Duration::from_micros(200);
/// Packets the kernel may hold for this queue: a few seconds of the
/// lab's traffic at its longest delays.
const QUEUE_LEN: u32 = 1 << 17;
/// Bytes of one packet on the wire, to count the packets in an offload batch.
const WIRE_PACKET: usize = 1500;
/// Bytes of each packet copied to this process: the IPv4 header.
const COPY: u16 = 20;
/// The driver thread's nice value. On a machine that runs a hundred peer
/// processes, an emulator scheduled like them fell behind: every link's
/// delay grew at once, peers took their parents for dead, and the
/// fallbacks' extra packets starved it further (three 100-peer runs of
/// three collapsed to under half their offload on a 2-core machine; at
/// this value the same build reached 0.97 of the limit with no stall).
/// Not a real-time policy: a busy driver must still leave the kernel's
/// own threads room to move the packets it releases.
const NICENESS: i32 = -20;
/// A release this late is logged (at most every [`LATE_LOG_EVERY`]).
const LATE_WARN: Duration = Duration::from_millis(100);
const LATE_LOG_EVERY: Duration = Duration::from_secs(5);

/// Starts the driver for `queue` inside the network namespace `netns`
/// (the thread enters it; the process stays where it is).
pub fn spawn(
    netns: &str,
    queue: u16,
    mut emulator: Emulator,
) -> Result<EmulatorHandle, EmulatorError> {
    let stop = Arc::new(AtomicBool::new(false));
    let lateness = Arc::new(Lateness::default());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let netns = netns.to_string();
    let flag = stop.clone();
    let late = lateness.clone();
    let thread = std::thread::Builder::new()
        .name("netlab-emulator".into())
        .spawn(move || {
            let queue_err = |source| EmulatorError::Queue { queue, source };
            let opened = super::enter_netns(&netns)
                .map_err(|source| EmulatorError::Netns {
                    netns: netns.clone(),
                    source,
                })
                .and_then(|()| {
                    let mut q = nfq::Queue::open().map_err(queue_err)?;
                    q.bind(queue).map_err(queue_err)?;
                    q.set_copy_range(queue, COPY).map_err(queue_err)?;
                    q.set_queue_max_len(queue, QUEUE_LEN).map_err(queue_err)?;
                    // Take segmentation-offload batches whole: a tenth of
                    // the messages for QUIC's GSO and TCP's TSO, which is
                    // what lets a 2-core machine hold a hundred peers.
                    q.set_recv_gso(queue, true).map_err(queue_err)?;
                    q.set_nonblocking(true);
                    Ok(q)
                });
            let mut q = match opened {
                Ok(q) => {
                    let _ = ready_tx.send(Ok(()));
                    q
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return Counts::default();
                }
            };
            raise_priority();
            drive(&mut q, &mut emulator, &flag, &late);
            emulator.counts
        })
        .map_err(|source| EmulatorError::Queue { queue, source })?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(EmulatorHandle {
            stop,
            lateness,
            thread: Some(thread),
        }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => Err(EmulatorError::Queue {
            queue,
            source: std::io::Error::other("the emulator thread ended while starting"),
        }),
    }
}

/// Sets this thread's nice value to [`NICENESS`]; the lab runs as root,
/// so only an unusual sandbox refuses, and then the run goes on, warned.
/// The one `unsafe` of the crate: a plain system call with no pointers
/// (neither `nix` nor the standard library binds `setpriority`).
#[allow(unsafe_code)]
fn raise_priority() {
    // SAFETY: setpriority reads no memory of ours; on Linux, `who = 0`
    // with PRIO_PROCESS is the calling thread.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, NICENESS) };
    if rc != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "netlab: the emulator could not raise its priority; on a busy machine its delays will grow"
        );
    }
}

fn drive(q: &mut nfq::Queue, emulator: &mut Emulator, stop: &AtomicBool, lateness: &Lateness) {
    let mut hold: Hold<nfq::Message> = Hold::default();
    let mut peak = 0;
    let mut warned: Option<Instant> = None;
    while !stop.load(AtomicOrdering::Relaxed) {
        let now = Instant::now();
        while let Some((due, mut msg)) = hold.pop_due(now) {
            let late = now.saturating_duration_since(due);
            lateness.record(late);
            if late > LATE_WARN && warned.is_none_or(|w| now - w > LATE_LOG_EVERY) {
                warned = Some(now);
                tracing::warn!(
                    late_ms = late.as_millis() as u64,
                    "netlab: the emulator let a packet go late: this machine is short of CPU, and every link's delay now includes it"
                );
            }
            msg.set_verdict(nfq::Verdict::Accept);
            if let Err(e) = q.verdict(msg) {
                tracing::warn!(error = %e, "netlab: verdict failed");
            }
        }
        // Take what the kernel queued, a bounded batch at a time so due
        // packets are not kept waiting behind a burst.
        let mut got = 0;
        while got < 256 {
            match q.recv() {
                Ok(mut msg) => {
                    got += 1;
                    let segments = msg.get_original_len().div_ceil(WIRE_PACKET) as u32;
                    match emulator.handle_packet(Instant::now(), msg.get_payload(), segments) {
                        Decision::Drop => {
                            msg.set_verdict(nfq::Verdict::Drop);
                            if let Err(e) = q.verdict(msg) {
                                tracing::warn!(error = %e, "netlab: verdict failed");
                            }
                        }
                        Decision::Release(at) => hold.push(at, msg),
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::warn!(error = %e, "netlab: reading the queue failed");
                    break;
                }
            }
        }
        peak = peak.max(hold.len());
        if got == 0 {
            let wait = hold
                .next_due()
                .map_or(IDLE_POLL, |at| at.saturating_duration_since(Instant::now()))
                .min(IDLE_POLL);
            std::thread::sleep(wait);
        }
    }
    // Let through what is still held rather than leave it to the kernel.
    while let Some((_, mut msg)) = hold.pop_due(far_future()) {
        msg.set_verdict(nfq::Verdict::Accept);
        let _ = q.verdict(msg);
    }
    tracing::info!(
        packets = emulator.counts.packets,
        dropped = emulator.counts.dropped,
        reordered = emulator.counts.reordered,
        peak_held = peak,
        "netlab: emulator stopped"
    );
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
        let mut h = vec![0u8; 20];
        h[0] = 0x45;
        h[12..16].copy_from_slice(&src);
        h[16..20].copy_from_slice(&dst);
        h
    }

    fn leg(ms: u64, loss: f64) -> Leg {
        Leg {
            delay: Duration::from_millis(ms),
            jitter: Duration::ZERO,
            loss,
            reorder: 0.0,
        }
    }

    #[test]
    fn a_packet_waits_for_both_links_it_crosses() {
        let a = Ipv4Addr::new(10, 80, 0, 2);
        let b = Ipv4Addr::new(10, 80, 1, 2);
        let mut e = Emulator::new(HashMap::from([(a, leg(10, 0.0)), (b, leg(30, 0.0))]), 1);
        let now = Instant::now();
        assert_eq!(
            e.handle_packet(now, &header(a.octets(), b.octets()), 1),
            Decision::Release(now + Duration::from_millis(40))
        );
        // To an address of no link: only the source's leg.
        assert_eq!(
            e.handle_packet(now, &header(a.octets(), [10, 77, 0, 1]), 1),
            Decision::Release(now + Duration::from_millis(10))
        );
        // Not IPv4: at once.
        assert_eq!(e.handle_packet(now, &[0x60; 40], 1), Decision::Release(now));
        assert_eq!(e.counts.passed, 1);
    }

    #[test]
    fn loss_is_near_its_rate_and_repeats_with_the_seed() {
        let a = Ipv4Addr::new(10, 80, 0, 2);
        let run = |seed| {
            let mut e = Emulator::new(HashMap::from([(a, leg(0, 0.02))]), seed);
            let now = Instant::now();
            (0..50_000)
                .map(|_| e.handle_packet(now, &header(a.octets(), [1, 1, 1, 1]), 1))
                .filter(|d| *d == Decision::Drop)
                .count()
        };
        let lost = run(5);
        assert_eq!(lost, run(5));
        assert!((800..1200).contains(&lost), "{lost} of 50000 at 2%");
    }

    #[test]
    fn an_offload_batch_is_lost_as_often_as_any_of_its_packets() {
        let a = Ipv4Addr::new(10, 80, 0, 2);
        let mut e = Emulator::new(HashMap::from([(a, leg(0, 0.02))]), 3);
        let now = Instant::now();
        let lost = (0..20_000)
            .map(|_| e.handle_packet(now, &header(a.octets(), [1, 1, 1, 1]), 10))
            .filter(|d| *d == Decision::Drop)
            .count();
        // 1 - 0.98^10 = 18.3%
        assert!(
            (3300..4000).contains(&lost),
            "{lost} of 20000 batches of 10 at 2%"
        );
    }

    /// Release times of 200 packets handled at `now`.
    fn jittered(reorder: f64, now: Instant) -> Vec<Instant> {
        let a = Ipv4Addr::new(10, 80, 0, 2);
        let leg = Leg {
            delay: Duration::from_millis(20),
            jitter: Duration::from_millis(5),
            loss: 0.0,
            reorder,
        };
        let mut e = Emulator::new(HashMap::from([(a, leg)]), 9);
        (0..200)
            .map(
                |_| match e.handle_packet(now, &header(a.octets(), [1, 1, 1, 1]), 1) {
                    Decision::Release(at) => at,
                    Decision::Drop => unreachable!("no loss"),
                },
            )
            .collect()
    }

    #[test]
    fn jitter_keeps_a_path_in_order_unless_told_to_reorder() {
        let now = Instant::now();
        let within = |t: &Instant| {
            *t >= now + Duration::from_millis(20) && *t <= now + Duration::from_millis(26)
        };
        let ordered = jittered(0.0, now);
        assert!(ordered.iter().all(within));
        assert!(ordered.windows(2).all(|w| w[1] >= w[0]), "in order");
        assert!(ordered.windows(2).any(|w| w[1] > w[0]), "but jittered");
        let reordered = jittered(0.2, now);
        assert!(reordered.iter().all(within));
        assert!(reordered.windows(2).any(|w| w[1] < w[0]), "some overtake");
    }

    #[test]
    fn lateness_counts_releases_past_each_bound_and_the_latest() {
        let l = Lateness::default();
        for ms in [0, 5, 11, 50, 101, 250] {
            l.record(Duration::from_millis(ms));
        }
        assert_eq!(
            l.report(),
            LatenessReport {
                released: 6,
                over_10ms: 4,
                over_100ms: 2,
                max_ms: 250.0,
            }
        );
    }

    #[test]
    fn hold_releases_in_time_order_then_arrival_order() {
        let mut h = Hold::default();
        let t = Instant::now();
        h.push(t + Duration::from_millis(5), "late");
        h.push(t + Duration::from_millis(1), "first");
        h.push(t + Duration::from_millis(1), "second");
        assert_eq!(h.pop_due(t), None);
        assert_eq!(h.next_due(), Some(t + Duration::from_millis(1)));
        let early = t + Duration::from_millis(1);
        assert_eq!(
            h.pop_due(t + Duration::from_millis(2)),
            Some((early, "first"))
        );
        assert_eq!(
            h.pop_due(t + Duration::from_millis(2)),
            Some((early, "second"))
        );
        assert_eq!(h.pop_due(t + Duration::from_millis(2)), None);
        assert_eq!(
            h.pop_due(t + Duration::from_millis(9)),
            Some((t + Duration::from_millis(5), "late"))
        );
        assert!(h.is_empty());
    }
}
