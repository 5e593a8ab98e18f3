"""Benchmark: what `simattr explain` costs.

    python benchmarks/explain.py --results /path/to/results     # a finished digits run (make demo's results/)
    python benchmarks/explain.py                                 # builds a small digits results folder first

1. One image's ranking at CIFAR scale (5,000 candidates x 512-d features, one class of CIFAR-10 with ResNet-18
   features), against one exemplar SVM as the released code fits it (scikit-learn LinearSVC on 5,001 rows) and
   against the batched solver's cost per query (128 queries at once): the median over --repeats, on three feature
   distributions (simattr.synthetic.clustered_features, i.i.d. Gaussian, rectified Gaussian like post-ReLU pooled
   features) and on real features (the digits run's SimCLR embeddings, one class: about 144 x 128).
2. `simattr explain` on a digits PNG, load included: the wall seconds of the whole command (a new process, as a
   user runs it), the median over --runs runs, with the full-data models from TRAK's checkpoints when the results
   have them.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from timing import median_time


def features(kind: str, n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(candidates (n, d), queries (128, d)) float32 of one distribution."""
    from simattr.synthetic import clustered_features

    rng = np.random.default_rng(seed)
    if kind == "clustered":
        neg, q = clustered_features(n, d, 128, seed=seed)
        return neg.astype(np.float32), q.astype(np.float32)
    x = rng.standard_normal((n + 128, d)).astype(np.float32)
    if kind == "relu":
        x = np.maximum(x + 0.3, 0.0)
    return x[:n], x[n:]


def ranking_costs(name: str, neg: np.ndarray, q: np.ndarray, repeats: int) -> dict:
    from simattr import config, rankers

    svm, ref_svm = (config.ranker_settings(config.defaults(), r) for r in ("esvm", "esvm_reference"))
    rankers.score("esvm", q[:1], neg, **svm)                                 # warm-up
    one = median_time(lambda: rankers.score("esvm", q[:1], neg, **svm), repeats)
    batched = median_time(lambda: rankers.score("esvm", q, neg, **svm), max(1, repeats // 3)) / len(q)
    ref = median_time(lambda: rankers.score("esvm_reference", q[:1], neg, **ref_svm), max(1, repeats // 3))
    return {"features": name, "candidates": len(neg), "dim": neg.shape[1], "explain_one_ms": one * 1e3,
            "sklearn_one_esvm_ms": ref * 1e3, "batched_per_query_ms": batched * 1e3,
            "explain_over_sklearn": one / ref, "explain_over_batched": one / batched}


def small_results(folder: Path) -> Path:
    """A digits results folder for method simclr/esvm (a 1-epoch SimCLR; the schema's other defaults)."""
    from simattr import config as sconfig, datasets, embedding, settings, store

    data = datasets.Spec.from_config(sconfig.defaults()["dataset"])
    state = folder / store.fill(store.ENCODER_STATE, dataset="digits", encoder="simclr")
    embedding.train_encoder(data=data, encoder="simclr", params={**settings.encoder_params(sconfig.defaults(),
                            "simclr")[0], "epochs": 1}, seed=0, out=str(state), progress=False)
    for split in datasets.SPLITS:
        embedding.embed(data=data, encoder="simclr", split=split, shard_size=0, batch_size=256, float16=False,
                        workers=0, state_path=str(state), progress=False,
                        out_dir=str(folder / store.fill(store.EMBED_DIR, dataset="digits", encoder="simclr",
                                                        split=split)))
    return folder


def explain_wall(results: Path, config: str | None, runs: int) -> dict:
    from PIL import Image

    from simattr import datasets

    raw = datasets.load_split("digits", "test").load_raw([52])[0]
    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / "digit.png"
        Image.fromarray(np.round(raw[0] * 255).astype(np.uint8), "L").save(png)
        cmd = [sys.executable, "-m", "simattr.cli", "explain", str(png), "--results", str(results), "--out",
               str(Path(tmp) / "out")] + (["--config", config] if config else [])
        walls = []
        for _ in range(runs):
            t = time.perf_counter()
            r = subprocess.run(cmd, capture_output=True, text=True)
            walls.append(time.perf_counter() - t)
            if r.returncode:
                raise SystemExit(r.stderr)
    has_ck = (results / "digits" / "attributions" / "trak-checkpoints.pt").exists()
    return {"results": str(results), "full_data_models": "trak checkpoints" if has_ck else "MLPs retrained",
            "runs": runs, "wall_s_median": statistics.median(walls), "wall_s_max": max(walls),
            "wall_s_min": min(walls)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", help="a finished digits run's results folder (default: build a small one)")
    ap.add_argument("--config", help="the config that run was made with (default: the schema's defaults)")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    import torch

    out = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
           "torch_threads": torch.get_num_threads(), "ranking": []}
    for kind in ("clustered", "gaussian", "relu"):
        neg, q = features(kind, 5000, 512, a.seed)
        out["ranking"].append(ranking_costs(kind, neg, q, a.repeats))
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(a.results) if a.results else small_results(Path(tmp) / "results")
        from simattr import store

        f, y, _ = store.read_embeddings(results / "digits" / "embeddings" / "simclr" / "train" / "index.json")
        te, _, _ = store.read_embeddings(results / "digits" / "embeddings" / "simclr" / "test" / "index.json")
        out["ranking"].append(ranking_costs("digits simclr (real)", f[y == 9], np.tile(te[:1], (128, 1)),
                                            a.repeats))
        out["explain"] = explain_wall(results, a.config, a.runs)
    r = out["ranking"]
    out["worst_explain_over_sklearn"] = max(x["explain_over_sklearn"] for x in r)
    out["typical_explain_over_sklearn"] = statistics.median(x["explain_over_sklearn"] for x in r)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
