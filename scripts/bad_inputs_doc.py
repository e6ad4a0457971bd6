"""Write docs/BAD_INPUTS.md from the case table of tests/test_bad_inputs.py, running every case for its message.

    python scripts/bad_inputs_doc.py        # a few minutes: each case is one `attnsae` subprocess

``tests/test_bad_inputs.py::test_doc_lists_every_case`` fails when the doc and the table disagree.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import test_bad_inputs as catalogue  # noqa: E402

HEADER = """# Bad inputs

Every command, fed something wrong, prints one line `attnsae: error: ...`, exits with status 2 and leaves no file
or folder behind (an existing output stays as it was). Each row is a case of `tests/test_bad_inputs.py`, which
checks exactly that; this file is generated from the same table by `python scripts/bad_inputs_doc.py`.
`{d}` is the case's own (empty) folder, `{fx}` a folder of shared inputs: `sae` a good SAE of the reference model,
`sae_*` broken ones, `run` a finished training run, `nan_cache` an activation cache holding NaN, corpora and a model
folder with corrupt weights (see `make_shared_inputs`).

| case | command | bad input | message | exit |
|---|---|---|---|---|
"""


FOOTER = """
## Signals, concurrent runs and interrupted overwrites

These are not one-line refusals of a bad argument, so they are tests of their own (`tests/test_data_safety.py`):

- **SIGTERM or Ctrl+C** during any command: the cleanup of an error runs, then one line and exit 143 (130). During
  `train`: `attnsae: stopped by SIGTERM; the checkpoint at step N in OUT is kept; rerun the same command with
  --resume to continue from it`, and `--resume` finishes the run. During `cache`: nothing is left behind.
- **SIGKILL** during `cache` (or a dashboard or study): its temporary folder stays, hidden beside the destination;
  the rerun succeeds and removes it.
- **A second `train`** into a folder whose run is going on: `attnsae: error: another `attnsae train` is running in
  OUT; wait for it to end, or choose another --out`; the first run finishes with its metrics intact.
- **`train --overwrite` killed before its first checkpoint:** the previous run waits in `OUT/.attnsae-previous-run`;
  the next `train` into OUT puts it back byte for byte (`attnsae: note: an earlier --overwrite in OUT was stopped
  before its first checkpoint; the previous run is back in place`). Once the new run has a checkpoint, the previous
  one is deleted, and files of the user's in OUT stay.
- **A value that is not a number** (the explained variance of constant activations, 0/0) is written as `null` in
  `metrics.jsonl` and every JSON file, never `NaN` or `-Infinity`.
"""


def show_args(args: tuple[str, ...]) -> str:
    shown = [f"<{len(a)}-character prompt>" if "\n" in a else a for a in args]
    return "attnsae " + " ".join(shown)


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        fx = catalogue.make_shared_inputs(Path(tmp) / "fx")
        try:
            outcomes = catalogue.run_cases(catalogue.CASES, Path(tmp) / "cases", fx)
        finally:
            catalogue.unmount_all()
        for case in catalogue.CASES:
            o = outcomes[case.id]
            if o.skipped:
                message, status = f"(not run here: {o.skipped})", ""
            elif o.proc is None:
                message, status = "(timed out)", ""
            else:
                errors = [line for line in o.proc.stderr.splitlines() if line.startswith("attnsae: error:")]
                message = errors[0] if len(errors) == 1 else f"(unexpected output: {o.proc.stderr[-200:]!r})"
                message = message.replace(str(o.d), "{d}").replace(str(fx), "{fx}")
                status = str(o.proc.returncode)
            rows.append(f"| `{case.id}` | {case.command} | {cell(case.what)}: `{cell(show_args(case.args))}` | "
                        f"{cell(message)} | {status} |")
    catalogue.DOC.write_text(HEADER + "\n".join(rows) + "\n" + FOOTER)
    print(f"wrote {catalogue.DOC} ({len(rows)} cases)")


if __name__ == "__main__":
    main()
