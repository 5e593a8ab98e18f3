"""scripts/gpu-check runs (here on CPU, at toy size) and reports what it measures."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_smoke_run(tmp_path):
    out = tmp_path / "gpu.json"
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu-check"), "--images", "64", "--epochs", "1",
                        "--batch-size", "32", "--retrains", "1", "--eval-images", "50", "--embed-images", "4",
                        "--embed-batch", "4", "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [row.get("retrain") for row in rows if "retrain" in row] == [0, 1]
    assert all(row["seconds"] > 0 and 0 <= row["test_accuracy"] <= 1 for row in rows if "retrain" in row)
    summary = rows[-1]
    assert summary["resnet50_images_per_s"] > 0 and summary["resnet9_retrain_s_median"] > 0
