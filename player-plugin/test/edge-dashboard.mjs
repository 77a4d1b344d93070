// Loads the edge's /dashboard in headless Chromium, waits until it shows
// the expected number of viewers, and reads back what it displays next to
// the API answer it rendered. Driven by tests/dashboard.rs; it lives here
// because playwright-core is pinned in this package.
//
//   node test/edge-dashboard.mjs --url 'http://127.0.0.1:8081/dashboard?token=T' --viewers 4 --out DIR
import { chromium } from "playwright-core";
import { join } from "node:path";

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : fallback;
}
const url = arg("url");
const viewers = Number(arg("viewers"));
const out = arg("out", ".");
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
  await page.goto(url);
  const end = Date.now() + 30000;
  let shown = null;
  for (;;) {
    shown = await page.evaluate(() => {
      const text = (k) => {
        const el = document.querySelector(`[data-k="${k}"]`);
        return el ? el.textContent : null;
      };
      const v = window.lastView;
      if (!v || !v.channels.length) return null;
      const c = v.channels[0];
      const depths = {};
      c.depth_histogram.forEach((n, d) => { if (n) depths[d] = text(`depth-${d}`); });
      const rows = [...document.querySelectorAll(".scroll tr")].slice(1);
      const edges = [...document.querySelectorAll("tr[data-edge]")].map((r) => ({
        edge: r.dataset.edge, viewers: r.querySelector('[data-c="viewers"]').textContent }));
      const charts = [...document.querySelectorAll("svg[data-chart]")].map((svg) =>
        [...svg.querySelectorAll("text")].map((t) => t.textContent));
      return {
        api: { viewers: c.viewers, stalls: c.totals.stalls, fallbacks: c.totals.fallbacks, repairs: c.repairs,
               depth_histogram: c.depth_histogram, offload: c.offload, peers_listed: c.peers.length,
               names: c.peers.map((p) => p.name), event: v.event },
        dom: { viewers: text("viewers"), stalls: text("stalls"), fallbacks: text("fallbacks"), repairs: text("repairs"),
               depths, offload: text("offload"), tree_rows: rows.length,
               names: rows.map((r) => r.cells[0].textContent.trim()),
               saved: text("saved"), peer_bytes: text("peer-bytes"), charts, edges },
        error: document.getElementById("error").textContent,
      };
    });
    // Wait for the data to settle: every viewer placed and offload measured.
    if (shown && shown.api.viewers === viewers && shown.api.depth_histogram[0] === 0 && shown.api.offload > 0
        && shown.api.event.peer_bytes > 0 && shown.dom.charts.length === 3 && shown.dom.charts[0].length > 3
        && shown.dom.edges.length === 3) break;
    if (Date.now() > end) {
      console.log(JSON.stringify({ ok: false, error: "timed out", shown }));
      process.exit(1);
    }
    await new Promise((r) => setTimeout(r, 500));
  }
  await page.screenshot({ path: join(out, "dashboard.png"), fullPage: true });
  console.log(JSON.stringify({ ok: true, ...shown }));
} finally {
  await browser.close();
}
