"""dattri's attribution methods (dattri 0.3: dattri.task.AttributionTask, dattri.algorithm.*) on simattr's export: one
method's scores of every training image for every test image, for simattr's counterfactual evaluation.

    python examples/dattri_scores.py EXPORT_DIR OUT.pt --method METHOD [--seed 0] [--batch-size 64]
        [--proj-dim D] [--regularization R] [--max-iter N] [--hessian-batch-size 0] [--precompute-ratio 1]
        [--damping F] [--normalize] [--l2-strength 0.003] [--rps-epochs 3000] [--only-sampled]

The model is simattr.models.torch_module(recipe, input_shape, n_classes) from EXPORT_DIR/recipe.json, in eval()
mode (ResNet-9's BatchNorm uses its running statistics: what dattri's torch.func gradients expect); its weights
are the export's full-data checkpoints (manifest.json "checkpoints", EXPORT_DIR/checkpoints/model-{i}.pt, state
dicts). Training data: train_inputs.pt + train_labels.pt; targets: every test image (test_inputs.pt, test_labels.pt;
inputs are cast to float32: ResNet-9's are stored as float16). The loss is the training loss, mean cross-entropy.

OUT.pt: a float32 tensor (n_train, n_test), dattri's train_by_test orientation, higher = more supportive (the
training image helps the model get the test image right): each method's sign is applied here. With --only-sampled
its columns are EXPORT_DIR/sampled_test_indices only, in that order, and OUT.index.txt beside it lists them (one
test index per line: simattr.external's `index`). Beside it OUT.cost.json: wall_s, gpu_s (wall on CUDA, else 0),
models_trained. Written atomically (a temporary name in the same folder, then renamed), the cost file last, so a
run that dies leaves no file that looks complete; non-finite scores write nothing. Every bad input is one line
`dattri_scores: ...` on stderr and exit code 2. Same inputs and flags, same bytes (on one machine's CPU).

Methods (K = the export's checkpoints). Sign: what dattri returns and the sign applied, checked on the digits test
export (config/test.yaml: MLP P = 2,410, 1437 train / 360 test, K = 2) with default flags: "same" = the fraction of
test images whose mean score over training images of their own class exceeds the mean over the other classes;
"top16" = the share of each test image's 16 highest-scored training images that have its class (chance 0.10),
"bottom16" the same for the 16 lowest (a flipped sign would swap them); LDS = mean Spearman over the export's 20
LDS subset models (the export's lds_masks / lds_margins), for orientation. Wall s: the whole script, 2 shared cores.

  if-explicit  IFAttributorExplicit: g_train . (H + r I)^-1 g_test, H the Hessian of the mean training loss over the
               whole training set (one batch; --hessian-batch-size B: dattri sums the per-batch inverse-Hessian-
               vector products, not the same estimator) at each checkpoint, averaged over the checkpoints (dattri's
               running mean). dattri returns grad_train^T H^-1 grad_test of the loss (BaseInnerProductAttributor:
               train_rep @ ihvp(test_rep).T): minus Koh & Liang's I_up,loss, positive when upweighting the training
               image lowers the test loss: sign +1. same 1.000, top16 0.603, bottom16 0.093, LDS 0.276 (r = 0.01);
               70 s, 4.3 GB peak (torch.func.hessian). Refused before any work when the Hessian cannot fit (ResNet-9,
               P = 6.6M: 345 TB).
  if-cg        IFAttributorCG: the same with --max-iter conjugate-gradient steps for the inverse-Hessian-vector
               product (dattri ignores its tol: always max_iter steps, from x0 = v). Sign +1. same 1.000, top16
               0.601, bottom16 0.090, LDS 0.277; 16 s.
  if-arnoldi   IFAttributorArnoldi: g_train . V diag(1/lambda) V^T g_test, (lambda, V) the top --proj-dim (100)
               eigenpairs of H + r I (r = --regularization, 0.01) from --max-iter (100) Arnoldi iterations, H the
               Hessian of the mean training loss on a seeded random --precompute-ratio (1.0) of the training images
               (dattri's takes the loader's first batches), its Hessian-vector products summed over chunks of
               --hessian-batch-size images (the same product, less memory); per checkpoint, averaged. Two fixes
               to dattri 0.3: its Arnoldi iteration orthogonalises once in float32 and loses orthogonality after
               20-40 iterations (spurious near-zero eigenvalues whose 1/sqrt then dominate: same 0.853, top16
               0.249): here twice; and it keeps negative eigenvalues (NaN scores): here dropped, logged. Memory:
               the (max_iter + 1) x P Krylov basis and proj_dim x P eigenvectors (ResNet-9: 2.7 + 2.6 GB), no
               P x P matrix: the full-model IF that fits at CIFAR-10 scale. Sign +1 (as IF). same 1.000, top16
               0.531, bottom16 0.076, LDS 0.256; 6 s.
  tracin       TracInAttributor (TracInCP) over the K checkpoints: sum_k w_k grad_train . grad_test of the loss
               (--normalize: cosine, CosIn). The checkpoints are K independently trained full-data models, not
               one training trajectory, so there is no learning-rate schedule to weight them by: every w_k = 1/K
               (TracInCP with equal step sizes: the ensemble average of gradient dot products, Grad-Dot); the scale
               changes no ranking. A step on the training image lowers the test loss when the dot product is
               positive: sign +1. same 1.000, top16 0.724, bottom16 0.000, LDS 0.164; 6 s. --proj-dim 0 (default):
               exact gradients (dattri's TracIn projects to 512 even when given no projector settings; this script
               turns its projector off); D > 0: dattri's normal random projection to D (seed --seed). dattri builds
               a projector per training batch and per test batch, both alive (on CUDA each a dense P x D matrix:
               ResNet-9 at 1024, 25 GiB), and recomputes the test gradients per training batch: here one projector
               serves both (the same matrix: same seed), generated once per checkpoint (shared_projector); the
               test gradients are still n_train / --batch-size x n_test per checkpoint (a larger batch, fewer).
  logra        LoGraAttributor (dattri's block-projected IF over the model's nn.Linear layers: Kronecker-factored
               normal projection to --proj-dim = s^2 per layer, seed --seed; empirical-Fisher preconditioner damped
               by --damping x its mean eigenvalue, dattri's 1e-5 by default): g_train . F^-1 g_test of the loss.
               dattri's LoGra reads the task's first checkpoint only: one attributor per checkpoint, averaged. Sign
               +1 (as IF). same 0.972, top16 0.405, bottom16 0.102, LDS 0.095 (--damping 0.1: 1.000, 0.558, 0.084,
               LDS 0.231); 8 s (plus about 20 s the first time: dattri torch.compile's its compressor). ResNet-9: its
               one Linear layer (the head) only.
  rps          RPSAttributor (representer points): the last nn.Linear layer's weight is refitted, L2-regularised
               (--l2-strength), on the frozen features to the model's own softmax outputs; the score is
               alpha_i,y_test * f_i . f_test, training image i's share of the test image's pre-activation for its
               own label: positive = pushes the test image towards its label: sign +1. One attributor per
               checkpoint (dattri's reads the first only), averaged. same 1.000, top16 0.994, bottom16 0.006, LDS
               0.178; 7 s. models_trained = K: one last-layer refit per checkpoint (a convex full-batch fit on cached
               features, seconds; the rest of the network is not trained, but the scores come from these refitted
               models, not from the checkpoints as they are). ResNet-9: its head Linear is followed by a x1/8 scale
               that dattri does not see, so the refit's targets are softmax(8 x logits).
  trak         TRAKAttributor over all K checkpoints: the model output is the correct-class margin (logit minus the
               logsumexp of the others, computed stably), gradients projected to --proj-dim (dattri's normal random
               projection, seed --seed), phi_test (Phi^T Phi + r I)^-1 Phi^T Q with Q = 1 - p(correct), as traker.
               Positive = raises the test margin: sign +1. same 0.842, top16 0.231, bottom16 0.097, LDS 0.153 (proj
               128; proj 64: 0.944, 0.257, 0.067, LDS 0.170, as examples/trak_scores.py's traker at 64: 0.931,
               0.258, 0.065, LDS 0.172: TRAK with two checkpoints is noisy); 11 s. One projector for its training
               and test batches (dattri builds one per batch), as tracin.

Every projector runs on the script's device (CUDA when there is one: dattri's projector_kwargs default to the CPU,
where its projector regenerates its matrix in 100-column blocks on every call). The inner-product attributors
(if-*) compute each test batch's gradients and transform once per checkpoint (dattri recomputes both per training
batch; memo_test_side), so if-cg costs n_test x max_iter Hessian-vector products per Hessian batch, not that times
n_train / --batch-size. Sizes at CIFAR-10 scale: docs/peers.md.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import sys
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path

METHODS = ("if-explicit", "if-cg", "if-arnoldi", "tracin", "logra", "rps", "trak")
SIGN = {m: 1.0 for m in METHODS}        # checked: see the docstring (every dattri method here is higher = helpful)
PROJ_DIM = {"if-arnoldi": 100, "tracin": 0, "logra": 256, "trak": 128}       # --proj-dim's default per method
REGULARIZATION = {"if-explicit": 0.01, "if-cg": 0.01, "if-arnoldi": 0.01, "trak": 0.0}
MAX_ITER = {"if-cg": 10, "if-arnoldi": 100}
EXPORT_FILES = ("manifest.json", "recipe.json", "train_inputs.pt", "train_labels.pt", "test_inputs.pt",
                "test_labels.pt")


class Refusal(Exception):
    """Bad input or a method that cannot run here: one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise Refusal(message)


def log(msg: str) -> None:
    print(f"dattri_scores: {msg}", file=sys.stderr, flush=True)


def parse(argv: list[str]) -> argparse.Namespace:
    ap = _Parser(prog="dattri_scores.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("export")
    ap.add_argument("out")
    ap.add_argument("--method", required=True, help=", ".join(METHODS))
    ap.add_argument("--seed", type=int, default=0, help="torch's seed and the random projections' seed")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--proj-dim", type=int, default=None,
                    help="if-arnoldi (top eigenvectors kept), tracin (0: none), logra (a square), trak; default " +
                         ", ".join(f"{k} {v}" for k, v in PROJ_DIM.items()))
    ap.add_argument("--regularization", type=float, default=None,
                    help="added to the Hessian (if-*) or TRAK's kernel; default " +
                         ", ".join(f"{k} {v}" for k, v in REGULARIZATION.items()))
    ap.add_argument("--max-iter", type=int, default=None,
                    help="if-cg's conjugate-gradient steps, if-arnoldi's Arnoldi iterations (Hessian-vector "
                         "products); default " + ", ".join(f"{k} {v}" for k, v in MAX_ITER.items()))
    ap.add_argument("--hessian-batch-size", type=int, default=0,
                    help="training images per Hessian batch (0: all in one). if-explicit, if-cg: dattri sums the "
                         "per-batch inverse-Hessian-vector products (another estimator); if-arnoldi: the Hessian-"
                         "vector product is summed over chunks of this size (the same product, less memory)")
    ap.add_argument("--precompute-ratio", type=float, default=1.0,
                    help="if-arnoldi: the share of the training images (a seeded random subset) whose mean-loss "
                         "Hessian the Arnoldi iteration runs on (dattri's precompute_data_ratio)")
    ap.add_argument("--damping", type=float, default=None,
                    help="logra: damping as a fraction of the Fisher's mean eigenvalue (default dattri's 1e-5)")
    ap.add_argument("--normalize", action="store_true", help="tracin: cosine of gradients (CosIn)")
    ap.add_argument("--l2-strength", type=float, default=0.003, help="rps: L2 of the last-layer refit")
    ap.add_argument("--rps-epochs", type=int, default=3000, help="rps: the refit's steps at most")
    ap.add_argument("--only-sampled", action="store_true",
                    help="score only EXPORT_DIR/sampled_test_indices (OUT.index.txt lists them)")
    a = ap.parse_args(argv)
    if a.method not in METHODS:
        raise Refusal(f"unknown method {a.method!r}; valid: {', '.join(METHODS)}")
    a.max_iter = MAX_ITER.get(a.method, 10) if a.max_iter is None else a.max_iter
    if a.batch_size < 1 or a.max_iter < 1 or a.hessian_batch_size < 0 or a.rps_epochs < 1:
        raise Refusal("--batch-size, --max-iter and --rps-epochs must be >= 1, --hessian-batch-size >= 0")
    if not 0 < a.precompute_ratio <= 1:
        raise Refusal(f"--precompute-ratio must be in (0, 1], got {a.precompute_ratio}")
    a.proj_dim = PROJ_DIM.get(a.method) if a.proj_dim is None else a.proj_dim
    a.regularization = REGULARIZATION.get(a.method, 0.0) if a.regularization is None else a.regularization
    if a.method == "logra" and (a.proj_dim < 1 or math.isqrt(a.proj_dim) ** 2 != a.proj_dim):
        raise Refusal(f"logra: --proj-dim must be a perfect square (s x s per layer), got {a.proj_dim}")
    if a.method in ("trak", "if-arnoldi") and a.proj_dim < 1:
        raise Refusal(f"{a.method}: --proj-dim must be >= 1, got {a.proj_dim}")
    if a.proj_dim is not None and a.proj_dim < 0:
        raise Refusal(f"--proj-dim must be >= 0, got {a.proj_dim}")
    return a


def load_export(export: Path, device, only_sampled: bool) -> dict:
    """The export's model (eval mode, on `device`), checkpoints, and data (CPU tensors: inputs float32)."""
    import torch

    from simattr.models import Recipe, torch_module

    if not export.is_dir():
        raise Refusal(f"{export}: export folder not found (`snakemake export` writes it)")
    for name in EXPORT_FILES + (("sampled_test_indices.pt",) if only_sampled else ()):
        if not (export / name).is_file():
            more = "; a recipe that streams its images (resnet18) has no inputs to attribute" \
                if name.endswith("_inputs.pt") else ""
            raise Refusal(f"{export / name}: not found (not a whole export folder?){more}")
    try:
        spec = json.loads((export / "recipe.json").read_text())
        manifest = json.loads((export / "manifest.json").read_text())
        files = [export / c["file"] for c in manifest.get("checkpoints", [])]
        spec["recipe"], spec["input_shape"], spec["n_classes"]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise Refusal(f"{export}: recipe.json / manifest.json are not an export's ({type(e).__name__}: {e})") from None
    if not files:
        raise Refusal(f"{export / 'manifest.json'}: lists no checkpoints")
    for f in files:
        if not f.is_file():
            raise Refusal(f"{f}: checkpoint not found")
    recipe = Recipe.from_settings(spec["recipe"])
    input_shape = tuple(int(s) for s in spec["input_shape"])
    model = torch_module(recipe, input_shape, int(spec["n_classes"])).to(device).eval()
    for p in model.parameters():
        p.requires_grad_(True)
    ex = {"recipe": recipe, "input_shape": input_shape, "n_classes": int(spec["n_classes"]), "model": model,
          "checkpoints": [torch.load(f, map_location=device, weights_only=True) for f in files],
          "x_train": torch.load(export / "train_inputs.pt", weights_only=True).float(),
          "y_train": torch.load(export / "train_labels.pt", weights_only=True).long(),
          "x_test": torch.load(export / "test_inputs.pt", weights_only=True).float(),
          "y_test": torch.load(export / "test_labels.pt", weights_only=True).long(), "index": None}
    if only_sampled:
        idx = torch.load(export / "sampled_test_indices.pt", weights_only=True).long()
        ex["index"], ex["x_test"], ex["y_test"] = idx, ex["x_test"][idx], ex["y_test"][idx]
    for split in ("train", "test"):
        x, y = ex[f"x_{split}"], ex[f"y_{split}"]
        if tuple(x.shape[1:]) != input_shape or len(x) != len(y):
            raise Refusal(f"{export}: {split} inputs {tuple(x.shape)} / labels {tuple(y.shape)} do not match the "
                          f"recipe's input shape {input_shape}")
    return ex


def available_bytes(device) -> int:
    import torch

    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def gb(n: float) -> str:
    return f"{n / 1e12:,.0f} TB" if n >= 1e12 else f"{n / 1e9:,.1f} GB"


def functions(model, input_shape: tuple, n_classes: int):
    """dattri's functions of (params, data): the mean cross-entropy loss, the correct-class margin (TRAK's model
    output) and its probability. data = (x, y) for one example (x of input_shape, or with a batch axis of 1: dattri
    vmaps over in_dims 0 or 1) or a batch (the Hessian's)."""
    import torch
    import torch.nn.functional as F
    from torch.func import functional_call

    def batch(data):
        x, y = data
        return x.reshape(-1, *input_shape), y.reshape(-1)

    def loss(params, data):
        x, y = batch(data)
        return F.cross_entropy(functional_call(model, params, (x,)), y)

    def margin(params, data):
        x, y = batch(data)
        z = functional_call(model, params, (x,))
        mask = torch.arange(n_classes, device=z.device) == y[:, None]
        correct = (z * mask).sum(1)
        return (correct - torch.logsumexp(z.masked_fill(mask, float("-inf")), 1)).sum()

    def correct_probability(params, data):
        x, y = batch(data)
        return torch.exp(-F.cross_entropy(functional_call(model, params, (x,)), y))

    return loss, margin, correct_probability


def loader(x, y, batch_size: int):
    from torch.utils.data import DataLoader, TensorDataset

    return DataLoader(TensorDataset(x, y), batch_size=max(1, min(batch_size, len(y))), shuffle=False)


def indexed_loader(x, y, batch_size: int):
    """A test loader whose batches carry their test indices as a third tensor (memo_test_side's key)."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    return DataLoader(TensorDataset(x, y, torch.arange(len(y))), batch_size=max(1, min(batch_size, len(y))),
                      shuffle=False)


def memo_test_side(attributor) -> None:
    """dattri's BaseInnerProductAttributor.attribute recomputes every test batch's gradients and their transform
    (IF's inverse-Hessian-vector product; IFAttributorExplicit its Hessian with it) once per training batch:
    n_train / batch x n_test test gradients per checkpoint. The same test images give the same result, so both are
    computed once per (checkpoint, test batch), keyed by the batch's test indices (indexed_loader's third tensor),
    and a checkpoint's results (and an Arnoldi projector's eigenvectors) are dropped when the next one starts."""
    generate, transform, seen = attributor.generate_test_rep, attributor.transform_test_rep, {}

    def generate_test_rep(ckpt_idx, data):
        idx = data[2].reshape(-1)
        key = (ckpt_idx, int(idx[0]), len(idx))
        if key not in seen:
            for old in [k for k in seen if k[0] != ckpt_idx]:
                del seen[old]
            projectors = getattr(attributor, "arnoldi_projectors", None)
            for k in range(ckpt_idx if projectors else 0):
                projectors[k] = None
            t0 = time.perf_counter()
            seen[key] = transform(ckpt_idx, generate(ckpt_idx, data[:2]))
            log(f"checkpoint {ckpt_idx + 1}, test images {key[1]}-{key[1] + key[2] - 1}: test side in "
                f"{time.perf_counter() - t0:.1f} s")            # progress: the slow part of the if-* methods
        return seen[key]

    attributor.generate_test_rep = generate_test_rep
    attributor.transform_test_rep = lambda ckpt_idx, test_rep: test_rep


@contextlib.contextmanager
def shared_projector(*modules):
    """dattri's TracIn and TRAK build a new random projector (dattri.func.projection.random_project) for every
    batch, TracIn one for the training batch and one for each test batch, both alive: on CUDA each holds its dense
    P x proj_dim normal matrix (ResNet-9 at 2048: 50 GiB each) and regenerates it per batch. Every projector they
    build here has the same settings and seed (the matrix of checkpoint k is seeded with seed + 1e5 k whichever batch
    asks), so one projector per setting serves them all: the same projections, one matrix, generated once per
    checkpoint."""
    from dattri.func import projection

    made = {}

    def random_project(feature, feature_batch_size, **kwargs):
        if isinstance(feature, dict):
            shape = tuple((k, v.numel() // feature_batch_size) for k, v in feature.items())
            dtype = next(iter(feature.values())).dtype
        else:
            shape, dtype = tuple(feature.shape[1:]), feature.dtype
        key = (shape, str(dtype), tuple(sorted((k, str(v)) for k, v in kwargs.items())))
        if key not in made:
            made[key] = projection.random_project(feature, feature_batch_size, **kwargs)
        return made[key]

    saved = [(m, m.random_project) for m in modules]
    try:
        for m, _ in saved:
            m.random_project = random_project
        yield
    finally:
        for m, f in saved:
            m.random_project = f
        made.clear()


def arnoldi_cache(att, ex: dict, a, dev: str) -> None:
    """IFAttributorArnoldi.cache as dattri's, on a seeded random subset of --precompute-ratio of the training images
    (dattri's takes the loader's first batches) and, with --hessian-batch-size B, the Hessian-vector product of the
    subset's mean loss summed over chunks of B images, weighted by their size (the same product: dattri's runs the
    whole subset as one batch). One ArnoldiProjector per checkpoint (dattri.func.projection; mode rev-fwd as
    dattri's); its eigenspace (--max-iter Hessian-vector products, --proj-dim top eigenvectors of H + r I) is
    computed when first used."""
    import torch
    from dattri.func.hessian import hvp_at_x
    from dattri.func.projection import ArnoldiProjector

    n = len(ex["y_train"])
    m = max(1, math.ceil(a.precompute_ratio * n))
    pick = torch.randperm(n, generator=torch.Generator().manual_seed(a.seed))[:m].sort().values if m < n \
        else torch.arange(n)
    xs, ys = ex["x_train"][pick].to(dev), ex["y_train"][pick].to(dev)
    chunk = a.hessian_batch_size or m
    parts = [(xs[s:s + chunk], ys[s:s + chunk]) for s in range(0, m, chunk)]
    att.full_train_dataloader = loader(ex["x_train"], ex["y_train"], a.batch_size)
    att.arnoldi_projectors = []
    for k in range(len(att.task.get_checkpoints())):
        params, _ = att.task.get_param(k, layer_name=att.layer_name)
        loss = att.task.get_loss_func(layer_name=att.layer_name, ckpt_idx=k)
        hvps = [(len(y) / m, hvp_at_x(partial(loss, **{att.task.loss_func_data_key: (x, y)}), x=(params,),
                                      argnums=0, mode="rev-fwd")) for x, y in parts]

        def hvp(v, hvps=hvps):
            out = a.regularization * v
            for w, f in hvps:
                out = out + w * f(v)
            return out

        proj = ArnoldiProjector(len(params), a.proj_dim, partial(loss, **{att.task.loss_func_data_key: parts[0]}),
                                params, max_iter=a.max_iter, regularization=a.regularization, seed=a.seed,
                                device=dev)
        proj.hvp_at_x_func = hvp
        proj._arnoldi_iter = _arnoldi_iter_reorthogonalized
        att.arnoldi_projectors.append(partial(_arnoldi_project, proj, k))
    log(f"if-arnoldi: Hessian on {m} training images in {len(parts)} chunk(s), {a.max_iter} iterations, top "
        f"{a.proj_dim} eigenvectors")


def _arnoldi_iter_reorthogonalized(hvp_func, start_vec, n_iters: int, norm_constant: float, tol: float,
                                   device="cpu"):
    """dattri's ArnoldiProjector._arnoldi_iter (the same Hessenberg matrix and Krylov basis, norm_constant 1) with
    each new vector orthogonalised twice against the basis (classical Gram-Schmidt twice) instead of once (modified
    Gram-Schmidt) and the basis kept in one preallocated (n_iters, P) tensor instead of a list stacked at the end.
    dattri's single pass in float32 loses orthogonality after 20-40 iterations (the digits MLP: |Q Q^T - I| reaches
    0.46 by 100), which gives spurious near-zero Ritz values whose 1/sqrt(eigenvalue) then dominates every score."""
    import torch

    n_iters = min(start_vec.shape[0] + 1, n_iters)
    basis = torch.zeros((n_iters, start_vec.shape[0]), dtype=start_vec.dtype, device=start_vec.device)
    appr = torch.zeros((n_iters, n_iters - 1), device=device)
    basis[0] = start_vec / torch.norm(start_vec)
    for n in range(n_iters - 1):
        h = hvp_func(basis[n]).detach()
        q = basis[:n + 1]
        c = q @ h
        h = h - c @ q
        c2 = q @ h
        h = h - c2 @ q
        appr[:n + 1, n] = (c + c2) / norm_constant ** 2
        norm = torch.norm(h)
        if norm < tol:
            basis[n + 1] = h
            return appr[:n + 2, :n + 1], basis[:n + 2]
        appr[n + 1, n] = norm / norm_constant
        basis[n + 1] = h / appr[n + 1, n]
    return appr, basis


def _arnoldi_project(proj, k: int, features):
    """proj.project, its eigenspace computed on first use with the non-positive eigenvalues dropped: dattri's
    get_eigenspace keeps the top --proj-dim by absolute value and only warns when some are negative, and its
    projection divides by their square roots (NaN scores)."""
    if proj.eigvals is None:
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            proj.get_eigenspace()
        proj.eigvals, proj.eigvecs = proj.eigvals.detach(), proj.eigvecs.detach()
        keep = proj.eigvals > max(proj.tol ** 2, 0.0)
        if not bool(keep.any()):
            raise Refusal("if-arnoldi: no positive eigenvalue of H + r I found; use a larger --regularization")
        proj.eigvals, proj.eigvecs = proj.eigvals[keep], proj.eigvecs[keep]
        proj.proj_dim = int(keep.sum())
        dropped = int((~keep).sum())
        log(f"if-arnoldi: checkpoint {k + 1}: {proj.proj_dim} eigenvectors, eigenvalues "
            f"{float(proj.eigvals.min()):.3g} to {float(proj.eigvals.max()):.3g}"
            + (f" ({dropped} non-positive dropped: a larger --regularization keeps more)" if dropped else "")
            + f", in {time.perf_counter() - t0:.1f} s")
    return proj.project(features)


def run_method(a, ex: dict, device, tmp: Path):
    """(scores (n_train, n_test) as dattri returns them, models trained)."""
    import torch
    from dattri.task import AttributionTask

    model, shape, C = ex["model"], ex["input_shape"], ex["n_classes"]
    loss, margin, correct_probability = functions(model, shape, C)
    ckpts, K = ex["checkpoints"], len(ex["checkpoints"])
    train = loader(ex["x_train"], ex["y_train"], a.batch_size)
    test = loader(ex["x_test"], ex["y_test"], a.batch_size)
    dev = str(device)

    if a.method in ("if-explicit", "if-cg", "if-arnoldi"):
        from dattri.algorithm import IFAttributorArnoldi, IFAttributorCG, IFAttributorExplicit

        task = AttributionTask(loss_func=loss, model=model, checkpoints=ckpts)
        if a.method == "if-explicit":
            att = IFAttributorExplicit(task=task, device=dev, regularization=a.regularization)
        elif a.method == "if-cg":
            att = IFAttributorCG(task=task, device=dev, max_iter=a.max_iter, regularization=a.regularization)
        else:
            att = IFAttributorArnoldi(task=task, device=dev, proj_dim=a.proj_dim, max_iter=a.max_iter,
                                      precompute_data_ratio=a.precompute_ratio, regularization=a.regularization,
                                      seed=a.seed)
        if a.method == "if-arnoldi":
            arnoldi_cache(att, ex, a, dev)
        else:
            att.cache(loader(ex["x_train"], ex["y_train"], a.hessian_batch_size or len(ex["y_train"])))
        return _attribute_memo(att, train, ex, a), 0

    if a.method == "tracin":
        from dattri.algorithm import TracInAttributor

        task = AttributionTask(loss_func=loss, model=model, checkpoints=ckpts)
        att = TracInAttributor(task=task, weight_list=torch.full((K,), 1.0 / K), normalized_grad=a.normalize,
                               device=dev)
        # dattri's TracIn projects to 512 dimensions even when given projector_kwargs=None (and updates its
        # module-level defaults with what it is given): set its own copy, None for exact gradients
        att.projector_kwargs = None if a.proj_dim == 0 else {
            "proj_dim": a.proj_dim, "proj_max_batch_size": 32, "proj_seed": a.seed, "device": dev}
        import dattri.algorithm.tracin as tracin_module

        with shared_projector(tracin_module):
            return att.attribute(train, test), 0

    if a.method == "trak":
        from dattri.algorithm import TRAKAttributor

        task = AttributionTask(loss_func=margin, model=model, checkpoints=ckpts, target_func=margin)
        att = TRAKAttributor(task=task, correct_probability_func=correct_probability, device=dev,
                             regularization=a.regularization)
        att.projector_kwargs = {"proj_dim": a.proj_dim, "proj_max_batch_size": 32, "proj_seed": a.seed,
                                "device": dev}
        import dattri.algorithm.trak as trak_module

        with shared_projector(trak_module):
            att.cache(train)
            return att.attribute(test), 0

    # logra, rps: dattri's attributor reads the task's first checkpoint only: one attributor per checkpoint
    total = None
    for k, state in enumerate(ckpts):
        t0 = time.perf_counter()
        if a.method == "logra":
            s = _logra(a, ex, state, dev, tmp / f"logra-{k}")
        else:
            s = _rps(a, ex, state, dev)
        total = s if total is None else total + s
        log(f"{a.method}: checkpoint {k + 1}/{K} in {time.perf_counter() - t0:.1f} s")
    return total / K, (K if a.method == "rps" else 0)


def _attribute_memo(att, train, ex: dict, a):
    memo_test_side(att)
    return att.attribute(train, indexed_loader(ex["x_test"], ex["y_test"], a.batch_size))


def _fresh_model(ex: dict, device):
    from simattr.models import torch_module

    m = torch_module(ex["recipe"], ex["input_shape"], ex["n_classes"]).to(device).eval()
    for p in m.parameters():
        p.requires_grad_(True)
    return m


def _logra(a, ex: dict, state: dict, dev: str, cache_dir: Path):
    import torch
    import torch.nn.functional as F
    from dattri.algorithm import LoGraAttributor
    from dattri.task import AttributionTask
    from torch import nn

    model = _fresh_model(ex, torch.device(dev))
    if not any(isinstance(m, nn.Linear) for m in model.modules()):
        raise Refusal(f"logra: {ex['recipe'].name} has no nn.Linear layer (dattri's LoGra hooks only those)")

    def train_loss(model_, batch, device):
        # the batch mean, as dattri's test gradients (F.cross_entropy): its compressor multiplies each example's
        # output gradient by the batch's size, which makes it the example's own loss gradient
        x, y = batch
        return F.cross_entropy(model_(x.to(device)), y.to(device))

    task = AttributionTask(loss_func=train_loss, model=model, checkpoints=state)
    cache_dir.mkdir(parents=True, exist_ok=True)   # dattri writes batch_metadata.json there (default: the cwd)
    att = LoGraAttributor(task=task, device=dev, proj_dim=a.proj_dim, damping=a.damping, offload="none",
                          cache_dir=str(cache_dir))
    att.sparsifier_kwargs["proj_seed"] = a.seed
    att.sparsifier_kwargs["device"] = att.projector_kwargs["device"] = dev      # the script's device (CUDA if any)
    # dattri's _setup_compressors indexes the first batch twice (batch[0][0]: one unbatched example, which breaks
    # Linear's bias column and BatchNorm): set the compressors up here from a batch, as it means to
    from dattri.algorithm.block_projected_if.core.compressor import setup_model_compressors

    first = ex["x_train"][:a.batch_size].to(dev)
    att.compressors = setup_model_compressors(att.model, att.layer_names, sparsifier_kwargs=att.sparsifier_kwargs,
                                              projector_kwargs=att.projector_kwargs, sample_inputs=(first,),
                                              device=dev)
    att.cache(loader(ex["x_train"], ex["y_train"], a.batch_size))
    test = loader(ex["x_test"], ex["y_test"], a.batch_size)
    return att.attribute(loader(ex["x_train"], ex["y_train"], a.batch_size), test).float().cpu()


def _rps(a, ex: dict, state: dict, dev: str):
    import torch
    import torch.nn.functional as F
    from dattri.algorithm import RPSAttributor
    from dattri.task import AttributionTask
    from torch import nn

    model = _fresh_model(ex, torch.device(dev))
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names or "." in names[-1]:
        raise Refusal(f"rps: {ex['recipe'].name} has no top-level final nn.Linear layer (dattri's RPS needs one)")

    def soft_ce(pre_activation, probs):      # RPS refits the last layer to the model's softmax outputs
        return F.cross_entropy(pre_activation, probs)

    task = AttributionTask(loss_func=soft_ce, model=model, checkpoints=state, target_func=soft_ce)
    att = RPSAttributor(task=task, final_linear_layer_name=names[-1], l2_strength=a.l2_strength,
                        epoch=a.rps_epochs, device=dev)
    train = loader(ex["x_train"], ex["y_train"], a.batch_size)
    att.cache(train)
    return att.attribute(train, loader(ex["x_test"], ex["y_test"], a.batch_size)).detach().float().cpu()


def activations_per_example(model, input_shape: tuple, device) -> int:
    """The input's and every leaf module's output elements for one example (the forward pass's activations)."""
    import torch

    sizes = [int(torch.Size(input_shape).numel())]
    hooks = [m.register_forward_hook(lambda _m, _i, o: sizes.append(o.numel()))
             for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), device=device))
    finally:
        for h in hooks:
            h.remove()
    return sum(sizes)


def check_size(a, ex: dict, P: int, device) -> None:
    """Refuse, before any work, a method whose memory cannot fit: if-explicit's P x P Hessian (float32, and as
    much again for torch.linalg.solve) and torch.func.hessian's forward-over-reverse pass, which carries P tangents
    through the Hessian batch's activations (about 2.5 x 4 bytes x P x batch x activations per example: 4.2 GB
    measured, 4.8 GB estimated, for the digits test MLP, P = 2,410, 1437 images)."""
    if a.method != "if-explicit":
        return
    have = available_bytes(device)
    hessian = 2 * 4 * P * P
    per_example = 2.5 * 4 * P * activations_per_example(ex["model"], ex["input_shape"], device)
    nb = a.hessian_batch_size or len(ex["y_train"])
    what = f"if-explicit on {ex['recipe'].name} (P = {P:,} parameters)"
    if hessian + 2 * per_example > 0.8 * have:
        raise Refusal(f"{what} needs the P x P Hessian: {gb(hessian)} in float32 with its solve, more than the "
                      f"{gb(have)} free on {device.type}; use if-cg, logra or trak instead")
    if hessian + nb * per_example > 0.8 * have:
        fit = max(1, int((0.8 * have - hessian) // per_example))
        raise Refusal(f"{what} needs about {gb(hessian + nb * per_example)} for the Hessian of {nb} training images "
                      f"at once, more than the {gb(have)} free on {device.type}; use --hessian-batch-size {fit} "
                      f"or less, or if-cg")


def write_atomic(path: Path, data: bytes) -> None:
    """`data` as `path`: written under a temporary name in the same folder, then renamed into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str]) -> int:
    try:
        return _main(argv)
    except Refusal as e:
        log(str(e).splitlines()[0] if str(e) else "failed")
        return 2


def _main(argv: list[str]) -> int:
    t0 = time.perf_counter()
    a = parse(argv)
    export, out = Path(a.export), Path(a.out)
    os.environ.setdefault("TQDM_DISABLE", "1")        # dattri's progress bars
    try:
        import dattri  # noqa: F401
    except ImportError:
        raise Refusal("dattri not installed: pip install -e '.[peers]'") from None
    import torch

    from simattr.accel import default_device
    from simattr.errors import SimattrError

    try:
        device = default_device()
        ex = load_export(export, device, a.only_sampled)
    except SimattrError as e:
        raise Refusal(str(e)) from None
    torch.manual_seed(a.seed)
    model = ex["model"]
    P = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_train, n_test = len(ex["y_train"]), len(ex["y_test"])
    check_size(a, ex, P, device)
    log(f"{a.method} on {ex['recipe'].name} (P = {P:,} parameters), {n_train} train x {n_test} test, "
        f"{len(ex['checkpoints'])} checkpoints, {device}; loaded in {time.perf_counter() - t0:.1f} s")
    out.parent.mkdir(parents=True, exist_ok=True)
    t1 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f".{out.stem}-dattri-", dir=out.parent) as tmp:
        try:
            scores, trained = run_method(a, ex, device, Path(tmp))
        except (torch.cuda.OutOfMemoryError, MemoryError) as e:
            raise Refusal(f"{a.method}: out of memory on {device.type} (P = {P:,}, {n_train} train): "
                          f"{str(e).splitlines()[0] if str(e) else 'MemoryError'}") from None
    log(f"{a.method}: attributed in {time.perf_counter() - t1:.1f} s")
    scores = (SIGN[a.method] * scores.detach().to("cpu", torch.float32)).contiguous()
    if tuple(scores.shape) != (n_train, n_test):
        raise Refusal(f"{a.method}: dattri returned shape {tuple(scores.shape)}, expected {(n_train, n_test)}")
    bad = int((~torch.isfinite(scores)).sum())
    if bad:
        raise Refusal(f"{a.method}: {bad} of {scores.numel()} scores are NaN or inf; nothing written (try a larger "
                      f"--regularization / --damping)")
    cost_path = out.parent / f"{out.stem}.cost.json"
    cost_path.unlink(missing_ok=True)                 # a scores file without its cost file is an unfinished run
    if ex["index"] is not None:
        write_atomic(out.parent / f"{out.stem}.index.txt", "".join(f"{int(i)}\n" for i in ex["index"]).encode())
    buf = io.BytesIO()          # not saved to the file itself: torch.save names the archive after the file
    torch.save(scores, buf)
    write_atomic(out, buf.getvalue())
    wall = time.perf_counter() - t0
    cost = {"wall_s": round(wall, 3), "gpu_s": round(wall, 3) if device.type == "cuda" else 0.0,
            "models_trained": int(trained)}
    write_atomic(cost_path, (json.dumps(cost) + "\n").encode())
    log(f"{out}: {a.method} scores, {n_train} train x {n_test} test (train_by_test, higher = more supportive), "
        f"{wall:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
