"""Print features of a written dashboards site as text: family, density, top logits and top examples.

    python scripts/feature_examples.py --site attnsae-out/report-smollm2-135m/dashboard L17/1530 L18/96 [--n 3]

In each example the destination token (where the feature fires) is written [[like this]] and the source token of
its DFA peak <<like this>>; `…` joins a context's two windows. It reads only the site (no model), so it shows what
the dashboards show, for quoting in docs.
"""

from __future__ import annotations

import argparse
import re

from attnsae.views.dashboards import read_feature, read_vocab


def example_text(example: dict, vocab: list[str]) -> str:
    """One example as text with its destination and DFA-peak tokens marked."""
    parts = []
    for seg in example["segments"]:
        words = []
        for offset, token in enumerate(seg["tokens"]):
            pos, word = seg["start"] + offset, vocab[token]
            if pos == example["dest"]:
                word = f"[[{word}]]"
            elif pos == example["peak"]:
                word = f"<<{word}>>"
            words.append(word)
        parts.append("".join(words))
    return " … ".join(parts).replace("\n", "⏎").replace("Ġ", " ").replace("Ċ", "⏎")


def describe(site: str, name: str, n: int, vocab: list[str]) -> str:
    sae, i = name.split("/")
    f = read_feature(site, sae, int(i))
    top = ", ".join(repr(vocab[t]) for t, _ in f["logits"]["pos"][:5])
    heads = sorted(range(len(f["head_shares"])), key=lambda h: -f["head_shares"][h])[:2]
    lines = [f"{name}: {f['family']}, density {f['density']:.4f}, max act {f['max_act']:.2f}; DFA mostly from heads "
             + ", ".join(f"{h} ({f['head_shares'][h]:.0%})" for h in heads) + f"; top logits {top}"]
    examples = [e for g in f["groups"][:1] for e in g["examples"]][:n]
    lines += [f"  {e['act']:.2f}  {example_text(e, vocab)}" for e in examples]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--site", required=True, help="a dashboards folder (attnsae dashboard --out)")
    p.add_argument("features", nargs="+", help="SAE/feature, e.g. L17/1530")
    p.add_argument("--n", type=int, default=3, help="top examples per feature")
    args = p.parse_args()
    for name in args.features:
        if not re.fullmatch(r"[^/]+/\d+", name):
            p.error(f"feature {name!r}: write SAE/index, e.g. L17/1530")
    try:
        vocab = read_vocab(args.site)
        print("\n\n".join(describe(args.site, name, args.n, vocab) for name in args.features))
    except (OSError, ValueError) as e:
        p.error(f"{args.site} is not a dashboards folder written by `attnsae dashboard` ({e})")
    except (KeyError, IndexError) as e:
        p.error(f"no such feature in {args.site}: {e}")


if __name__ == "__main__":
    main()
