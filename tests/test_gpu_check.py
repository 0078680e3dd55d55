"""benchmarks/gpu_check.sh, the one GPU check, runs end to end on the CPU with --quick, so it cannot rot."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_quick_runs_every_step_and_writes_its_figures(tmp_path):
    out = tmp_path / "figures"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--quick"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    summary = (out / "summary.txt").read_text()
    assert done.returncode == 0, summary + "".join((out / f"{s}.log").read_text()[-2000:]
                                                   for s in ("train", "pipeline", "extract", "predict"))
    for step in ("train", "pipeline", "extract", "predict"):
        assert f"{step}: exit 0" in summary
    train = json.loads((out / "train" / "gpu_train.json").read_text())
    assert train["quick"] and train["encoders"][0]["batched"]
    assert json.loads((out / "predict" / "predict.json").read_text())["videos_per_s"] > 0
    assert "| pipeline |" in (out / "pipeline.log").read_text()
    assert "pixels" in (out / "extract.log").read_text()
