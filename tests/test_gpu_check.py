"""scripts/gpu-check --tiny: every check of the GPU probe runs (here on the CPU, at toy size) and reports."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
CHECKS = ["versions", "task_view", "retrain", "shared_gpu", "esvm", "embed", "trak", "stream", "cuda_tests"]


def test_gpu_check_tiny_runs_every_check_and_prints_a_json_line_each(tmp_path):
    out = tmp_path / "gpu.json"
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu-check"), "--tiny", "--json", str(out)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    lines = [json.loads(ln) for ln in r.stdout.splitlines() if ln.startswith("{")]
    assert [row["check"] for row in lines] == CHECKS and json.loads(out.read_text()) == lines
    assert not [row for row in lines if "error" in row]
    rows = {row["check"]: row for row in lines}
    assert rows["versions"]["torch"] and "cuda_build" in rows["versions"]
    assert rows["task_view"]["CUDA_VISIBLE_DEVICES"] not in (None, "")       # a local task given a GPU sees one
    rt = rows["retrain"]
    assert rt["deterministic_same_bits"] and len(rt["autotuned_seconds"]) == 3 and 0 <= rt["autotuned_accuracy"] <= 1
    assert rows["shared_gpu"]["processes"]["2"]["models"] == 2 and rows["shared_gpu"]["best_models_per_minute"] > 0
    assert all(v["top100_overlap_vs_cpu_min"] == 1.0 for k, v in rows["esvm"].items() if "x" in k)
    assert rows["embed"]["images_per_s"] > 0 and rows["stream"]["train_images_per_s"] > 0
    assert rows["trak"]["pearson_vs_cpu"] > 0.999


def test_gpu_check_refuses_an_unknown_check():
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu-check"), "--tiny", "--only", "warp"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "unknown checks ['warp']" in r.stderr
