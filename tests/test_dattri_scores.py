"""examples/dattri_scores.py: dattri's methods on a tiny export folder written here (the files the script reads): the
scores' shape, dtype and sign, the cost file, determinism, atomic writes and the one-line errors."""
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from simattr import models, trak

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "dattri_scores.py"
METHODS = ("if-explicit", "if-cg", "if-arnoldi", "tracin", "logra", "rps", "trak")


@pytest.fixture(scope="module")
def ds():
    spec = importlib.util.spec_from_file_location("dattri_scores", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["dattri_scores"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(autouse=True)
def eager():
    """dattri's LoGra compressor is torch.compile'd: eager here (the same numbers) spares each test the compile."""
    import torch._dynamo

    with torch._dynamo.config.patch(disable=True):
        yield


def write_export(folder: Path, recipe: models.Recipe, X_train, y_train, X_test, y_test, states: list,
                 n_classes: int, sampled) -> Path:
    """An export folder as simattr.export writes it, with only what dattri_scores reads."""
    (folder / "checkpoints").mkdir(parents=True)
    input_shape = list(X_train.shape[1:])
    for name, a in (("train_inputs", X_train), ("train_labels", y_train), ("test_inputs", X_test),
                    ("test_labels", y_test), ("sampled_test_indices", np.asarray(sampled, np.int64))):
        torch.save(torch.from_numpy(np.ascontiguousarray(a)), folder / f"{name}.pt")
    ck = []
    for i, state in enumerate(states):
        torch.save(state, folder / "checkpoints" / f"model-{i}.pt")
        ck.append({"file": f"checkpoints/model-{i}.pt", "seed": i})
    (folder / "recipe.json").write_text(json.dumps({"recipe": recipe.identity(), "input_shape": input_shape,
                                                    "n_classes": n_classes}))
    (folder / "manifest.json").write_text(json.dumps({"export_format": 1, "n_train": len(y_train),
                                                      "n_test": len(y_test), "n_classes": n_classes,
                                                      "recipe": recipe.identity(), "input_shape": input_shape,
                                                      "checkpoints": ck}))
    return folder


@pytest.fixture(scope="module")
def mlp_export(tmp_path_factory):
    """Separable Gaussian blobs (4 classes, 16 standardised features), 160 train / 32 test, four trained MLPs."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4, 16)) * 1.5
    y = rng.integers(0, 4, 192)
    X = (centres[y] + rng.standard_normal((192, 16))).astype(np.float32)
    Xtr, Xte = models.standardise(X[:160], X[160:])
    recipe = models.Recipe.of(hidden=16, steps=100)
    states = trak.train_checkpoints(recipe=recipe, X_train=Xtr, y_train=y[:160], n_classes=4, seeds=[0, 1, 2, 3])
    return write_export(tmp_path_factory.mktemp("mlp") / "export", recipe, Xtr, y[:160].astype(np.int64), Xte,
                        y[160:].astype(np.int64), states, 4, [3, 0, 17])


@pytest.fixture(scope="module")
def resnet9_export(tmp_path_factory):
    """ResNet-9 (P = 6.6M whatever the image size), 8 train / 2 test random 3 x 8 x 8 float16 images (as the
    export stores them), two randomly initialised checkpoints."""
    rng = np.random.default_rng(0)
    recipe = models.Recipe.of(name="resnet9", epochs=1, batch_size=16)
    X = rng.standard_normal((10, 3, 8, 8)).astype(np.float16)
    y = rng.integers(0, 3, 10).astype(np.int64)
    states = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        net = models.torch_module(recipe, (3, 8, 8), 3)
        states.append({k: v.clone() for k, v in net.state_dict().items()})
    return write_export(tmp_path_factory.mktemp("r9") / "export", recipe, X[:8], y[:8], X[8:], y[8:], states, 3,
                        [1])


def run(ds, export, out, *args):
    return ds.main([str(export), str(out), *map(str, args)])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dattri_scores: "), err
    assert "Traceback" not in err[0]
    return err[0]


FAST = {"if-cg": ["--max-iter", 5], "if-arnoldi": ["--max-iter", 40, "--proj-dim", 30], "rps": ["--rps-epochs", 300], "logra": ["--proj-dim", 64],
        "trak": ["--proj-dim", 32]}


@pytest.mark.parametrize("method", METHODS)
def test_every_method_scores_every_pair_higher_for_the_test_images_class(ds, mlp_export, tmp_path, method):
    out = tmp_path / "s.pt"
    assert run(ds, mlp_export, out, "--method", method, *FAST.get(method, [])) == 0
    s = torch.load(out, weights_only=True)
    assert s.dtype == torch.float32 and tuple(s.shape) == (160, 32) and torch.isfinite(s).all()
    s = s.numpy().T
    ytr = torch.load(mlp_export / "train_labels.pt").numpy()
    yte = torch.load(mlp_export / "test_labels.pt").numpy()
    same = ytr[None] == yte[:, None]
    mean_same = (s * same).sum(1) / same.sum(1)
    mean_other = (s * ~same).sum(1) / (~same).sum(1)
    assert (mean_same > mean_other).mean() >= 0.8, method            # the sign: higher = more supportive
    top = np.argsort(-s, axis=1, kind="stable")[:, :8]
    assert (ytr[top] == yte[:, None]).mean() > 0.5, method           # chance: 0.25
    cost = json.loads((tmp_path / "s.cost.json").read_text())
    assert set(cost) == {"wall_s", "gpu_s", "models_trained"} and cost["wall_s"] > 0 and cost["gpu_s"] == 0
    assert cost["models_trained"] == (4 if method == "rps" else 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.cost.json", "s.pt"]      # no temporaries left


@pytest.mark.parametrize("method", ["trak", "logra"])
def test_the_same_flags_give_the_same_bytes(ds, mlp_export, tmp_path, method):
    for name in ("a", "b"):
        assert run(ds, mlp_export, tmp_path / f"{name}.pt", "--method", method, *FAST[method]) == 0
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    assert run(ds, mlp_export, tmp_path / "c.pt", "--method", method, *FAST[method], "--seed", 1) == 0
    assert not torch.equal(torch.load(tmp_path / "a.pt"), torch.load(tmp_path / "c.pt"))   # the seed is used


def test_only_sampled_scores_the_sampled_test_images_and_lists_them(ds, mlp_export, tmp_path):
    assert run(ds, mlp_export, tmp_path / "all.pt", "--method", "tracin") == 0
    assert run(ds, mlp_export, tmp_path / "some.pt", "--method", "tracin", "--only-sampled") == 0
    some = torch.load(tmp_path / "some.pt")
    assert tuple(some.shape) == (160, 3)
    assert (tmp_path / "some.index.txt").read_text() == "3\n0\n17\n"
    torch.testing.assert_close(some, torch.load(tmp_path / "all.pt")[:, [3, 0, 17]])


def test_non_finite_scores_write_nothing(ds, mlp_export, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(ds, "run_method", lambda *a: (torch.full((160, 32), float("nan")), 0))
    assert run(ds, mlp_export, tmp_path / "s.pt", "--method", "tracin") == 2
    assert "NaN or inf" in capsys.readouterr().err.strip().splitlines()[-1]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("dies_at", [1, 2])
def test_a_run_that_dies_while_writing_leaves_no_file_that_looks_complete(ds, mlp_export, tmp_path, monkeypatch,
                                                                          dies_at):
    (tmp_path / "s.cost.json").write_text("{}")             # an earlier run's, for other flags
    calls, replace = [], ds.os.replace

    def dies(src, dst):
        calls.append(dst)
        if len(calls) == dies_at:                            # renaming the scores (1) or the cost file (2)
            raise KeyboardInterrupt
        replace(src, dst)

    monkeypatch.setattr(ds.os, "replace", dies)
    with pytest.raises(KeyboardInterrupt):
        run(ds, mlp_export, tmp_path / "s.pt", "--method", "tracin")
    assert [p.name for p in tmp_path.iterdir()] == ([] if dies_at == 1 else ["s.pt"])   # never a cost file


def test_bad_inputs_are_one_line_and_exit_2(ds, mlp_export, tmp_path, capsys):
    out = tmp_path / "s.pt"
    assert run(ds, mlp_export, out, "--method", "kronfluence") == 2
    assert "unknown method 'kronfluence'" in one_line_error(capsys)
    assert run(ds, tmp_path / "nowhere", out, "--method", "tracin") == 2
    assert "nowhere: export folder not found" in one_line_error(capsys)
    assert run(ds, mlp_export, out, "--method", "logra", "--proj-dim", 50) == 2
    assert "perfect square" in one_line_error(capsys)
    assert run(ds, mlp_export, out) == 2
    assert "--method" in one_line_error(capsys)
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in mlp_export.iterdir():
        if f.name != "train_inputs.pt":
            (broken / f.name).symlink_to(f)
    assert run(ds, broken, out, "--method", "tracin") == 2
    assert "train_inputs.pt: not found" in one_line_error(capsys)
    assert not out.exists()


def test_explicit_if_on_resnet9_is_refused_before_any_work_with_the_memory_it_needs(ds, resnet9_export, tmp_path,
                                                                                     capsys):
    assert run(ds, resnet9_export, tmp_path / "s.pt", "--method", "if-explicit") == 2
    msg = one_line_error(capsys)
    P = sum(p.numel() for p in models.torch_module(models.Recipe.of(name="resnet9"), (3, 8, 8), 3).parameters())
    assert f"P = {P:,} parameters" in msg and " TB " in msg and "use if-cg" in msg, msg
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("method,args", [("tracin", []), ("trak", ["--proj-dim", 8]),
                                         ("if-cg", ["--max-iter", 1]), ("logra", ["--proj-dim", 16]),
                                         ("if-arnoldi", ["--max-iter", 4, "--proj-dim", 3,
                                                         "--hessian-batch-size", 4]),
                                         ("rps", ["--rps-epochs", 20])])
def test_resnet9_in_eval_mode_gives_finite_scores_of_the_right_shape(ds, resnet9_export, tmp_path, method, args):
    out = tmp_path / "s.pt"
    assert run(ds, resnet9_export, out, "--method", method, "--batch-size", 8, *args) == 0
    s = torch.load(out)
    assert s.dtype == torch.float32 and tuple(s.shape) == (8, 2) and torch.isfinite(s).all()
    assert s.abs().sum() > 0


def test_arnoldi_chunks_give_the_same_hessian_and_a_subset_another(ds, mlp_export, tmp_path):
    """--hessian-batch-size sums the Hessian-vector product over chunks (the same product), --precompute-ratio
    takes a seeded subset of the training images (another Hessian)."""
    args = ["--method", "if-arnoldi", "--max-iter", 40, "--proj-dim", 30]
    assert run(ds, mlp_export, tmp_path / "one.pt", *args) == 0
    assert run(ds, mlp_export, tmp_path / "chunks.pt", *args, "--hessian-batch-size", 48) == 0
    one, chunks = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "chunks.pt")
    assert torch.corrcoef(torch.stack([one.flatten(), chunks.flatten()]))[0, 1] > 0.999
    assert run(ds, mlp_export, tmp_path / "half.pt", *args, "--precompute-ratio", 0.5) == 0
    assert not torch.equal(one, torch.load(tmp_path / "half.pt"))


def test_arnoldi_keeps_its_krylov_basis_orthonormal_and_its_eigenvalues_positive(ds):
    """dattri's single Gram-Schmidt pass loses orthogonality (spurious near-zero eigenvalues); the script's
    iteration keeps it, and the eigenvalues it keeps are H's."""
    g = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(300, 300, generator=g))
    H = Q @ torch.diag(torch.logspace(-3, 0, 300)) @ Q.T
    appr, basis = ds._arnoldi_iter_reorthogonalized(lambda v: H @ v, torch.rand(300, generator=g), 120, 1.0, 1e-7)
    assert (basis @ basis.T - torch.eye(len(basis))).abs().max() < 1e-4
    ritz = torch.linalg.eigvalsh(0.5 * (torch.tril(appr[:-1], 1) + torch.tril(appr[:-1], 1).T))
    assert ritz.min() > 1e-3 * 0.99 and abs(float(ritz.max()) - 1.0) < 1e-4


def test_one_shared_projector_gives_dattris_projections(ds, mlp_export, tmp_path, monkeypatch):
    """tracin and trak with one projector for every batch (shared_projector) give the bytes of dattri's projector
    per batch."""
    import contextlib

    for method in ("tracin", "trak"):
        assert run(ds, mlp_export, tmp_path / "shared.pt", "--method", method, "--proj-dim", 16) == 0
        with monkeypatch.context() as m:
            m.setattr(ds, "shared_projector", lambda *a: contextlib.nullcontext())
            assert run(ds, mlp_export, tmp_path / "dattri.pt", "--method", method, "--proj-dim", 16) == 0
        assert (tmp_path / "shared.pt").read_bytes() == (tmp_path / "dattri.pt").read_bytes(), method
