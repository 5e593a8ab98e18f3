"""Score jobs read only the rows they use (store.open_embeddings, scoring.score_class), and their score files are
those of the full read (scoring.score_class_full_read) bit for bit; scoring.peak_bytes sizes their memory."""
import h5py
import numpy as np
import pytest

from simattr import scoring, store
from simattr.datasets import Spec
from simattr.errors import SimattrError

FEATURE_RANKERS = ("esvm", "knn_l2", "knn_cos", "random", "esvm_signed")
SIZED_RANKERS = FEATURE_RANKERS + ("esvm_reference",)
SETTINGS = {"esvm": {"C": 0.1, "chunk_size": 16, "device": "cpu"},
            "esvm_signed": {"C": 0.1, "chunk_size": 16, "device": "cpu", "neighbours": 5},
            "knn_l2": {"chunk_size": 16, "device": "cpu"}, "knn_cos": {"chunk_size": 16, "device": "cpu"},
            "random": {"random_seed": 3}}


def _write_split(root, split, feats, labels, shard_size, float16):
    files = []
    for s, (a, b) in enumerate(store.shard_ranges(len(feats), shard_size)):
        files.append(root / split / store.SHARD_NAME.format(shard=s))
        store.write_shard(files[-1], feats[a:b], labels[a:b], np.arange(a, b), dataset="digits", split=split,
                          encoder="pixels", config_hash="h", float16=float16)
    store.write_index(root / split, files, n=len(feats),
                      expect={"dataset": "digits", "split": split, "encoder": "pixels", "config_hash": "h"})
    return str(root / split / store.INDEX_NAME)


def uneven_float16(root):
    """Clustered random features in float16 shards of 97 rows (the last one short), classes of very different
    sizes in shuffled order."""
    rng = np.random.default_rng(0)
    d, sizes = 24, [300, 40, 7, 150, 3]
    centres = rng.normal(size=(len(sizes), d)) * 2
    y = rng.permutation(np.repeat(np.arange(len(sizes)), sizes))
    yt = rng.permutation(np.repeat(np.arange(len(sizes)), [9, 5, 2, 6, 1]))
    f = (centres[y] + rng.normal(size=(len(y), d))).astype(np.float32)
    ft = (centres[yt] + rng.normal(size=(len(yt), d))).astype(np.float32)
    return _write_split(root, "train", f, y, 97, True), _write_split(root, "test", ft, yt, 10, True)


def digits_pixels(root):
    """The bundled digits' standardised pixels (what the pixels encoder gives), float32 shards of 400 rows."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.data.astype(np.float32)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    y = d.target.astype(np.int64)
    return (_write_split(root, "train", x[:1400], y[:1400], 400, False),
            _write_split(root, "test", x[1400:], y[1400:], 400, False))


def _file(path):
    with h5py.File(path) as f:
        return {k: f[k][()] for k in f}, {k: f.attrs[k] for k in f.attrs if k != "wall_s"}


def assert_same_file(a, b):
    (da, aa), (db, ab) = _file(a), _file(b)
    assert sorted(da) == sorted(db) and aa.keys() == ab.keys()
    for k in da:
        assert da[k].dtype == db[k].dtype and da[k].shape == db[k].shape, k
        assert da[k].tobytes() == db[k].tobytes(), k              # bit for bit, NaN and -0.0 included
    for k in aa:
        assert np.array_equal(aa[k], ab[k]), k


@pytest.mark.parametrize("make, cls", [(uneven_float16, 2), (uneven_float16, 0), (digits_pixels, 3)])
@pytest.mark.parametrize("conditioned", [True, False])
@pytest.mark.parametrize("ranker", FEATURE_RANKERS)
def test_score_files_equal_the_full_read_bit_for_bit(tmp_path, make, cls, conditioned, ranker):
    """Old (every shard read) and new (only the rows used) score files hold the same bytes in every dataset and
    attribute but wall_s, with chunks of 128 training rows and a short padded last chunk (knn, runner-up)."""
    train, test = make(tmp_path)
    kw = dict(data=Spec.of(name="digits"), encoder="pixels", ranker=ranker, cls=cls, train_index=train,
              test_index=test, class_conditioned=conditioned, topk=7, ranker_settings=SETTINGS[ranker],
              progress=False)
    scoring.score_class_full_read(out=str(tmp_path / "old.h5"), **kw)
    stats = scoring.score_class(out=str(tmp_path / "new.h5"), chunk_rows=128, **kw)
    assert_same_file(tmp_path / "old.h5", tmp_path / "new.h5")
    n_class = int((store.open_embeddings(train).labels == cls).sum())
    n_queries = int((store.open_embeddings(test).labels == cls).sum())
    if ranker == "random":
        assert stats["rows_read"] == 0
    elif conditioned and ranker != "esvm_signed":
        assert stats["rows_read"] == n_queries + n_class          # the class's rows, not the splits


def test_rows_are_read_in_the_order_asked_and_equal_the_full_read(tmp_path):
    train, _ = uneven_float16(tmp_path)
    full, labels, _ = store.read_embeddings(train)
    split = store.open_embeddings(train)
    assert np.array_equal(split.labels, labels)
    rows = np.array([5, 400, 96, 97, 0, 5, 499])
    assert split.read(rows).tobytes() == full[rows].tobytes()
    assert split.rows_read == 6 and split.bytes_read == 6 * 24 * 2      # float16 on disk, each row once
    every = np.arange(len(labels))[::-1]
    assert split.read(every).tobytes() == full[every].tobytes()


def test_scattered_rows_beyond_the_run_limit_are_read_by_blocks(tmp_path, monkeypatch):
    train, _ = uneven_float16(tmp_path)
    full, _, _ = store.read_embeddings(train)
    monkeypatch.setattr(store.h5, "MAX_RUN_READS", 2)
    monkeypatch.setattr(store.h5, "READ_BLOCK_ROWS", 16)
    rows = np.arange(0, len(full), 3)
    assert store.open_embeddings(train).read(rows).tobytes() == full[rows].tobytes()


def _rewrite_attr(path, key, value):
    with h5py.File(path, "a") as f:
        f.attrs[key] = value


@pytest.mark.parametrize("breakage, message", [
    (lambda p: _rewrite_attr(p, "config_hash", "old"), r"train/shard-00001\.h5: attribute config_hash='old' but "
                                                       r"the manifest says 'h' \(stale shard\)"),
    (lambda p: _rewrite_attr(p, "feature_dim", 5), r"train/shard-00001\.h5: features \(97, 24\), labels \(97,\), "
                                                   r"indices \(97,\) disagree with feature_dim=5"),
    (lambda p: p.write_bytes(b"not hdf5"), r"train/shard-00001\.h5: not a readable HDF5 file"),
    (lambda p: p.unlink(), r"train/shard-00001\.h5: embedding shard not found"),
])
def test_a_broken_shard_is_one_line_naming_it(tmp_path, breakage, message):
    train, test = uneven_float16(tmp_path)
    breakage(tmp_path / "train" / "shard-00001.h5")
    with pytest.raises(SimattrError, match=message) as e:
        scoring.score_class(data=Spec.of(name="digits"), encoder="pixels", ranker="knn_l2", cls=1, train_index=train,
                            test_index=test, class_conditioned=True, topk=3, ranker_settings=SETTINGS["knn_l2"],
                            out=str(tmp_path / "s.h5"), progress=False)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "s.h5").exists()


def test_nan_in_a_row_read_is_refused_with_the_file_name(tmp_path):
    train, test = uneven_float16(tmp_path)
    labels = store.open_embeddings(train).labels
    row = int(np.flatnonzero(labels == 1)[0])
    shard = row // 97
    with h5py.File(tmp_path / "train" / store.SHARD_NAME.format(shard=shard), "a") as f:
        f["features"][row - 97 * shard, 0] = np.nan
    with pytest.raises(SimattrError, match=rf"shard-0000{shard}\.h5: features contain NaN or inf"):
        scoring.score_class(data=Spec.of(name="digits"), encoder="pixels", ranker="esvm", cls=1, train_index=train,
                            test_index=test, class_conditioned=True, topk=3, ranker_settings=SETTINGS["esvm"],
                            out=str(tmp_path / "s.h5"), progress=False)


def test_train_and_test_of_other_settings_are_refused(tmp_path):
    train, test = uneven_float16(tmp_path)
    manifest = store.read_json(test)
    for sh in manifest["shards"]:
        _rewrite_attr(tmp_path / "test" / sh["file"], "config_hash", "other")
    store.write_json(test, {**manifest, "config_hash": "other"})
    with pytest.raises(SimattrError, match="come from different settings"):
        scoring.score_class(data=Spec.of(name="digits"), encoder="pixels", ranker="knn_l2", cls=1, train_index=train,
                            test_index=test, class_conditioned=True, topk=3, ranker_settings=SETTINGS["knn_l2"],
                            out=str(tmp_path / "s.h5"), progress=False)


SHAPES = dict(n_queries=50, n_candidates=1300, n_train=1_281_167, n_test=50_000, dim=2048, chunk_size=128)


@pytest.mark.parametrize("ranker", SIZED_RANKERS)
def test_peak_bytes_grows_with_every_shape(ranker):
    base = scoring.peak_bytes(ranker, **SHAPES)
    assert base > 0
    for key in ("n_queries", "n_candidates", "dim"):
        if ranker == "random" and key == "dim":
            continue                                    # random reads no feature
        assert scoring.peak_bytes(ranker, **{**SHAPES, key: SHAPES[key] * 4}) > base, key
    assert scoring.peak_bytes(ranker, **{**SHAPES, "n_train": SHAPES["n_train"] * 4}) > base


def test_peak_bytes_of_an_unconditioned_esvm_holds_every_candidate():
    """The ESVM solve needs all its candidates at once: not class-conditioned on ImageNet, that is the whole train
    split in float32 and more; knn reads it chunk by chunk."""
    every = {**SHAPES, "n_candidates": SHAPES["n_train"]}
    assert scoring.peak_bytes("esvm", **every) > SHAPES["n_train"] * SHAPES["dim"] * 4
    assert scoring.peak_bytes("knn_l2", **every) < SHAPES["n_train"] * SHAPES["dim"] * 4
    assert scoring.runtime_minutes("esvm", **SHAPES) >= 1


def test_sizing_constants_agree_with_the_solver_and_import_no_torch():
    import subprocess
    import sys

    from simattr import esvm
    assert (scoring.PRIMAL_MAX_DIM, scoring.GRAM_MAX_ENTRIES) == (esvm.PRIMAL_MAX_DIM, esvm.GRAM_MAX_ENTRIES)
    code = ("import sys; from simattr import scoring; scoring.peak_bytes('esvm_signed', n_queries=50, n_candidates=1300, "
            "n_train=10**6, n_test=5*10**4, dim=2048, chunk_size=128); scoring.runtime_minutes('esvm', n_queries=50, n_candidates=1300, "
            "n_train=10**6, n_test=5*10**4, dim=2048); print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_the_index_check_reads_no_feature(tmp_path):
    """write_index (the embed_index job) checks shapes, dtype, attributes, labels and indices from metadata: a NaN
    that got into a shard after write_shard checked it is not scanned for there, but refused by the job that
    reads the row."""
    train, test = uneven_float16(tmp_path)
    shard = tmp_path / "train" / "shard-00000.h5"
    with h5py.File(shard, "a") as f:
        f["features"][3, 0] = np.nan
    files = sorted((tmp_path / "train").glob("shard-*.h5"))
    expect = {"dataset": "digits", "split": "train", "encoder": "pixels", "config_hash": "h"}
    store.write_index(tmp_path / "train", files, n=500, expect=expect)
    with pytest.raises(SimattrError, match=r"shard-00000\.h5: features contain NaN or inf"):
        store.open_embeddings(train).read([3])
    with h5py.File(shard, "a") as f:
        del f["features"]
        f["features"] = np.zeros((97, 24), np.float64)
    with pytest.raises(SimattrError, match=r"shard-00000\.h5: features are float64, expected float16 or float32"):
        store.write_index(tmp_path / "train", files, n=500, expect=expect)


def test_job_shapes_come_from_the_manifests_or_a_safe_guess(tmp_path):
    train, test = uneven_float16(tmp_path)
    got = scoring.job_shapes(2, train, test, class_conditioned=True, chunk_size=16)
    assert got == dict(n_queries=2, n_candidates=7, n_train=500, n_test=23, dim=24, n_solve=7 + 300, n_classes=5,
                       chunk_size=16, threads=1)
    assert scoring.job_shapes(2, train, test, class_conditioned=False, chunk_size=16)["n_candidates"] == 500
    guess = scoring.job_shapes(2, str(tmp_path / "no.json"), test, class_conditioned=True, chunk_size=16,
                               guess=lambda: (1_281_167, 50_000, 1000))
    assert guess["n_candidates"] == 2 * 1282 and guess["n_queries"] == 100 and guess["dim"] == 4096
    assert scoring.job_mem_mb("esvm", guess) > scoring.job_mem_mb("esvm", got)
    with pytest.raises(SimattrError, match="no.json"):
        scoring.job_shapes(2, str(tmp_path / "no.json"), test, class_conditioned=True, chunk_size=16)
