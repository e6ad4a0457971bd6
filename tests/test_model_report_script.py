"""``scripts/model_report.py`` refuses a folder that is not a training run's before it writes or loads anything (its
evaluation runs for hours: a wrong ``--saes`` must not get that far)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "model_report.py"


def test_a_folder_without_a_run_is_one_line_and_leaves_nothing(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text("")
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--model", "no-such-model", "--saes", str(tmp_path / "run"),
                           "--out", str(out), "--doc", str(tmp_path / "page.md")], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    error = proc.stderr.strip().splitlines()[-1]
    assert "is not a training run's folder" in error and "run_config.json and SAE folders" in error, error
    assert "metrics.jsonl" not in error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
