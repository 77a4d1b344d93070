// Plays the peer's demo page in headless Chromium and reports what a
// viewer saw. Driven by tests/browser.rs (which starts origin, edge and
// peers, and kills the peer's parent while this plays), and runnable by
// hand:
//
//   node test/browser.mjs --page http://127.0.0.1:8090/player/ --peer-pid 1234 --p2p-secs 30 --out DIR
//
// 1. waits for playback, then plays through the peer for --p2p-secs of
//    wall time, recording hls.js stalls (the plugin's stall log:
//    BUFFER_STALLED_ERROR and waiting → playing), fatal errors, and media
//    time played against wall time;
// 2. plays --stall-secs more (the caller stops the encoder meanwhile, so
//    the player must stall and recover) and reports the stalls seen;
// 3. kills the peer itself (SIGKILL, by the pid it was given) and plays
//    10 s more from the edge.
// Prints one JSON line with the figures; exits non-zero when playback
// could not be observed at all (the caller asserts on the figures).
// Screenshots go to --out.
import { chromium } from "playwright-core";
import { join } from "node:path";

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : fallback;
}
const pageUrl = arg("page");
const peerPid = Number(arg("peer-pid"));
const p2pSecs = Number(arg("p2p-secs", "30"));
const stallSecs = Number(arg("stall-secs", "0"));
const out = arg("out", ".");
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
if (!pageUrl || !peerPid) {
  console.error("usage: browser.mjs --page URL --peer-pid PID [--p2p-secs S] [--out DIR]");
  process.exit(2);
}

const result = { ok: false };
const fail = (why) => {
  result.error = why;
  console.log(JSON.stringify(result));
  process.exit(1);
};

const browser = await chromium.launch({
  executablePath,
  args: ["--autoplay-policy=no-user-gesture-required", "--no-sandbox", "--disable-background-networking"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 820 } });
  const logs = [];
  page.on("console", (m) => logs.push(m.text()));
  const loaded = Date.now();
  await page.goto(pageUrl);
  const stats = () => page.evaluate(() => (window.treecastPlayer ? window.treecastPlayer.stats() : null));
  const until = async (what, timeoutMs, cond) => {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const s = await stats();
      if (s && cond(s)) return s;
      if (Date.now() > end) fail(`timed out while ${what}; last stats ${JSON.stringify(s)}; console ${logs.slice(-5).join(" | ")}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  };
  const started = await until("starting playback", 30000, (s) => s.currentTime > 0);
  const playStart = Date.now();
  result.startup_ms = playStart - loaded;
  // Phase 1: through the peer, whatever happens upstream of it.
  const p2p = await until("playing through the peer", (p2pSecs + 30) * 1000, () => Date.now() - playStart >= p2pSecs * 1000);
  result.p2p_phase = {
    ...p2p,
    wall_s: (Date.now() - playStart) / 1000,
    played_s: p2p.currentTime - started.currentTime,
  };
  await page.screenshot({ path: join(out, "player-p2p.png") });

  // Phase 2: the stream stops upstream for a while (the caller's doing).
  if (stallSecs > 0) {
    const from = Date.now();
    const s = await until("playing on across a stream gap", (stallSecs + 30) * 1000, () => Date.now() - from >= stallSecs * 1000);
    // One more report, so the peer has the final figures.
    await page.evaluate(() => window.treecastPlayer.report());
    result.stall_phase = { ...s, stalls: s.stalls - p2p.stalls };
  }

  // Phase 3: the viewer's own peer dies; the plugin goes to the edge.
  process.kill(peerPid, "SIGKILL");
  const t1 = (await stats()).currentTime;
  const edge = await until("playing 10 s from the edge after the peer died", 40000, (s) => s.currentTime >= t1 + 10 && !s.p2p);
  result.edge_phase = edge;
  await page.screenshot({ path: join(out, "player-edge.png") });
  result.ok = true;
  console.log(JSON.stringify(result));
} finally {
  await browser.close();
}
