/* attnsae charts (SVG, no library) for the feature dashboards: headChart(shares, dfa), a feature's attention weight
   share and DFA share per head; histogram(hist, options), a binned distribution. Added to window.attnsae (common.js). */
"use strict";
(() => {
  const {svg, fmt, fmtInt, fmtPct} = window.attnsae;

  /* Grouped bars per head: weight share (grey) and DFA share (blue/red, signed, normalised by Σ|DFA|). */
  function headChart(shares, dfa) {
    const n = shares.length, W = 360, H = 150, L = 34, R = 6, T = 8, B = 20;
    const total = dfa.reduce((a, v) => a + Math.abs(v), 0);
    const dfaShare = dfa.map((v) => (total > 0 ? v / total : 0));
    const lo = Math.min(0, ...dfaShare), hi = Math.max(0.05, ...shares, ...dfaShare);
    const y = (v) => T + (hi - v) / (hi - lo) * (H - T - B);
    const gw = (W - L - R) / n, bw = Math.max(2, gw * 0.36);
    const parts = [
      svg("line", {x1: L, x2: W - R, y1: y(0), y2: y(0), class: "axis"}),
      svg("text", {x: L - 4, y: y(hi) + 4, class: "tick end"}, fmtPct(hi, 2)),
      lo < 0 ? svg("text", {x: L - 4, y: y(lo) + 4, class: "tick end"}, fmtPct(lo, 2)) : null,
      svg("text", {x: L - 4, y: y(0) + 4, class: "tick end"}, "0"),
    ];
    for (let h = 0; h < n; h++) {
      const x = L + h * gw + gw / 2;
      const tip = `head ${h}\nweight share ${fmtPct(shares[h])}\nDFA share ${fmtPct(dfaShare[h])}` +
        ` (mean DFA ${fmt(dfa[h])})`;
      const bar = (x0, v, cls) => svg("rect", {x: x0, width: bw, y: Math.min(y(0), y(v)),
        height: Math.max(v === 0 ? 0 : 0.5, Math.abs(y(v) - y(0))), class: cls}, svg("title", {}, tip));
      parts.push(svg("rect", {x: L + h * gw, width: gw, y: T, height: H - T - B, class: "hover"},
                     svg("title", {}, tip)));
      parts.push(bar(x - bw - 0.5, shares[h], "bar weight"));
      parts.push(bar(x + 0.5, dfaShare[h], dfaShare[h] < 0 ? "bar neg" : "bar pos"));
      if (n <= 16 || h % 2 === 0) parts.push(svg("text", {x, y: H - 6, class: "tick mid"}, `h${h}`));
    }
    return svg("svg", {viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img"}, parts);
  }

  /* A histogram of {start, width, counts}; `marker` draws a dashed line at that x value. */
  function histogram(hist, {cls = "bar act", logY = false, marker = null, H = 130} = {}) {
    const counts = hist.counts || [], n = counts.length, W = 360, L = 42, R = 8, T = 8, B = 20;
    const x0 = hist.start, x1 = hist.start + hist.width * n;
    const x = (v) => L + (v - x0) / (x1 - x0 || 1) * (W - L - R);
    const max = Math.max(1, ...counts);
    const scale = logY ? (c) => Math.log10(1 + c) / Math.log10(1 + max) : (c) => c / max;
    const parts = [
      svg("line", {x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis"}),
      svg("text", {x: L - 4, y: T + 8, class: "tick end"}, fmtInt(max)),
      svg("text", {x: L - 4, y: H - B, class: "tick end"}, "0"),
      svg("text", {x: x(x0), y: H - 5, class: "tick start"}, fmt(x0)),
      svg("text", {x: x(x1), y: H - 5, class: "tick end"}, fmt(x1)),
    ];
    if (logY) parts.push(svg("text", {x: L - 4, y: T + 20, class: "tick end"}, "log"));
    counts.forEach((c, k) => {
      if (!c) return;
      const h = Math.max(1, scale(c) * (H - T - B));
      const a = x0 + k * hist.width;
      parts.push(svg("rect", {x: x(a), width: Math.max(0.8, x(a + hist.width) - x(a) - 0.6), y: H - B - h,
                              height: h, class: cls},
                     svg("title", {}, `${fmt(a)} – ${fmt(a + hist.width)}: ${fmtInt(c)}`)));
    });
    if (marker !== null && marker > x0 && marker < x1) {
      parts.push(svg("line", {x1: x(marker), x2: x(marker), y1: T, y2: H - B, class: "marker"}),
                 svg("text", {x: x(marker), y: H - 5, class: "tick mid"}, fmt(marker)));
    }
    return svg("svg", {viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img"}, parts);
  }

  Object.assign(window.attnsae, {headChart, histogram});
})();
