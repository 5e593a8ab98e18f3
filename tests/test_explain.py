"""Attribution for images from outside the dataset (simattr.explain, `simattr explain`): a digits PNG of a test
image gets that image's stored ranking exactly and its stored answer; a CIFAR-size PNG with the tiny CIFAR
fixtures; wrong sizes and modes are converted, a non-image is one line; a results folder without a stage is one line
naming the snakemake target; the README's snippet runs."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datafiles import make_cifar_root
from simattr import config as sconfig
from simattr import datasets, embedding, queries, scoring, store
from simattr.errors import SimattrError
from simattr.explain import Attributor
from simattr.models import Recipe
from simattr.support import stage as support_stage
from simattr.support.answer import Settings as SupportSettings

REPO = Path(__file__).resolve().parents[1]
SIMCLR = {"arch": "small", "epochs": 1, "batch_size": 256, "lr": 0.002, "temperature": 0.2, "feature_dim": 16,
          "proj_dim": 8}


def digits_png(path: Path, raw: np.ndarray, scale: int = 1, mode: str = "L") -> Path:
    """A digits image (1, 8, 8) on its 0-16 scale as an 8-bit PNG (grey 0-255), `scale` times larger."""
    grey = np.round(raw[0] * 16 * 255 / 16).astype(np.uint8).repeat(scale, 0).repeat(scale, 1)
    Image.fromarray(grey, "L").convert(mode).save(path)
    return path


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """What a finished digits workflow leaves for method simclr/esvm (the schema's defaults but a 1-epoch SimCLR):
    the encoder state, the embeddings, queries.h5, the class score file and a removal answer of one sampled test
    image. (root, that test image)."""
    wd = tmp_path_factory.mktemp("explain")
    root = wd / "results"
    c = sconfig.defaults()
    data = datasets.Spec.from_config(c["dataset"])
    p = lambda t, **kw: root / store.fill(t, dataset="digits", **kw)  # noqa: E731
    embedding.train_encoder(data=data, encoder="simclr", params=SIMCLR, seed=0,
                            out=str(p(store.ENCODER_STATE, encoder="simclr")), progress=False)
    for split in datasets.SPLITS:
        embedding.embed(data=data, encoder="simclr", split=split, shard_size=0, batch_size=256, float16=False,
                        workers=0, out_dir=str(p(store.EMBED_DIR, encoder="simclr", split=split)),
                        state_path=str(p(store.ENCODER_STATE, encoder="simclr")), progress=False)
    recipe = Recipe.from_config(c["model"])
    qpath = p(store.QUERIES)
    queries.prepare_queries(data=data, n_test=2, sample_seed=0, flip_models=2, recipe=recipe, out_path=str(qpath))
    q = queries.load_queries(str(qpath))
    t, y = int(q["arrays"]["test_indices"][0]), int(q["arrays"]["y_query"][0])
    sc = p(store.SCORES, encoder="simclr", ranker="esvm", cls=y)
    scoring.score_class(data=data, encoder="simclr", ranker="esvm", cls=y, class_conditioned=True, topk=16,
                        train_index=str(p(store.EMBED_INDEX, encoder="simclr", split="train")),
                        test_index=str(p(store.EMBED_INDEX, encoder="simclr", split="test")),
                        ranker_settings=sconfig.ranker_settings(c, "esvm"), out=str(sc), progress=False)
    s = {**c["support"], **c["support"]["removal"], "k_max": 16, "seeds_max": 3, "max_models": 8,
         "dataset": "digits", "encoder": "simclr", "ranker": "esvm", "model": recipe.identity()}
    support_stage.answer(queries_path=str(qpath), scores_path=str(sc), test_index=t, metric="removal",
                         settings=SupportSettings.from_config(s),
                         out_path=str(store.answer_path(p(store.SUPPORT_DIR, encoder="simclr", ranker="esvm",
                                                          metric="removal"), t)))
    return root, t


def test_a_digits_png_of_a_test_image_gets_its_stored_ranking_and_answer(results, tmp_path):
    root, t = results
    te = datasets.load_split("digits", "test")
    png = digits_png(tmp_path / "mine.png", te.load_raw([t])[0])
    att = Attributor.from_results(root, method="simclr/esvm")
    (rec,) = att.explain([png], k=12)
    stored = store.read_scores(root / "digits" / "scores" / "simclr" / "esvm" / f"class-{te.labels[t]}.h5")
    row = list(stored["test_indices"]).index(t)
    ranking = stored["train_indices"][np.argsort(-stored["scores"][row], kind="stable")]
    assert [x["train_index"] for x in rec["top"]] == ranking[:12].tolist()
    assert rec["label"] == te.labels[t] and rec["label_source"] == "predicted" and rec["probability"] > 0.5
    assert rec["test_index"] == t
    answer = att.support(t)
    assert rec["answers"]["removal"]["support"] == answer["support"] and answer["curve"]
    given = att.explain([png], k=3, label=str((te.labels[t] + 1) % 10))[0]      # another class, by name
    assert given["label_source"] == "given" and {x["class"] for x in given["top"]} == {(te.labels[t] + 1) % 10}
    fig = att.figure(rec)
    assert sum(1 for ax in fig.axes if ax.images) == 13                       # the image and its top-12
    df = att.explain([png, png], k=4, as_frame=True)                           # pandas: one row per image and rank
    assert len(df) == 8 and df["train_index"].tolist()[:4] == ranking[:4].tolist()
    assert df["rank"].tolist() == [1, 2, 3, 4] * 2 and set(df["test_index"]) == {t}
    # the command: NAME.png and NAME.json in --out, the stored answer printed
    r = subprocess.run([sys.executable, "-m", "simattr.cli", "explain", str(png), "--results", str(root),
                        "--k", "5", "--out", str(tmp_path / "out")], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"it is test image {t} of the dataset: stored answers: removal support" in r.stdout
    got = json.loads((tmp_path / "out" / "mine.json").read_text())
    assert [x["train_index"] for x in got["top"]] == ranking[:5].tolist()
    with Image.open(tmp_path / "out" / "mine.png") as im:
        assert im.size[0] > im.size[1] > 50


def test_wrong_sizes_and_modes_are_converted_and_a_non_image_is_one_line(tmp_path):
    spec = datasets.Spec.of()
    raw = datasets.load_split(spec, "test").load_raw([7])[0]
    assert np.array_equal(datasets.read_image(spec, digits_png(tmp_path / "a.png", raw)), raw)
    assert np.array_equal(datasets.read_image(spec, digits_png(tmp_path / "big.png", raw, scale=4)), raw)
    assert np.array_equal(datasets.read_image(spec, digits_png(tmp_path / "rgba.png", raw, mode="RGBA")), raw)
    sixteen = np.round(raw[0] * 16 * 255 / 16).astype(np.uint16) * 257
    Image.fromarray(sixteen).save(tmp_path / "deep.png")                       # a 16-bit grey PNG
    with Image.open(tmp_path / "deep.png") as im:
        assert im.mode.startswith("I")
    assert np.array_equal(datasets.read_image(spec, tmp_path / "deep.png"), raw)
    Image.fromarray(np.full((20, 30, 4), 90, np.uint8), "CMYK").save(tmp_path / "cmyk.jpg")
    got = datasets.read_image(spec, tmp_path / "cmyk.jpg")
    assert got.shape == (1, 8, 8) and np.array_equal(got * 16, np.round(got * 16))
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(SimattrError, match=r"notes.png: cannot decode the image .*expected a PNG, JPEG"):
        datasets.read_image(spec, tmp_path / "notes.png")
    with pytest.raises(SimattrError, match="gone.png: image file not found"):
        datasets.read_image(spec, tmp_path / "gone.png")


def test_a_cifar_size_png_with_the_tiny_cifar_fixtures(tmp_path):
    root = make_cifar_root(tmp_path / "cifar", per_batch=8, n_test=12)
    c = {"dataset": {"name": "cifar10", "root": str(root)}, "model": {"hidden": 8, "steps": 20},
         "results": str(tmp_path / "results")}
    spec = datasets.Spec.from_config(sconfig.validate(c)["dataset"])
    for split in datasets.SPLITS:
        embedding.embed(data=spec, encoder="pixels", split=split, shard_size=0, batch_size=64, float16=False,
                        workers=0, state_path=None, progress=False,
                        out_dir=str(tmp_path / "results" / store.fill(store.EMBED_DIR, dataset="cifar10",
                                                                       encoder="pixels", split=split)))
    te = datasets.load_split(spec, "test")
    img = te.load_raw([3])[0].transpose(1, 2, 0)
    Image.fromarray(img, "RGB").save(tmp_path / "three.png")
    Image.fromarray(img, "RGB").resize((64, 48)).convert("RGBA").save(tmp_path / "other.png")
    att = Attributor(c, "pixels/knn_l2")
    same, other = att.explain([tmp_path / "three.png", tmp_path / "other.png"], k=4)
    assert same["test_index"] == 3 and other["test_index"] is None and other["top"]
    tr_f, tr_y, _ = store.read_embeddings(tmp_path / "results" / "cifar10" / "embeddings" / "pixels" / "train" /
                                          "index.json")
    te_f, _, _ = store.read_embeddings(tmp_path / "results" / "cifar10" / "embeddings" / "pixels" / "test" /
                                       "index.json")
    cand = np.flatnonzero(tr_y == same["label"])
    want = cand[np.argsort(np.linalg.norm(tr_f[cand] - te_f[3], axis=1), kind="stable")][:4]
    assert [x["train_index"] for x in same["top"]] == want.tolist()
    assert datasets.read_image(spec, tmp_path / "other.png").shape == (3, 32, 32)


def test_a_results_folder_without_the_stage_is_one_line_naming_the_target(tmp_path):
    with pytest.raises(SimattrError, match=re.escape("run `snakemake " + str(tmp_path / "digits" / "encoders" /
                                                                           "simclr.pt") + "`")):
        Attributor.from_results(tmp_path, method="simclr/esvm")
    with pytest.raises(SimattrError, match="embeddings/pixels/train/index.json: not in the results yet; run "
                                           "`snakemake"):
        Attributor.from_results(tmp_path, method="pixels/knn_l2")
    with pytest.raises(SimattrError, match="method 'model/trak': explain ranks with a feature encoder"):
        Attributor.from_results(tmp_path, method="model/trak")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "x.png")
    r = subprocess.run([sys.executable, "-m", "simattr.cli", "explain", str(tmp_path / "x.png"), "--results",
                        str(tmp_path)], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "simclr.pt: not in the results yet" in r.stderr


def test_the_readme_snippet_runs(results, tmp_path):
    root, t = results
    code = (REPO / "README.md").read_text().split("## Attribution for your own images", 1)[1]
    code = re.search(r"```python\n(.*?)```", code, re.S).group(1)
    digits_png(tmp_path / "my_digit.png", datasets.load_split("digits", "test").load_raw([t])[0])
    os.symlink(root, tmp_path / "results")
    env = dict(os.environ, MPLBACKEND="Agg")
    r = subprocess.run([sys.executable, "-c", code + "\nprint('support', answer['support'])"], cwd=tmp_path,
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.splitlines()[-1] == f"support {support_of(root, t)}"


def support_of(root: Path, t: int):
    return json.loads((root / "digits" / "support" / "simclr" / "esvm" / "removal" / f"{t}.json").read_text())[
        "support"]
