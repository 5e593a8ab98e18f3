"""Scores of an outside method (simattr.external): every format and layout read to the same matrix, and every bad
input one line naming the file."""
import json
import pickle

import h5py
import numpy as np
import pytest
import torch

from simattr import external
from simattr.errors import SimattrError

N_TEST, N_TRAIN = 4, 6
S = np.arange(N_TEST * N_TRAIN, dtype=np.float32).reshape(N_TEST, N_TRAIN) / 7


def _write(path, array, key="scores"):
    if path.suffix == ".npy":
        np.save(path, array)
    elif path.suffix == ".pt":
        torch.save(torch.as_tensor(array), path)
    else:
        with h5py.File(path, "w") as f:
            f.create_dataset(key, data=array)
    return path


@pytest.mark.parametrize("suffix", [".npy", ".pt", ".h5", ".hdf5"])
@pytest.mark.parametrize("layout", ["test_by_train", "train_by_test"])
def test_every_format_and_layout_reads_to_test_by_train(tmp_path, suffix, layout):
    f = _write(tmp_path / f"s{suffix}", S if layout == "test_by_train" else S.T)
    for given in (None, layout):                     # detected from the (non-square) shape, or given
        got, tests = external.read_scores(f, n_test=N_TEST, n_train=N_TRAIN, layout=given)
        np.testing.assert_array_equal(got, S.astype(np.float64))
        np.testing.assert_array_equal(tests, np.arange(N_TEST))


def test_sign_flips_and_an_index_names_the_rows(tmp_path):
    f = _write(tmp_path / "s.npy", S[[3, 1]])
    idx = tmp_path / "rows.txt"
    idx.write_text("3\n1\n")
    got, tests = external.read_scores(f, n_test=N_TEST, n_train=N_TRAIN, sign=-1, index=idx)
    np.testing.assert_array_equal(got, -S[[3, 1]].astype(np.float64))
    assert tests.tolist() == [3, 1]
    np.save(tmp_path / "rows.npy", np.array([3, 1]))
    assert external.read_scores(f, n_test=N_TEST, n_train=N_TRAIN, index=tmp_path / "rows.npy")[1].tolist() == [3, 1]


def test_an_h5_file_with_several_datasets_needs_a_key(tmp_path):
    f = tmp_path / "s.h5"
    with h5py.File(f, "w") as h:
        h["a"], h["b"] = S, S * 2
    with pytest.raises(SimattrError, match=r"holds 2 datasets \(a, b\); name the scores with `key`"):
        external.read_scores(f, n_test=N_TEST, n_train=N_TRAIN)
    np.testing.assert_array_equal(external.read_scores(f, n_test=N_TEST, n_train=N_TRAIN, key="b")[0], S * 2.0)
    with pytest.raises(SimattrError, match=r"no dataset 'c' \(datasets: a, b\)"):
        external.read_scores(f, n_test=N_TEST, n_train=N_TRAIN, key="c")


def test_the_content_hash_changes_with_the_file(tmp_path):
    f = _write(tmp_path / "s.npy", S)
    h = external.content_hash(f)
    assert h == external.content_hash(f) and len(h) == 64
    _write(f, S + 1)
    assert external.content_hash(f) != h


def one_line(exc) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_bad_inputs_are_one_line_naming_the_file(tmp_path):
    def fails(f, match, **kw):
        with pytest.raises(SimattrError) as e:
            external.read_scores(f, **{"n_test": N_TEST, "n_train": N_TRAIN, **kw})
        msg = one_line(e)
        assert msg.startswith(str(f)) and match in msg, msg

    fails(tmp_path / "absent.npy", "scores file not found")
    fails(tmp_path / "s.csv", "unknown scores format '.csv'")
    fails(_write(tmp_path / "wrong.npy", S[:, :5]), "shape (4, 5), expected (4, 6) (test_by_train) or (6, 4) "
          "(train_by_test)")
    fails(_write(tmp_path / "given.npy", S.T), "shape (6, 4), expected (4, 6) for layout test_by_train",
          layout="test_by_train")
    square = _write(tmp_path / "square.npy", np.zeros((4, 4), np.float32))
    fails(square, "square 4 x 4 matrix could be either layout", n_train=4)
    with_nan = S.copy()
    with_nan[0, 0], with_nan[1, 2], with_nan[2, 3] = np.nan, np.inf, -np.inf
    fails(_write(tmp_path / "nan.npy", with_nan), "3 score(s) are NaN or infinite (of 24)")
    fails(_write(tmp_path / "int.npy", S.astype(np.int64)), "scores must be real floats, got dtype int64")
    fails(_write(tmp_path / "bool.npy", S > 1), "got dtype bool")
    fails(_write(tmp_path / "complex.npy", S.astype(np.complex64)), "got dtype complex64")
    fails(_write(tmp_path / "complex.pt", S.astype(np.complex64)), "got dtype torch.complex64")
    torch.save({"scores": torch.as_tensor(S)}, tmp_path / "dict.pt")
    fails(tmp_path / "dict.pt", "expected a tensor (torch.save(scores, path)), got dict")
    (tmp_path / "pickle.pt").write_bytes(pickle.dumps(external.SimattrError("not a tensor"), protocol=2))
    fails(tmp_path / "pickle.pt", "not loadable with torch.load(weights_only=True)")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    fails(tmp_path / "objects.npy", "not a plain numeric .npy array")
    fails(_write(tmp_path / "ok.npy", S), "unknown layout 'rows'", layout="rows")
    fails(tmp_path / "ok.npy", "sign must be 1 or -1", sign=2)


def test_bad_index_files_are_one_line_naming_them(tmp_path):
    f = _write(tmp_path / "s.npy", S[:2])

    def fails(content, match):
        idx = tmp_path / "idx.txt"
        idx.write_text(content)
        with pytest.raises(SimattrError) as e:
            external.read_scores(f, n_test=N_TEST, n_train=N_TRAIN, index=idx)
        msg = one_line(e)
        assert msg.startswith(str(idx)) and match in msg, msg

    fails("1\n1\n", "1 test index(es) appear more than once (first: 1)")
    fails("0\n9\n", "1 index entry is outside the 4 test images (first: 9)")
    fails("0\n-1\n", "outside the 4 test images (first: -1)")
    fails("0\n1.5\n", "expected a list of whole numbers")
    fails("zero\none\n", "expected whole numbers")
    with pytest.raises(SimattrError, match="index file not found"):
        external.read_scores(f, n_test=N_TEST, n_train=N_TRAIN, index=tmp_path / "none.txt")


def _digits_score_job(tmp_path, scores, *, index=None, class_conditioned=True, sign=1, cls=3, **entry):
    """score_external_class for digits (default split: 1,437 train / 360 test images) on a scores file."""
    from simattr import scoring, store
    from simattr.datasets import Spec

    f = _write(tmp_path / "m.npy", scores)
    e = {"name": "m", "path": str(f), "sign": sign, **entry}
    if index is not None:
        np.savetxt(tmp_path / "rows.txt", index, fmt="%d")
        e["index"] = str(tmp_path / "rows.txt")
    out = tmp_path / f"class-{cls}.h5"
    scoring.score_external_class(data=Spec.of(), name="m", cls=cls, scores_path=str(f), index_path=e.get("index"),
                                 class_conditioned=class_conditioned, topk=5, source=external.source(e),
                                 out=str(out))
    return store.read_scores(out, extras=True)


def test_a_score_job_takes_its_class_rows_and_candidates_and_every_training_image_signed(tmp_path):
    from simattr.datasets import load_split

    tr_y, te_y = load_split("digits", "train").labels, load_split("digits", "test").labels
    rng = np.random.default_rng(0)
    full = rng.standard_normal((len(te_y), len(tr_y))).astype(np.float32)
    sc = _digits_score_job(tmp_path, full.T, sign=-1)                       # dattri's train_by_test, flipped
    q = np.flatnonzero(te_y == 3)
    assert sc["test_indices"].tolist() == q.tolist()
    assert sc["train_indices"].tolist() == np.flatnonzero(tr_y == 3).tolist()
    np.testing.assert_array_equal(sc["full_scores"], -full[q])
    np.testing.assert_array_equal(sc["scores"], -full[q][:, tr_y == 3])
    assert sc["topk"][0].tolist() == sc["train_indices"][np.argsort(full[q[0]][tr_y == 3])[:5]].tolist()
    assert sc["attrs"]["encoder"] == "external" and sc["attrs"]["ranker"] == "m"
    assert sc["attrs"]["source_sha256"] == external.content_hash(tmp_path / "m.npy")
    every = _digits_score_job(tmp_path, full, class_conditioned=False)
    assert every["train_indices"].tolist() == list(range(len(tr_y)))
    # rows of some test images only (the index file, in any order): the class's rows, in index order
    some = np.array([q[4], 7, q[1]])
    sc = _digits_score_job(tmp_path, full[some], index=some)
    assert sc["test_indices"].tolist() == [q[1], q[4]]
    np.testing.assert_array_equal(sc["full_scores"], full[[q[1], q[4]]])


def test_a_score_job_refuses_a_file_changed_since_the_workflow_read_it(tmp_path):
    from simattr import scoring
    from simattr.datasets import Spec

    f = _write(tmp_path / "m.npy", np.zeros((360, 1437), np.float32))
    source = external.source({"name": "m", "path": str(f)})
    np.save(f, np.ones((360, 1437), np.float32))
    with pytest.raises(SimattrError, match="m.npy: changed since the workflow read it"):
        scoring.score_external_class(data=Spec.of(), name="m", cls=0, scores_path=str(f), index_path=None,
                                     class_conditioned=True, topk=5, source=source, out=str(tmp_path / "o.h5"))
    assert not (tmp_path / "o.h5").exists()
    with pytest.raises(SimattrError, match=r"m.npy: shape \(1437, 1437\), expected \(360, 1437\)"):
        _digits_score_job(tmp_path, np.zeros((1437, 1437), np.float32), layout="test_by_train")


def test_a_method_the_workflow_makes_is_its_command_not_a_files_hash(tmp_path):
    """A method entry with a `command` (rule outside_scores makes its file from the export): its identity needs no
    file when the workflow is read, a new command is a new identity, and its score job reads whatever the rule
    made, recording that file's hash."""
    e = {"name": "m", "path": str(tmp_path / "m.npy"), "command": "python examples/dattri_scores.py --method trak"}
    s = external.source(e)
    assert s["sha256"] is None and s["command"] == e["command"] and set(s) == set(external.SOURCE_KEYS)
    assert external.source({**e, "command": e["command"] + " --proj-dim 64"}) != s
    assert external.source({"name": "m", "path": _write(tmp_path / "f.npy", np.zeros((2, 3))).as_posix()})[
        "command"] is None
    full = np.random.default_rng(1).standard_normal((1437, 360)).astype(np.float32)   # dattri's train_by_test
    sc = _digits_score_job(tmp_path, full, command=e["command"])
    assert sc["attrs"]["source_sha256"] == external.content_hash(tmp_path / "m.npy")
    assert json.loads(sc["attrs"]["settings"])["command"] == e["command"]
