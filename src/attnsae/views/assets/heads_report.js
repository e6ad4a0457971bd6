/* attnsae head report: a summary, then one card per attention head with its verdict and its features.
   Input: window.ATTNSAE_REPORT (see attnsae/views/heads_report.py) and window.ATTNSAE_DASHBOARDS, the href of
   the dashboards page that feature links point into (#<sae>/<i>). */
"use strict";
(() => {
  const {el, tokenChip, fmt, fmtPct, familyBadge} = window.attnsae;
  const REPORT = window.ATTNSAE_REPORT;
  const DASHBOARDS = window.ATTNSAE_DASHBOARDS;
  const $ = (id) => document.getElementById(id);
  const COLUMNS = ["feature", "share", "family", "density", "destination tokens", "promotes", "suppresses"];

  const featureHref = (sae, i) => `${DASHBOARDS}#${encodeURIComponent(sae)}/${i}`;
  const chips = (tokens, cls) => el("span", {class: `chips ${cls || ""}`}, (tokens || []).map((s) => tokenChip(s)));

  function featureRow(head, f) {
    return el("tr", {},
      el("td", {}, el("a", {href: featureHref(head.sae, f.i), title: `open ${head.sae}/${f.i}`}, `#${f.i}`)),
      el("td", {class: "num"}, el("span", {class: "share", style: {width: `${Math.round(48 * f.share)}px`}}),
         fmtPct(f.share, 2)),
      el("td", {}, familyBadge(f.family)),
      el("td", {class: "num"}, f.density > 0 ? fmtPct(f.density, 2) : "0"),
      el("td", {}, chips(f.top_tokens)),
      el("td", {}, chips(f.logits_pos, "pos")),
      el("td", {}, chips(f.logits_neg, "neg")));
  }

  function headCard(head) {
    return el("article", {class: `card head ${head.verdict}`, id: `head-${head.layer}-${head.head}`},
      el("header", {},
        el("h2", {}, `${head.layer}.${head.head}`,
           el("span", {class: "muted"}, ` · layer ${head.layer}, head ${head.head} · SAE ${head.sae}`)),
        el("span", {class: `badge verdict verdict-${head.verdict}`}, head.verdict),
        el("span", {class: "score"}, "score ", el("b", {class: "num"}, fmt(head.score))),
        el("span", {class: "dominant"}, "dominant ", familyBadge(head.dominant_family), " ",
           el("b", {class: "num"}, fmtPct(head.dominant_share, 2)))),
      (head.features || []).length
        ? el("table", {class: "data features"},
          el("thead", {}, el("tr", {}, COLUMNS.map((h, k) => el("th", {class: k === 1 || k === 3 ? "num" : ""}, h)))),
          el("tbody", {}, head.features.map((f) => featureRow(head, f))))
        : el("p", {class: "muted"}, "no features attributed to this head"));
  }

  function render() {
    $("topbar").replaceChildren(el("h1", {}, REPORT.title), el("span", {class: "meta"}, REPORT.model),
                                el("a", {href: DASHBOARDS}, "feature dashboards →"));
    const heads = REPORT.heads || [];
    const poly = heads.filter((h) => h.verdict === "polysemantic").length;
    $("summary").replaceChildren(
      el("h2", {}, REPORT.summary),
      el("p", {class: "muted"}, REPORT.criterion),
      el("nav", {class: "head-index"}, heads.map((h) => el("a", {
        href: `#head-${h.layer}-${h.head}`, class: `badge verdict verdict-${h.verdict}`,
        title: `${h.verdict}, score ${fmt(h.score)}`}, `${h.layer}.${h.head}`))),
      el("p", {class: "muted small"}, `${heads.length - poly} monosemantic · ${poly} polysemantic`));
    $("heads").replaceChildren(...heads.map(headCard));
  }

  render();
})();
