"""An attribution report as the text `attnsae attribute` prints: the activation and its DFA, the top sources, the
split by head, the RDFA tree (children sorted by size, named remainders last) and the direct logit effect."""

from __future__ import annotations


def report_text(report) -> str:
    """The text of an :class:`~attnsae.attribution.report.AttributionReport` (data in, text out)."""
    r, t = report.rdfa, report.position
    strs = r.token_strs
    lines = [f"feature {report.feature} of blocks.{report.layer}.attn.hook_z at position {t} {strs[t]!r}: "
             f"activation {report.activation:.4g}",
             f"  pre-activation {report.pre_activation:.4g} = DFA {sum(r.by_src):.4g} + bias {report.bias:.4g}"]
    if report.activation == 0:
        lines.append("  (the feature does not fire here; without --position this is where its pre-activation is "
                     "largest)")
    lines.append("top sources (DFA summed over heads):")
    lines += [f"  {row['value']:+10.4f}  pos {row['source']:>3}  {row['token']!r}" for row in report.top_sources(8)]
    lines.append("by head:  " + "  ".join(f"h{h} {v:+.3f}" for h, v in enumerate(r.by_head)))
    if report.rdfa_refused:
        lines.append(f"note: {report.rdfa_refused}")
        kind = f"DFA terms (top-k {r.top_k};"
    else:
        kind = f"RDFA tree (depth {r.depth}, top-k {r.top_k};"
    lines.append(f"{kind} worst closure error {report.max_relative_residual:.1e} of the terms' magnitude, "
                 f"tolerance {report.tolerance:.0e}):")
    _node_lines(r.root, strs, 1, lines)
    lg = report.logits
    if lg is None:
        lines.append(f"note: {report.logits_refused}")
    else:
        lines += [f"direct logit effect ({lg.definition}):",
                  "  up:   " + "  ".join(f"{s!r} {v:+.3f}" for s, v in zip(lg.top_strs, lg.top_values)),
                  "  down: " + "  ".join(f"{s!r} {v:+.3f}" for s, v in zip(lg.bottom_strs, lg.bottom_values))]
    return "\n".join(lines)


def _label(node, strs: list[str]) -> str:
    if node.kind == "head_source":
        return f"{node.name}: {node.position} <- {node.source} {strs[node.source]!r}"
    if node.kind == "feature":
        return f"{node.name} @ {node.position} {strs[node.position]!r} (act {node.activation:.3g})"
    return f"{node.name} @ {node.position}"


def _node_lines(node, strs: list[str], indent: int, lines: list[str]) -> None:
    pad = "  " * indent
    lines.append(f"{pad}{node.value:+10.4f}  {_label(node, strs)}")
    for child in sorted(node.children, key=lambda c: -abs(c.value)):
        _node_lines(child, strs, indent + 1, lines)
    lines += [f"{pad}  {value:+10.4f}  ({name})" for name, value in node.remainders.items()]
