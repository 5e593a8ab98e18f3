"""An outside attribution method written against simattr's export alone: k-nearest-neighbour scores in plain numpy.

    python examples/knn_scores.py EXPORT_DIR ENCODER OUT.npy

Reads EXPORT_DIR/features/ENCODER_{train,test}.npy (the embeddings `snakemake export` wrote, in simattr's index
order), scores every test image against every training image by the negative Euclidean distance of their
features (higher = closer = more supportive) and saves the (n_test, n_train) float32 matrix as OUT.npy, with
NAME.cost.json beside it (NAME: OUT's stem): the wall seconds it took, for the report's cost table. Computed in
float64 without the |x|^2 - 2 x.y + |y|^2 shortcut: an independent check of simattr's own knn_l2 ranker.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np


def knn_scores(train: np.ndarray, test: np.ndarray, chunk: int = 64) -> np.ndarray:
    """-||test_i - train_j|| for every pair, (n_test, n_train), computed in float64 a chunk of test rows at a
    time."""
    train = train.astype(np.float64)
    out = np.empty((len(test), len(train)), np.float64)
    for s in range(0, len(test), chunk):
        diff = test[s:s + chunk, None, :].astype(np.float64) - train[None, :, :]
        out[s:s + chunk] = -np.sqrt((diff * diff).sum(-1))
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    export, encoder, out = Path(argv[0]), argv[1], Path(argv[2])
    t0 = time.perf_counter()
    train = np.load(export / "features" / f"{encoder}_train.npy")
    test = np.load(export / "features" / f"{encoder}_test.npy")
    scores = knn_scores(train, test).astype(np.float32)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, scores)
    cost = {"wall_s": round(time.perf_counter() - t0, 3), "gpu_s": 0, "models_trained": 0}
    (out.parent / f"{out.stem}.cost.json").write_text(json.dumps(cost) + "\n")
    print(f"{out}: {scores.shape[0]} test x {scores.shape[1]} train kNN scores ({encoder} features)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
