// Two channels at once through the viewer's agent, in headless Chromium,
// from a page on another origin: the page is served here (a broadcaster's
// site stand-in) on 127.0.0.1:--page-port, holds two <video>s, and attaches
// the plugin to each with no peerUrl, so the plugin must find the agent on
// its ports (8090-8099) by itself, and the agent must grant this page's
// origin. Driven by tests/browser_channels.rs; runnable by hand:
//
//   node test/two-channels.mjs --edge http://127.0.0.1:8081 --channels demo,news \
//     --page-port 8300 --secs 20 --out DIR
//
// Prints one JSON line: per channel, whether it played through the agent,
// media time against wall time, stalls, switches to the edge, fatal errors.
import { chromium } from "playwright-core";
import http from "node:http";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : fallback;
}
const edge = arg("edge");
const channels = (arg("channels", "") || "").split(",").filter(Boolean);
const pagePort = Number(arg("page-port"));
const secs = Number(arg("secs", "20"));
const out = arg("out", ".");
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
if (!edge || channels.length !== 2 || !pagePort) {
  console.error("usage: two-channels.mjs --edge URL --channels A,B --page-port PORT [--secs S] [--out DIR]");
  process.exit(2);
}

const page = `<!doctype html>
<html><head><meta charset="utf-8"><title>two channels</title>
<style>body{background:#111;color:#eee;font:14px system-ui;margin:16px} video{width:45%;background:#000;margin:4px}</style>
</head><body>
<h1>${channels.join(" + ")}</h1>
${channels.map((c) => `<video id="v-${c}" muted autoplay playsinline></video>`).join("\n")}
<script src="/hls.light.min.js"></script>
<script src="/treecast-p2p.js"></script>
<script>
  window.players = {};
  window.errors = [];
  for (const channel of ${JSON.stringify(channels)}) {
    TreecastP2P.attach(document.getElementById("v-" + channel), { Hls, edgeUrl: ${JSON.stringify(edge)}, channel })
      .then((p) => { window.players[channel] = p; })
      .catch((e) => window.errors.push(String(e)));
  }
</script></body></html>`;
const files = {
  "/": ["text/html; charset=utf-8", page],
  "/hls.light.min.js": ["text/javascript", readFileSync(join(here, "../dist/hls.light.min.js"))],
  "/treecast-p2p.js": ["text/javascript", readFileSync(join(here, "../dist/treecast-p2p.js"))],
};
const server = http.createServer((req, res) => {
  const f = files[req.url];
  if (!f) {
    res.writeHead(404).end();
    return;
  }
  res.writeHead(200, { "content-type": f[0] }).end(f[1]);
});
await new Promise((ok, fail) => server.listen(pagePort, "127.0.0.1", ok).on("error", fail));

const result = { ok: false, channels: {} };
const browser = await chromium.launch({
  executablePath,
  args: ["--autoplay-policy=no-user-gesture-required", "--no-sandbox", "--disable-background-networking"],
});
try {
  const tab = await browser.newPage({ viewport: { width: 1100, height: 500 } });
  const logs = [];
  tab.on("console", (m) => logs.push(m.text()));
  await tab.goto(`http://127.0.0.1:${pagePort}/`);
  const stats = () =>
    tab.evaluate(() => Object.fromEntries(Object.entries(window.players).map(([c, p]) => [c, p.stats()])));
  const until = async (what, timeoutMs, cond) => {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const s = await stats();
      if (Object.keys(s).length === channels.length && cond(s)) return s;
      if (Date.now() > end) {
        result.error = `timed out while ${what}; stats ${JSON.stringify(s)}; errors ${JSON.stringify(await tab.evaluate(() => window.errors))}; console ${logs.slice(-5).join(" | ")}`;
        console.log(JSON.stringify(result));
        process.exit(1);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  };
  const started = {};
  const first = await until("both channels starting", 40000, (s) => {
    for (const c of channels) if (s[c].currentTime > 0 && !started[c]) started[c] = Date.now();
    return channels.every((c) => started[c]);
  });
  const from = Date.now();
  const last = await until(`playing ${secs} s`, (secs + 30) * 1000, () => Date.now() - from >= secs * 1000);
  const wall = (Date.now() - from) / 1000;
  for (const c of channels) {
    const s = last[c];
    result.channels[c] = {
      p2p: s.p2p,
      played_s: s.currentTime - first[c].currentTime,
      wall_s: wall,
      stalls: s.stalls,
      stall_ms: s.stallMs,
      switches: s.switches,
      fatal: s.fatalError,
      bytes_from_peers: s.bytesFromPeers,
      bytes_from_edge: s.bytesFromEdge,
      // Each stall: its length, why, and when (ms after playback began).
      stall_log: s.stallLog.map((l) => ({ ms: l.ms, why: l.why, at_ms: l.at - started[c] })),
    };
  }
  await tab.screenshot({ path: join(out, "two-channels.png") });
  result.ok = true;
  console.log(JSON.stringify(result));
} finally {
  await browser.close();
  server.close();
}
