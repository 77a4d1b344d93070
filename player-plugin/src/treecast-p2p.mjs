// treecast player plugin for hls.js.
//
// Plays a treecast channel through the viewer's local peer when one runs,
// and straight from the edge when not, without reloading the page:
//
// - at start it looks for the viewer's agent (the local peer) on loopback:
//   the given `peerUrl`, or else ports 8090-8099 of 127.0.0.1 at once
//   (the agent takes the first free one), with a short timeout; an agent
//   plays any channel, joining its tree at the first playlist request, so
//   the channel comes from this page, never from the agent;
// - every playlist and segment request goes through a loader that tries
//   the peer first and, if the peer fails, the edge for the same file (the
//   peer and the edge share the URL layout, and segment numbers), so a
//   peer that dies mid-playback costs one retried request, not a reload;
// - the peer's status is polled; when it answers again, the next request
//   (a segment boundary) goes back to it;
// - `stats()` (and the `onStats` callback) tell the page whether P2P is
//   active, the bytes from peers and from the edge, and the buffer;
// - buffer stalls as the viewer sees them are counted: hls.js's
//   BUFFER_STALLED_ERROR and the video element's `waiting`, each ended by
//   `playing` (or by playback moving on), with their durations. Every
//   `reportEveryMs` the totals go to the local peer (`POST /player/report`)
//   or, when playing from the edge, to the edge
//   (`POST /api/v1/player-report`), which count them for the operator.
//   A session id per receiver keeps each receiver's totals its own.
//
// No framework, no build step needed: this file is the ES module; dist/
// holds the same code as a plain script (window.TreecastP2P).

// Where the agent listens: its default port, and the ones it takes when
// that is busy (docs/peer.md).
export const AGENT_PORTS = [8090, 8091, 8092, 8093, 8094, 8095, 8096, 8097, 8098, 8099];
const AGENT_NAME = "treecast-peer";

function sessionId() {
  const a = new Uint8Array(12);
  crypto.getRandomValues(a);
  return Array.from(a, (b) => b.toString(16).padStart(2, "0")).join("");
}

function pathOf(url) {
  const u = new URL(url, location.href);
  return u.pathname + u.search;
}

async function fetchJson(url, timeoutMs) {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), timeoutMs);
  try {
    const r = await fetch(url, { signal: ctl.signal, cache: "no-store" });
    if (!r.ok) return null;
    return await r.json();
  } catch (_) {
    return null;
  } finally {
    clearTimeout(timer);
  }
}

async function askAgent(url, timeoutMs) {
  const s = await fetchJson(`${url}/status`, timeoutMs);
  return s && s.agent === AGENT_NAME ? { url, status: s } : null;
}

/**
 * Finds the viewer's agent: `peerUrl` when given, else the first of
 * AGENT_PORTS on 127.0.0.1 that answers as a treecast agent (all asked at
 * once). Resolves to { url, status } (status: the agent's `/status`), or
 * null when none answers within `timeoutMs`.
 */
export async function findLocalPeer({ peerUrl = null, timeoutMs = 800 } = {}) {
  if (peerUrl) return askAgent(peerUrl.replace(/\/$/, ""), timeoutMs);
  const found = await Promise.all(AGENT_PORTS.map((p) => askAgent(`http://127.0.0.1:${p}`, timeoutMs)));
  return found.find((f) => f !== null) || null;
}

/** The figures of `channel` in an agent's `/status`, or null. */
function channelStatus(agentStatus, channel) {
  return (agentStatus && (agentStatus.channels || []).find((c) => c.channel === channel)) || null;
}

/**
 * Attaches hls.js to `video` for `channel` of the edge at `edgeUrl`,
 * through the local peer at `peerUrl` when it answers.
 *
 * options: { Hls, edgeUrl, channel, peerUrl?, statusEveryMs?, probeTimeoutMs?,
 *            reportEveryMs?, hlsConfig?, onStats? }
 * returns: { hls, stats(), destroy() }
 */
export async function attach(video, options) {
  const {
    Hls,
    edgeUrl,
    channel,
    peerUrl = null,
    statusEveryMs = 1000,
    probeTimeoutMs = 800,
    reportEveryMs = 5000,
    hlsConfig = {},
    onStats = null,
  } = options;
  if (!Hls) throw new Error("treecast: pass the Hls class (hls.js) as options.Hls");
  if (!edgeUrl || !channel) throw new Error("treecast: edgeUrl and channel are required");
  const edge = edgeUrl.replace(/\/$/, "");
  const state = {
    peerUp: false,
    peerStatus: null,
    bytesFromEdgeDirect: 0,
    switches: 0,
    fatal: null,
    // Playback started (first `playing`), and stalls since.
    playingSince: null,
    stalledSince: null,
    stalls: 0,
    stallMs: 0,
    stallLog: [],
    bufferStalledErrors: 0,
    // Where reports go now, with the totals already reported elsewhere.
    report: null,
  };
  const now = () => performance.now();
  const stallStart = (why) => {
    if (state.playingSince === null || state.stalledSince !== null) return;
    state.stalledSince = now();
    state.stallWhy = why;
  };
  const stallEnd = () => {
    if (state.stalledSince === null) return;
    const ms = now() - state.stalledSince;
    state.stalls += 1;
    state.stallMs += ms;
    state.stallLog.push({ ms: Math.round(ms), why: state.stallWhy, at: Date.now() });
    state.stalledSince = null;
  };
  const totals = () => {
    const t = now();
    const ongoing = state.stalledSince === null ? 0 : t - state.stalledSince;
    return {
      stalls: state.stalls + (state.stalledSince === null ? 0 : 1),
      stallMs: state.stallMs + ongoing,
      watchedMs: state.playingSince === null ? 0 : t - state.playingSince,
    };
  };
  video.addEventListener("playing", () => {
    if (state.playingSince === null) state.playingSince = now();
    stallEnd();
  });
  video.addEventListener("waiting", () => stallStart("waiting"));
  let lastTime = 0;
  video.addEventListener("timeupdate", () => {
    // hls.js can recover from a stall without a `playing` event: media
    // time moving on ends it.
    if (video.currentTime > lastTime + 0.1 && state.stalledSince !== null && now() - state.stalledSince > 300) stallEnd();
    lastTime = video.currentTime;
  });
  const first = await findLocalPeer({ peerUrl, timeoutMs: probeTimeoutMs });
  // The agent found stays this page's agent; the edge serves while it is down.
  let peer = first ? first.url : peerUrl ? peerUrl.replace(/\/$/, "") : null;
  state.peerUp = first !== null;
  state.peerStatus = first ? channelStatus(first.status, channel) : null;

  const Base = Hls.DefaultConfig.loader;
  // A loader per request: peer first, then the edge for the same path.
  class TreecastLoader {
    constructor(config) {
      this.config = config;
      this.inner = new Base(config);
    }
    get stats() {
      return this.inner.stats;
    }
    get context() {
      return this.inner.context;
    }
    load(context, loadConfig, callbacks) {
      const path = pathOf(context.url);
      const viaPeer = state.peerUp;
      const base = viaPeer ? peer : edge;
      const onSuccess = (response, stats, ctx, net) => {
        if (!viaPeer && response && response.data && response.data.byteLength) {
          state.bytesFromEdgeDirect += response.data.byteLength;
        }
        callbacks.onSuccess(response, stats, ctx, net);
      };
      const toEdge = (fail) => (...args) => {
        if (!viaPeer) return fail(...args);
        // The peer failed this request: take it from the edge and stop
        // using the peer until its status answers again.
        state.peerUp = false;
        state.switches += 1;
        this.inner.destroy();
        this.inner = new Base(this.config);
        this.inner.load({ ...context, url: edge + path }, loadConfig, {
          ...callbacks,
          onSuccess: (response, stats, ctx, net) => {
            if (response && response.data && response.data.byteLength) {
              state.bytesFromEdgeDirect += response.data.byteLength;
            }
            callbacks.onSuccess(response, stats, ctx, net);
          },
        });
      };
      this.inner.load({ ...context, url: base + path }, loadConfig, {
        ...callbacks,
        onSuccess,
        onError: toEdge(callbacks.onError),
        onTimeout: toEdge(callbacks.onTimeout),
      });
    }
    abort() {
      this.inner.abort();
    }
    destroy() {
      this.inner.destroy();
    }
  }

  const hls = new Hls({
    ...hlsConfig,
    loader: TreecastLoader,
    // A peer request that hangs must fail over quickly.
    fragLoadPolicy: {
      default: {
        maxTimeToFirstByteMs: 4000,
        maxLoadTimeMs: 8000,
        timeoutRetry: { maxNumRetry: 2, retryDelayMs: 0, maxRetryDelayMs: 0 },
        errorRetry: { maxNumRetry: 3, retryDelayMs: 500, maxRetryDelayMs: 2000 },
      },
    },
  });
  hls.on(Hls.Events.ERROR, (_e, data) => {
    if (data.fatal) state.fatal = `${data.type}: ${data.details}`;
    if (data.details === Hls.ErrorDetails.BUFFER_STALLED_ERROR) {
      state.bufferStalledErrors += 1;
      stallStart("buffer_stalled");
    }
  });

  // Sends the totals since this receiver's session began.
  const sendReport = async () => {
    const t = totals();
    if (state.playingSince === null) return;
    const target = state.peerUp ? `${peer}/player/report` : `${edge}/api/v1/player-report`;
    if (!state.report || state.report.target !== target) {
      // A new receiver counts from zero: its own session id, and a base of
      // what the previous receiver was sent (nothing, for the first one:
      // stalls before the first report are the first receiver's).
      const base = state.report ? state.report.sent : { stalls: 0, stallMs: 0, watchedMs: 0 };
      state.report = { target, session: sessionId(), base, sent: base };
    }
    const b = state.report.base;
    const body = JSON.stringify({
      channel,
      session: state.report.session,
      stalls: Math.max(0, t.stalls - b.stalls),
      stall_ms: Math.max(0, Math.round(t.stallMs - b.stallMs)),
      watched_ms: Math.max(0, Math.round(t.watchedMs - b.watchedMs)),
    });
    try {
      const r = await fetch(target, { method: "POST", body, headers: { "content-type": "application/json" }, keepalive: true });
      state.reportsSent = (state.reportsSent || 0) + (r.ok ? 1 : 0);
      if (r.ok) state.report.sent = t;
      if (!r.ok) state.reportError = `${r.status} ${await r.text()}`;
    } catch (e) {
      state.reportError = String(e);
    }
  };
  const reportTimer = setInterval(sendReport, reportEveryMs);
  hls.loadSource(`${edge}/live/${channel}/index.m3u8`);
  hls.attachMedia(video);

  const stats = () => {
    const s = state.peerStatus || {};
    let buffer = 0;
    const b = video.buffered;
    for (let i = 0; i < b.length; i++) {
      if (b.start(i) <= video.currentTime && video.currentTime <= b.end(i)) {
        buffer = b.end(i) - video.currentTime;
      }
    }
    return {
      p2p: state.peerUp,
      peer: state.peerUp ? { depth: s.depth, parent: s.parent, children: s.children } : null,
      bytesFromPeers: s.bytes_from_tree || 0,
      bytesFromEdge: (s.bytes_from_edge || 0) + state.bytesFromEdgeDirect,
      bytesUploaded: s.bytes_uploaded || 0,
      bufferSeconds: buffer,
      currentTime: video.currentTime,
      switches: state.switches,
      fatalError: state.fatal,
      stalls: totals().stalls,
      stallMs: Math.round(totals().stallMs),
      watchedMs: Math.round(totals().watchedMs),
      stallLog: state.stallLog.slice(),
      bufferStalledErrors: state.bufferStalledErrors,
      reportsSent: state.reportsSent || 0,
      reportError: state.reportError || null,
    };
  };
  const timer = setInterval(async () => {
    // Without an agent at start, look for one again: it may start later.
    const found = await findLocalPeer({ peerUrl: peer, timeoutMs: probeTimeoutMs });
    if (found) {
      peer = found.url;
      state.peerStatus = channelStatus(found.status, channel);
      state.peerUp = true;
    } else {
      state.peerUp = false;
    }
    if (onStats) onStats(stats());
  }, statusEveryMs);

  return {
    hls,
    stats,
    report: sendReport,
    destroy() {
      clearInterval(timer);
      clearInterval(reportTimer);
      hls.destroy();
    },
  };
}
