"""bench/gpu_check.sh proven before a GPU is ever lent: its CPU dry run (``--device cpu --tiny``)
runs every step, writes the summary and the whole log under $OUT, and stops starting steps once
its budget is spent (still writing the summary)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_check(out: Path, *extra: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable)
    return subprocess.run(["bash", "bench/gpu_check.sh", "--device", "cpu", "--tiny", *extra], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_the_dry_run_runs_every_step_and_writes_summary_and_log(tmp_path):
    proc = run_check(tmp_path, "--budget-s", "400")
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    log = (tmp_path / "gpu_check.log").read_text()
    assert proc.returncode == 0, log[-3000:]
    steps = summary["steps"]
    assert [s for s in steps] == ["prepare", "tests", "throughput", "reference", "paper", "done"]
    assert all(steps[s]["status"] == "ok" for s in steps), {s: steps[s]["status"] for s in steps}
    assert steps["prepare"]["gradio_imported"] is False          # the engine runs where Gradio is absent
    assert {"cnn_8_16_32", "resnet18"} <= set(steps["throughput"]["results"])
    for r in steps["throughput"]["results"].values():
        assert r["ratio"] > 0 and r["engine_img_s"] > 0
    ref = steps["reference"]["result"]
    assert set(ref["arms"]) == {"teacher", "kd", "indistill"} and ref["device"].startswith("cpu")
    assert 0 <= ref["arms"]["indistill"]["map_cosine"] <= 1
    assert steps["paper"]["result"]["teacher"] == "resnet20"   # the dry run's stand-in for ResNet-18
    assert "== done: ok" in log and "passed" in log


def test_a_spent_budget_skips_the_remaining_steps_and_still_writes_the_summary(tmp_path):
    proc = run_check(tmp_path, "--budget-s", "20")
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    steps = summary["steps"]
    assert steps["prepare"]["status"] == "ok"
    assert steps["reference"]["status"] == "skipped" and "budget" in steps["reference"]["reason"]
    assert "done" in steps and proc.returncode in (0, 1)
