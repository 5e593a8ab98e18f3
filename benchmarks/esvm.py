"""Benchmark: simattr's batched exemplar-SVM solver against the released per-query scikit-learn loop.

    python benchmarks/esvm.py                 # CIFAR scale (5,000 x 128, 1,000 queries) and ImageNet scale
    python benchmarks/esvm.py --quick         # small sizes, a smoke run

For each scale, in one process: the matmul + top-100 floor, the batched solver on every query (median over
--repeats), the scikit-learn reference on a sample of the queries, their ratio, and the agreement on that
sample (top-100 overlap and Spearman correlation of the scores, per query: min and mean). The features are
`simattr.synthetic.clustered_features` (seeded clusters with a power-law spectrum, like self-supervised features).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
from timing import median_time
import torch
from scipy.stats import spearmanr

from simattr import config
from simattr import esvm
from simattr.synthetic import clustered_features

SVM = config.ranker_settings(config.defaults(), "esvm")                # the schema's C and chunk_size
REF = config.ranker_settings(config.defaults(), "esvm_reference")      # its C, tol and max_iter


def exemplar_svm_scores(q, neg, **kw):
    return esvm.exemplar_svm_scores(q, neg, SVM["C"], chunk_size=SVM["chunk_size"], **kw)


def esvm_reference(q, neg):
    return esvm.esvm_reference(q, neg, REF["C"], tol=REF["tol"], max_iter=REF["max_iter"])


def run_scale(name: str, n: int, d: int, m: int, m_ref: int, repeats: int, seed: int, k: int = 100) -> dict:
    neg, q = clustered_features(n, d, m, seed=seed)
    Q, N = torch.as_tensor(q), torch.as_tensor(neg)
    exemplar_svm_scores(q[:8], neg)                                    # warm-up (allocations, thread pools)
    floor = median_time(lambda: torch.topk(Q @ N.T, min(k, n), dim=1), max(5, repeats)) / m
    box = {}

    def batched():
        box["scores"], box["info"] = exemplar_svm_scores(q, neg, return_info=True)

    t_batched = median_time(batched, repeats) / m
    sample = np.random.default_rng(seed).choice(m, size=min(m_ref, m), replace=False)
    t = time.perf_counter()
    ref = esvm_reference(q[sample], neg)
    t_ref = (time.perf_counter() - t) / len(sample)
    got = box["scores"][sample]
    kk = min(k, n)
    overlap = [len(set(np.argsort(-g)[:kk]) & set(np.argsort(-r)[:kk])) / kk for g, r in zip(got, ref)]
    rho = [spearmanr(g, r)[0] for g, r in zip(got, ref)]
    info = box["info"]
    return {"scale": name, "negatives": n, "dim": d, "queries": m, "reference_sample": len(sample),
            "floor_us": floor * 1e6, "batched_us": t_batched * 1e6, "reference_ms": t_ref * 1e3,
            "speedup": t_ref / t_batched, "x_floor": t_batched / floor,
            "overlap_min": min(overlap), "overlap_mean": float(np.mean(overlap)),
            "spearman_min": float(min(rho)), "spearman_mean": float(np.mean(rho)),
            "max_abs_diff": float(np.abs(got - ref).max()), "backend": info.backend,
            "newton_mean": float(np.mean(info.newton_steps)), "newton_max": int(max(info.newton_steps)),
            "active_mean": float(np.mean(info.active)), "unconverged": info.unconverged}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run, not the bar)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats of the batched solver (median)")
    ap.add_argument("--reference-sample", type=int, default=30, help="queries the scikit-learn loop solves")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--json", help="also write the rows here")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.quick:
        scales = [("cifar-like (quick)", 1000, 64, 100, 5), ("imagenet-like (quick)", 300, 512, 40, 3)]
    else:
        scales = [("CIFAR-10 scale", 5000, 128, 1000, a.reference_sample),
                  ("ImageNet scale", 1300, 2048, 200, max(3, a.reference_sample // 3))]
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
          f"{torch.__version__} ({torch.get_num_threads()} threads)")
    rows = [run_scale(name, n, d, m, mr, a.repeats, a.seed) for name, n, d, m, mr in scales]
    print("| scale | n x d | queries (ref) | floor us/q | batched us/q | sklearn ms/q | speed-up | x floor "
          "| top-100 overlap min/mean | Spearman min | Newton steps mean/max | active mean |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['scale']} | {r['negatives']} x {r['dim']} | {r['queries']} ({r['reference_sample']}) "
              f"| {r['floor_us']:.1f} | {r['batched_us']:.0f} | {r['reference_ms']:.1f} | {r['speedup']:.1f}x "
              f"| {r['x_floor']:.1f}x | {r['overlap_min']:.3f} / {r['overlap_mean']:.4f} "
              f"| {r['spearman_min']:.6f} | {r['newton_mean']:.2f} / {r['newton_max']} | {r['active_mean']:.0f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
