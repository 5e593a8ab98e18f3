"""User errors reach the terminal as one line naming the file or key, exit status 2, no traceback."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def simattr(*args):
    return subprocess.run([sys.executable, "-m", "simattr", *args], capture_output=True, text=True)


def score_settings():
    from simattr import config as sconfig, settings

    return settings.as_json(settings.for_job("score", sconfig.defaults(), ranker="esvm"))


def test_missing_input_file_is_one_line_naming_it(tmp_path):
    missing = tmp_path / "nope" / "index.json"
    r = simattr("score", "--settings", score_settings(), "--encoder", "pixels", "--ranker", "esvm", "--class", "0",
                "--train-index", str(missing), "--test-index", str(missing),
                "--out", str(tmp_path / "c.h5"))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == f"simattr: error: {missing}: file not found"
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "c.h5").exists()


def test_corrupt_shard_names_the_file(tmp_path):
    import numpy as np

    from simattr import store

    store.write_embeddings(tmp_path, np.ones((4, 2), np.float32), np.zeros(4, int), shard_size=2,
                           dataset="digits", split="train", encoder="pixels", config_hash="h")
    (tmp_path / "shard-00001.h5").write_bytes(b"garbage")
    idx = tmp_path / "index.json"
    r = simattr("score", "--settings", score_settings(), "--encoder", "pixels", "--ranker", "esvm", "--class", "0",
                "--train-index", str(idx), "--test-index", str(idx), "--out", str(tmp_path / "c.h5"))
    assert r.returncode == 2 and "shard-00001.h5: not a readable HDF5 file" in r.stderr
    assert "Traceback" not in r.stderr


def test_feature_dimension_mismatch_between_train_and_test_is_named(tmp_path):
    import numpy as np

    from simattr import store

    for split, d in (("train", 3), ("test", 5)):
        store.write_embeddings(tmp_path / split, np.ones((4, d), np.float32), np.zeros(4, int), shard_size=2,
                               dataset="digits", split=split, encoder="pixels", config_hash="h")
    tr, te = tmp_path / "train" / "index.json", tmp_path / "test" / "index.json"
    r = simattr("score", "--settings", score_settings(), "--encoder", "pixels", "--ranker", "esvm", "--class", "0",
                "--train-index", str(tr), "--test-index", str(te), "--out", str(tmp_path / "c.h5"))
    assert r.returncode == 2 and f"{tr} holds 3-d features but {te} 5-d" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "c.h5").exists()


def test_unknown_dataset_lists_the_valid_ones(tmp_path):
    (tmp_path / "c.yaml").write_text("dataset: {name: mnist}\n")
    r = simattr("queries", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "q.h5"))
    assert r.returncode == 2 and "'mnist', valid values: digits" in r.stderr.strip().splitlines()[-1], r.stderr


def test_help_is_fast_and_lists_the_stages():
    r = simattr("--help")
    assert r.returncode == 0
    for stage in ("train-encoder", "embed", "score", "queries", "support", "report"):
        assert stage in r.stdout


def test_a_bad_report_manifest_is_one_line_naming_it(tmp_path):
    import json

    m = tmp_path / "inputs.json"
    cases = [("[1, 2]", "expected a JSON object"), (json.dumps({"scores": "a.h5"}), "'scores' must be a list"),
             (json.dumps({"gathers": ["g.json"], "extra": []}), "unknown keys ['extra']"),
             (json.dumps({"scores": []}), "no support gathers given"), ("{", "not valid JSON")]
    for text, expected in cases:
        m.write_text(text)
        r = simattr("report", "--config", str(REPO / "config" / "config.yaml"), "--manifest", str(m), "--out-dir", str(tmp_path / "rep"))
        assert r.returncode == 2 and expected in r.stderr.strip().splitlines()[-1], (text, r.stderr)
        assert "Traceback" not in r.stderr and not (tmp_path / "rep").exists()
