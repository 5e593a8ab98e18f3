"""TRAK computed outside simattr, with traker's own API, on simattr's export: the way an author of an attribution
method attributes the very models simattr evaluates.

    python examples/trak_scores.py EXPORT_DIR OUT.pt [--proj-dim 64] [--projector-seed 0] [--batch-size 128]
                                   [--lambda-reg 0] [--projector simattr|traker]

The model is simattr.models.torch_module(recipe, input_shape, n_classes) from EXPORT_DIR/recipe.json, each
checkpoint EXPORT_DIR/checkpoints/model-{i}.pt loaded into it; training examples are EXPORT_DIR/train_inputs.pt
with train_labels.pt, targets every test image (test_inputs.pt, test_labels.pt). traker's TRAKer featurizes the
training set per checkpoint and scores the targets; its scores come out as (n_train, n_test): saved as they are
in OUT.pt, a tensor in dattri's train_by_test orientation. `--projector simattr` uses simattr's hashed Rademacher
projector (simattr.trak.HashedProjector: the same projection as the built-in `trak` ranker, on any device);
`traker` leaves traker to pick its own (BasicProjector on CPU, its CUDA projector on GPUs).
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import torch


def batches(x: torch.Tensor, y: torch.Tensor, size: int, device):
    for s in range(0, len(y), size):
        yield x[s:s + size].to(device).float(), y[s:s + size].to(device)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("export")
    ap.add_argument("out")
    ap.add_argument("--proj-dim", type=int, default=64)
    ap.add_argument("--projector-seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lambda-reg", type=float, default=0.0)
    ap.add_argument("--projector", choices=("simattr", "traker"), default="simattr")
    a = ap.parse_args(argv)

    from trak import TRAKer

    from simattr.models import Recipe, torch_module
    from simattr.trak import HashedProjector

    t0 = time.perf_counter()
    export, out = Path(a.export), Path(a.out)
    spec = json.loads((export / "recipe.json").read_text())
    manifest = json.loads((export / "manifest.json").read_text())
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = torch_module(Recipe.from_settings(spec["recipe"]), tuple(spec["input_shape"]), spec["n_classes"])
    model = model.to(device).eval()
    x_train, y_train = torch.load(export / "train_inputs.pt"), torch.load(export / "train_labels.pt")
    x_test, y_test = torch.load(export / "test_inputs.pt"), torch.load(export / "test_labels.pt")
    checkpoints = [torch.load(export / c["file"], weights_only=True) for c in manifest["checkpoints"]]

    save_dir = out.parent / f".{out.stem}-traker"
    shutil.rmtree(save_dir, ignore_errors=True)
    save_dir.mkdir(parents=True)
    (save_dir / "experiments.json").write_text("{}")   # traker reads it when scoring starts, writes it only on load
    grad_dim = sum(p.numel() for p in model.parameters() if p.requires_grad)
    projector = HashedProjector(grad_dim, a.proj_dim, a.projector_seed, device) if a.projector == "simattr" else None
    traker = TRAKer(model=model, task="image_classification", train_set_size=len(y_train), save_dir=str(save_dir),
                    device=str(device), proj_dim=a.proj_dim, projector_seed=a.projector_seed, projector=projector,
                    lambda_reg=a.lambda_reg, use_half_precision=False, load_from_save_dir=False,
                    logging_level=logging.WARNING)
    for k, state in enumerate(checkpoints):
        traker.load_checkpoint(state, model_id=k)
        for xb, yb in batches(x_train, y_train, a.batch_size, device):
            traker.featurize(batch=(xb, yb), num_samples=len(yb))
    traker.finalize_features()
    for k, state in enumerate(checkpoints):
        traker.start_scoring_checkpoint(exp_name="targets", checkpoint=state, model_id=k, num_targets=len(y_test))
        for xb, yb in batches(x_test, y_test, a.batch_size, device):
            traker.score(batch=(xb, yb), num_samples=len(yb))
    scores = torch.as_tensor(traker.finalize_scores(exp_name="targets"), dtype=torch.float32)   # (n_train, n_test)
    shutil.rmtree(save_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(scores.contiguous(), out)
    cost = {"wall_s": round(time.perf_counter() - t0, 3),
            "gpu_s": round(time.perf_counter() - t0, 3) if device.type == "cuda" else 0,
            "models_trained": 0}       # the checkpoints came with the export: simattr trained them
    (out.parent / f"{out.stem}.cost.json").write_text(json.dumps(cost) + "\n")
    print(f"{out}: TRAK scores, {scores.shape[0]} train x {scores.shape[1]} test (train_by_test), "
          f"{len(checkpoints)} checkpoints, proj_dim {a.proj_dim}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
