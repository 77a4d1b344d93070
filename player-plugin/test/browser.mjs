// Plays the peer's demo page in headless Chromium and checks what a viewer
// would see. Driven by tests/browser.rs (which starts origin, edge and a
// peer), and runnable by hand:
//
//   node test/browser.mjs --page http://127.0.0.1:8090/player/ --peer-pid 1234 --out DIR
//
// 1. plays for 20 s of media: currentTime advances, no fatal hls.js error,
//    P2P active, bytes came from the tree;
// 2. kills the peer (SIGKILL, by the pid it was given) and plays 10 s more
//    from the edge with no fatal error.
// Prints one JSON line with the figures; exits non-zero on failure.
// Screenshots go to --out.
import { chromium } from "playwright-core";
import { join } from "node:path";

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : fallback;
}
const pageUrl = arg("page");
const peerPid = Number(arg("peer-pid"));
const out = arg("out", ".");
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
if (!pageUrl || !peerPid) {
  console.error("usage: browser.mjs --page URL --peer-pid PID [--out DIR]");
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
  args: ["--autoplay-policy=no-user-gesture-required", "--no-sandbox"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 820 } });
  const logs = [];
  page.on("console", (m) => logs.push(m.text()));
  await page.goto(pageUrl);
  const stats = () => page.evaluate(() => (window.treecastPlayer ? window.treecastPlayer.stats() : null));
  // Waits until `cond(stats)` holds, checking there is no fatal error.
  const until = async (what, timeoutMs, cond) => {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const s = await stats();
      if (s && s.fatalError) fail(`fatal hls.js error while ${what}: ${s.fatalError}`);
      if (s && cond(s)) return s;
      if (Date.now() > end) fail(`timed out while ${what}; last stats ${JSON.stringify(s)}; console ${logs.slice(-5).join(" | ")}`);
      await new Promise((r) => setTimeout(r, 250));
    }
  };
  const started = await until("starting playback", 30000, (s) => s.currentTime > 0);
  const t0 = started.currentTime;
  const p2p = await until("playing 20 s through the peer", 60000, (s) => s.currentTime >= t0 + 20);
  result.p2p_phase = p2p;
  if (!p2p.p2p) fail(`P2P not active after 20 s: ${JSON.stringify(p2p)}`);
  if (!(p2p.bytesFromPeers > 0)) fail(`no bytes from the tree: ${JSON.stringify(p2p)}`);
  await page.screenshot({ path: join(out, "player-p2p.png") });

  process.kill(peerPid, "SIGKILL");
  const t1 = p2p.currentTime;
  const edge = await until("playing 10 s from the edge after the peer died", 40000, (s) => s.currentTime >= t1 + 10 && !s.p2p);
  result.edge_phase = edge;
  await page.screenshot({ path: join(out, "player-edge.png") });
  result.ok = true;
  console.log(JSON.stringify(result));
} finally {
  await browser.close();
}
