"""The workflow end to end on the small test config, its rerun behaviour, dry runs, lint and config errors."""
from __future__ import annotations

import ast
import csv
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
TEST_CFG = REPO / "config" / "test.yaml"


def smk_cmd(*args: str, workdir: Path, configfile: Path | Sequence[Path] = TEST_CFG) -> tuple[list[str], dict]:
    """The Snakemake command line of the workflow in `workdir` with `configfile` (or several: a later one's keys
    override an earlier one's), and its environment (this Python's bin first on PATH)."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    files = [configfile] if isinstance(configfile, (str, Path)) else list(configfile)
    return [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
            "--configfile", *map(str, files), *args], env


def smk(*args: str, workdir: Path, configfile: Path | Sequence[Path] = TEST_CFG) -> subprocess.CompletedProcess:
    cmd, env = smk_cmd(*args, workdir=workdir, configfile=configfile)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=workdir)


def job_counts(out: str) -> dict[str, int]:
    """Parse the 'Job stats' table of a (dry) run."""
    counts, on = {}, False
    for line in out.splitlines():
        if line.startswith("Job stats"):
            on = True
            continue
        if on:
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit():
                if parts[0] == "total":
                    break
                counts[parts[0]] = int(parts[1])
    return counts


def local_rules() -> set[str]:
    """The workflow's local rules (`localrules:` lists and `localrule: True`; `all`): a dry run does not mark them."""
    names = {"all"}
    for f in [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]:
        text = f.read_text()
        for m in re.finditer(r"^localrules:(.*\n(?:[ \t]+\S.*\n)*)", text, re.M):
            names |= set(re.findall(r"\w+", m.group(1)))
        for m in re.finditer(r"^rule (\w+):\n((?:[ \t]+.*\n|\n)*)", text, re.M):
            if re.search(r"^\s+localrule:\s*True", m.group(2), re.M):
                names.add(m.group(1))
    return names


def slurm_submissions(dry_run: str) -> dict:
    """What a dry run through a SLURM profile would submit: `sbatch`, one per job that is not a local rule, a group
    job (profiles/slurm: `groups:`) counting once; `groups`, group jobs per group; `rules`, Snakemake jobs per
    rule (grouped and local ones included)."""
    local = local_rules()
    rules, groups, sbatch = {}, {}, 0
    for line in dry_run.splitlines():
        m = re.match(r"^\[.*\] Group job (\S+)", line)
        if m:
            groups[m.group(1)] = groups.get(m.group(1), 0) + 1
            sbatch += 1
            continue
        m = re.match(r"^(\s*)(?:local)?rule (\w+):", line)
        if m:
            rules[m.group(2)] = rules.get(m.group(2), 0) + 1
            sbatch += not m.group(1) and m.group(2) not in local     # members of a group job are indented
    return {"sbatch": sbatch, "groups": groups, "rules": rules}


def variant(tmp: Path, change) -> Path:
    cfg = yaml.safe_load(TEST_CFG.read_text())
    change(cfg)
    p = tmp / "variant.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


@pytest.fixture(scope="module")
def run(tmp_path_factory, whole_workflow):
    """config/test.yaml run whole once for the module's slow tests (conftest: whole_workflow)."""
    wd = tmp_path_factory.mktemp("workflow")
    r = smk("--cores", "2", workdir=wd)
    assert r.returncode == 0, r.stderr[-4000:]
    return wd


def summary_from_answers(answers_dir: Path) -> dict[str, str]:
    """support.csv's n_test, n_flipped and median_support recomputed from one method's answer files
    ({test_index}.json only: no journals, no replicates): the lower median of the supports with null = +inf,
    written ">{k_max}" when it is censored."""
    answers = []
    for p in sorted(answers_dir.glob("*.json")):
        if re.fullmatch(r"\d+\.json", p.name):
            answers.append(json.loads(p.read_text()))
            assert answers[-1]["test_index"] == int(p.stem), p
    assert answers, answers_dir
    supports = sorted(math.inf if a["support"] is None else int(a["support"]) for a in answers)
    median = supports[(len(supports) - 1) // 2]
    return {"n_test": str(len(answers)), "n_flipped": str(sum(math.isfinite(s) for s in supports)),
            "median_support": f">{max(a['k_max'] for a in answers)}" if math.isinf(median) else str(median)}


@pytest.mark.slow
def test_every_file_of_the_contract_with_values_in_range(run):
    cfg = yaml.safe_load(TEST_CFG.read_text())
    root = run / "results" / "digits"
    n_train = n_test = None
    for enc in {m["encoder"] for m in cfg["methods"]} - {"model"}:
        for split in ("train", "test"):
            d = root / "embeddings" / enc / split
            manifest = json.loads((d / "index.json").read_text())
            assert len(manifest["shards"]) >= 2          # shard_size 300 splits every split
            seen = 0
            for sh in manifest["shards"]:
                with h5py.File(d / sh["file"]) as f:
                    feats, labels, idx = f["features"][()], f["labels"][()], f["indices"][()]
                    assert feats.dtype == np.float32 and np.isfinite(feats).all()
                    assert labels.dtype == np.int64 and idx.dtype == np.int64
                    assert set(np.unique(labels)) <= set(range(10))
                    assert idx.tolist() == list(range(seen, seen + len(idx)))
                    assert f.attrs["feature_dim"] == feats.shape[1]
                    for key in ("dataset", "split", "encoder", "config_hash", "simattr_version"):
                        assert key in f.attrs
                    assert f.attrs["split"] == split and f.attrs["encoder"] == enc
                seen += len(idx)
            if split == "train":
                n_train = seen
            else:
                n_test = seen
    assert n_train + n_test == 1797
    for m in cfg["methods"]:
        for c in range(10):
            with h5py.File(root / "scores" / m["encoder"] / m["ranker"] / f"class-{c}.h5") as f:
                te, tr, s, top = (f[k][()] for k in ("test_indices", "train_indices", "scores", "topk"))
            assert s.shape == (len(te), len(tr)) and np.isfinite(s).all()
            assert top.shape == (len(te), min(cfg["score"]["topk"], len(tr)))
            assert set(top.ravel()) <= set(tr.tolist())
            pos = {t: i for i, t in enumerate(tr.tolist())}
            for i in range(len(te)):
                ranked = s[i, [pos[t] for t in top[i]]]
                assert np.all(np.diff(ranked) <= 0)       # best first
    queries = h5py.File(root / "support" / "queries.h5")
    sampled = queries["test_indices"][()].tolist()
    assert len(sampled) == cfg["support"]["n_test"]
    for m in cfg["methods"]:
        for metric in cfg["support"]["metrics"]:
            gather = json.loads((root / "support" / m["encoder"] / m["ranker"] / f"{metric}.json").read_text())
            assert sorted(a["test_index"] for a in gather["answers"]) == sampled
            for a in gather["answers"]:
                one = json.loads((root / "support" / m["encoder"] / m["ranker"] / metric /
                                  f"{a['test_index']}.json").read_text())
                assert one == a
                assert a["k_max"] <= cfg["support"][metric]["k_max"]
                assert a["support"] is None or 0 <= a["support"] <= a["k_max"]
                assert a["probes"][0]["k"] == a["k_max"]
                assert a["trainings"] == sum(p["n_models"] - p.get("full_data_models", 0)
                                             for p in a["probes"] + a["checks"])
                assert a["engine"] == cfg["support"]["engine"] == "adaptive" and a["seed_set"] == 0
                assert a["trainings"] <= cfg["support"]["max_models"]
                assert all(0.0 <= p["accuracy"] <= 1.0 and 1 <= p["n_models"] <= cfg["support"]["seeds_max"]
                           for p in a["probes"])
                # the support is the fitted curve's crossing, within the bracket of two probed k
                assert a["support"] == a["support_fitted"]
                curve = {p["k"]: p for p in a["curve"]}
                if a["support"] is not None and a["support"] > 0:
                    below = [k for k in curve if k < a["support"]]
                    assert curve[a["support"] if a["support"] in curve else min(k for k in curve
                                                                             if k >= a["support"])]["fitted"] <= 0.5
                    assert below and curve[max(below)]["fitted"] > 0.5
                lo, hi = a["support_ci90"]
                assert a["support"] is None or (lo <= a["support"] and (hi is None or a["support"] <= hi))
            # the replicate seed set: the same images, independent models
            assert gather["seed_sets"] == [0, 1] and len(gather["replicates"]) == cfg["support"]["replicates"] - 1
            assert [a["test_index"] for a in gather["replicates"][0]] == [a["test_index"] for a in gather["answers"]]
            assert all(a["seed_set"] == 1 for a in gather["replicates"][0])
            for a in gather["answers"]:
                if metric == "mislabel":
                    assert a["flip_class"] is not None and a["flip_class"] != a["label"]
    rep = root / "report"
    manifest = json.loads((rep / "inputs.json").read_text())
    assert len(manifest["scores"]) == len(cfg["methods"]) * 10
    assert len(manifest["gathers"]) == len(cfg["methods"]) * len(cfg["support"]["metrics"])
    assert all((run / f).exists() for key in ("gathers", "scores", "lds") for f in manifest[key])
    assert all(e.count("|") >= 2 for e in manifest["method_costs"]) and manifest["benchmarks"]
    rows = list(csv.DictReader((rep / "support.csv").open()))
    assert len(rows) == len(cfg["methods"]) * len(cfg["support"]["metrics"])
    assert {(r["encoder"], r["ranker"], r["metric"]) for r in rows} == \
        {(m["encoder"], m["ranker"], metric) for m in cfg["methods"] for metric in cfg["support"]["metrics"]}
    for r in rows:                            # the report's figures agree with the answer files themselves
        want = summary_from_answers(root / "support" / r["encoder"] / r["ranker"] / r["metric"])
        assert {k: r[k] for k in want} == want, r
    check_figures(rep, n_methods=len(cfg["methods"]), grid_images=cfg["report"]["grid_images"])
    md = (rep / "report.md").read_text()
    assert all(f"{m['encoder']}/{m['ranker']}" in md for m in cfg["methods"])
    names = sorted(f"{m['encoder']}/{m['ranker']}" for m in cfg["methods"])
    lds = {r["method"]: r for r in csv.DictReader((rep / "lds.csv").open())}
    assert sorted(lds) == names
    check_lds_against_a_recomputation(root, lds, "model/trak")
    check_lds_against_a_recomputation(root, lds, "simclr/esvm")
    assert int(lds["model/trak"]["n_test"]) == 360 and int(lds["model/trak"]["n_models"]) == cfg["lds"]["models"]
    overlap = list(csv.DictReader((rep / "overlap.csv").open()))
    assert len(overlap) == len(names) ** 2 * 2
    assert all(float(o["jaccard"]) == 1.0 for o in overlap if o["method_a"] == o["method_b"])
    cost = {r["method"]: r for r in csv.DictReader((rep / "cost.csv").open())}
    assert sorted(cost) == names
    assert int(cost["model/trak"]["models_trained"]) == cfg["trak"]["checkpoints"]
    assert int(cost["model/datamodels"]["models_trained"]) == cfg["datamodels"]["models"]
    assert all(float(c["wall_s"]) > 0 and int(c["bytes"]) > 0 for c in cost.values())
    assert "## Linear datamodeling score (LDS)" in md and "## Selection overlap" in md and "## Cost per method" in md
    assert "## Test-retest across seed sets" in md and "within noise" in md
    retest = list(csv.DictReader((rep / "retest.csv").open()))
    assert len(retest) == len(rows) and all(r["seed_set_a"] == "0" and r["seed_set_b"] == "1" for r in retest)
    wins = list(csv.DictReader((rep / "wins.csv").open()))
    assert len(wins) == len(cfg["support"]["metrics"]) * len(names) * (len(names) - 1)
    assert all(r["significant"] in ("True", "False") for r in wins)
    with h5py.File(root / "scores" / "simclr" / "esvm_signed" / "class-3.h5") as f:
        full, te, runner = f["full_scores"][()], f["test_indices"][()], f["runner_up"][()]
    y_train = h5py.File(root / "support" / "queries.h5")["y_train"][()]
    assert full.shape == (len(te), len(y_train)) and (runner != 3).all()
    for i, r in enumerate(runner):            # own class >= 0, runner-up <= 0, the rest 0
        assert (full[i, y_train == 3] >= 0).all() and (full[i, y_train == r] <= 0).all()
        assert (full[i, (y_train != 3) & (y_train != r)] == 0).all()


def check_lds_against_a_recomputation(root: Path, table: dict, method: str) -> None:
    """A method's LDS recomputed here from its score files and the LDS subset shards, with scipy's Spearman:
    the per-test values of its LDS file and the mean (and test count) of the report's lds.csv row."""
    from scipy.stats import spearmanr

    encoder, ranker = method.split("/")
    per_test = json.loads((root / "lds" / encoder / f"{ranker}.json").read_text())["per_test"]
    masks, margins = [], []
    for f in sorted((root / "subsets" / "lds").glob("shard-*.h5")):
        with h5py.File(f) as h:
            n = int(h.attrs["n_train"])
            masks.append(np.unpackbits(h["masks"][()], axis=1, count=n, bitorder="little").astype(bool))
            margins.append(h["margins"][()])
            order = h["model_ids"][()]
            assert order.tolist() == sorted(order.tolist())
    masks, margins = np.concatenate(masks), np.concatenate(margins)
    got = {}
    for f in sorted((root / "scores" / encoder / ranker).glob("class-*.h5")):
        with h5py.File(f) as h:
            te, tr, s = h["test_indices"][()], h["train_indices"][()], h["scores"][()]
            full = h["full_scores"][()] if "full_scores" in h else None
        for i, t in enumerate(te):
            if full is not None:
                w = full[i].astype(np.float64)
            else:                  # a similarity ranker: its candidates' scores shifted to >= 0, the rest 0
                w = np.zeros(masks.shape[1])
                w[tr] = s[i] - s[i].min()
            pred = masks.astype(np.float64) @ w
            got[int(t)] = spearmanr(pred, margins[:, t]).statistic
    want = {r["test_index"]: r["spearman"] for r in per_test}
    assert sorted(got) == sorted(want)
    finite = [t for t in want if want[t] is not None]
    assert len(finite) > 0.9 * len(want)
    np.testing.assert_allclose([got[t] for t in finite], [want[t] for t in finite], atol=1e-5)
    assert int(table[method]["n_test"]) == len(want)
    assert float(table[method]["mean"]) == pytest.approx(np.mean([want[t] for t in finite]), abs=6e-4)  # 3 decimals


def check_figures(rep: Path, n_methods: int, grid_images: int) -> None:
    """The report's figures decode as images of the shape their content asks for: the top-k grid has a row per
    shown test image for each method (its height grows with both) and is not blank."""
    from PIL import Image

    for png in ("support_cdf.png", "topk_grid.png"):
        with Image.open(rep / png) as im:
            a = np.asarray(im.convert("L"), np.float64)
        assert a.std() > 1.0, png                               # something is drawn
        if png == "topk_grid.png":          # report.figures: (k + 1) cells of 1.15 in + 1.2 in wide, a row each
            rows = grid_images * n_methods  # of 1.15 in + 0.4 in high, for each method under each shown image
            want = (rows * 1.15 + 0.4) / (9 * 1.15 + 1.2)
            assert a.shape[0] / a.shape[1] == pytest.approx(want, rel=0.1), (a.shape, rows)


@pytest.mark.slow
def test_a_second_run_does_nothing(run):
    r = smk("-n", "--cores", "2", workdir=run)
    assert r.returncode == 0 and "Nothing to be done" in r.stdout + r.stderr


@pytest.mark.slow
@pytest.mark.parametrize("profile", [False, True], ids=["local", "slurm-profile"])
def test_changing_esvm_C_reruns_only_esvm_scores_and_what_depends_on_them(run, tmp_path, profile):
    cfg = variant(tmp_path, lambda c: c["esvm"].update(C=1.0))
    how = ("--profile", str(REPO / "profiles" / "slurm")) if profile else ("--cores", "2")
    r = smk("-n", *how, workdir=run, configfile=cfg)
    assert r.returncode == 0, r.stderr[-2000:]
    n_metrics = 2
    esvm_methods = 2                            # esvm and esvm_signed on simclr
    assert job_counts(r.stdout) == {"score": 10 * esvm_methods, "support": n_metrics * esvm_methods,
                                    "lds": esvm_methods, "method_figures": esvm_methods, "report": 1, "all": 1}
    if profile:          # the same jobs, grouped: the 20 score jobs go to the cluster as one SLURM job
        sub = slurm_submissions(r.stdout)
        assert sub["groups"] == {"score": 1, "lds": 1, "method_figures": 1}, sub
        assert sub["sbatch"] == 4, sub           # the three group jobs and the report (support is a local rule)


@pytest.mark.slow
def test_changing_the_support_budget_reruns_only_support_and_report(run, tmp_path):
    cfg = variant(tmp_path, lambda c: c["support"].update(max_models=20))
    r = smk("-n", "--cores", "2", workdir=run, configfile=cfg)
    assert r.returncode == 0, r.stderr[-2000:]
    assert job_counts(r.stdout) == {"support": 2 * 7, "method_figures": 7, "report": 1, "all": 1}


@pytest.mark.slow
def test_the_html_report_holds_every_table_and_figure(run, tmp_path):
    """`snakemake --report`: Snakemake's own report, the comparison's tables and figures and each method's pages
    (its top-k grid, a flip-curve figure per answer) as items with their captions."""
    out = tmp_path / "report.html"
    r = smk("--report", str(out), workdir=run)
    assert r.returncode == 0, r.stderr[-3000:]
    html = out.read_text()
    rep = run / "results" / "digits" / "report"
    for name in ("support.csv", "report.md", "support_cdf.png", "topk_grid.png", "cost.csv", "overlap.csv",
                 "lds.csv"):
        assert name in html, name
    methods = sorted(p.relative_to(rep / "methods") for p in (rep / "methods").glob("*/*"))
    assert len(methods) == 7
    answers = 0
    for m in methods:
        pngs = sorted(p.name for p in (rep / "methods" / m).glob("*.png"))
        curves = [p for p in pngs if p.startswith("curve-")]
        gathered = [a for metric in ("removal", "mislabel")
                    for a in json.loads((run / "results" / "digits" / "support" / m /
                                         f"{metric}.json").read_text())["answers"]]
        assert sorted(curves) == sorted(f"curve-{a['metric']}-{a['test_index']}.png" for a in gathered)
        assert "topk.png" in pngs
        answers += len(curves)
        assert str(m) in html                                   # its subcategory
    assert answers == 7 * 2 * 4
    for name in {p.name for p in (rep / "methods").glob("*/*/*.png")}:
        assert name in html, name
    assert "Flip curve" in html or "flip curve" in html                    # a method page's caption


@pytest.mark.slow
def test_launch_settings_rerun_nothing(run, tmp_path):
    def change(c):
        c["launch"].update(parallelism=1, timeout_min=7, cpus_per_task=2)
    r = smk("-n", "--cores", "2", workdir=run, configfile=variant(tmp_path, change))
    assert r.returncode == 0 and "Nothing to be done" in r.stdout + r.stderr, r.stdout[-2000:]


@pytest.mark.slow
def test_a_real_rerun_after_changing_esvm_C_recomputes_exactly_the_esvm_answers(run, tmp_path):
    wd = tmp_path / "copy"
    shutil.copytree(run, wd)                    # keep the shared run untouched for the other tests
    root = wd / "results" / "digits" / "support"
    before = {p.relative_to(root): json.loads(p.read_text())["settings_hash"] for p in root.glob("*/*/*/*.json")}
    r = smk("--cores", "2", workdir=wd, configfile=variant(tmp_path, lambda c: c["esvm"].update(C=5.0)))
    assert r.returncode == 0, r.stderr[-3000:]
    with h5py.File(wd / "results" / "digits" / "scores" / "simclr" / "esvm" / "class-0.h5") as f:
        assert json.loads(f.attrs["settings"])["C"] == 5.0
    after = {p.relative_to(root): json.loads(p.read_text())["settings_hash"] for p in root.glob("*/*/*/*.json")}
    assert before.keys() == after.keys()
    for key in before:
        changed = before[key] != after[key]
        assert changed == (key.parts[:2] in (("simclr", "esvm"), ("simclr", "esvm_signed"))), key


def fake_root(name: str, root: Path) -> Path:
    """A full-size fake of dataset `name` at `root`, made in a second (CIFAR-10: 50,000 + 10,000 blank images;
    ImageNet and other image folders: 1,000 classes of empty files, listed but never decoded)."""
    from datafiles import make_cifar_root, make_empty_image_folder

    if name == "cifar10":
        return make_cifar_root(root, per_batch=10000, n_test=10000, blank=True)
    return make_empty_image_folder(root, 1000, 13, 5)


def with_fake_inputs(configfile: Path, tmp: Path, imagenet_root: str | None = None) -> tuple[Path, dict]:
    """The config with its dataset root and checkpoint replaced by fakes of full size made here (fake_root; or the
    ImageNet-shaped folder `imagenet_root`)."""
    cfg = yaml.safe_load(configfile.read_text())
    ds = cfg.get("dataset", {})
    if ds.get("name") == "cifar10":
        ds["root"] = str(fake_root("cifar10", tmp / "cifar10"))
    elif ds.get("name") in ("imagenet", "imagefolder"):
        ds["root"] = imagenet_root or str(fake_root(ds["name"], tmp / "imagenet"))
    if cfg.get("encoders", {}).get("resnet", {}).get("checkpoint"):
        (tmp / "ckpt.pth").touch()
        cfg["encoders"]["resnet"]["checkpoint"] = str(tmp / "ckpt.pth")
    p = tmp / configfile.name
    p.write_text(yaml.safe_dump(cfg))
    return p, cfg


#: every shipped config as a run names it (a later file's keys override an earlier one's): config/*.yaml, and the
#: outside methods of examples/outside.yaml on top of the test config (the README's "Evaluate your own method")
SHIPPED = [(p,) for p in sorted((REPO / "config").glob("*.yaml"))] + [(TEST_CFG, REPO / "examples" / "outside.yaml")]


def shipped_id(files: Sequence[Path]) -> str:
    return "+".join(f.name for f in files)


def write_inputs(configfiles: Sequence[Path], wd: Path) -> dict:
    """The files the configs name, made in the working directory `wd` at the paths they give, so that the shipped
    configs dry-run there as they are: a fake dataset root of full size (fake_root), an empty checkpoint, an empty
    scores file of each external method (a dry run only hashes it). Returns the configs merged (top-level keys of a
    later file replace an earlier one's, as Snakemake does for `methods`)."""
    merged: dict = {}
    for f in configfiles:
        cfg = yaml.safe_load(Path(f).read_text())
        root, name = cfg.get("dataset", {}).get("root"), cfg.get("dataset", {}).get("name")
        if root and not (wd / root).exists():
            fake_root(name, wd / root)
        files = [cfg.get("encoders", {}).get("resnet", {}).get("checkpoint")]
        files += [m.get(k) for m in cfg.get("methods", []) if m.get("encoder") == "external" for k in ("path", "index")]
        for file in filter(None, files):
            (wd / file).parent.mkdir(parents=True, exist_ok=True)
            (wd / file).touch()
        merged.update(cfg)
    return merged


def dry_run_jobs(out: str) -> list[tuple[str, dict[str, str]]]:
    """(rule, {key: value}) of each job a dry run lists (its output, input, log, benchmark, wildcards ... lines)."""
    return [(m.group(1), dict(re.findall(r"^\s+(\w+): (.*)$", m.group(2), re.M)))
            for m in re.finditer(r"^\s*(?:local)?rule (\w+):\n((?:[ \t]+\w+: .*\n)*)", out, re.M)]


@pytest.mark.parametrize("configfiles", SHIPPED, ids=shipped_id)
def test_dry_run_passes_for_every_config(configfiles, tmp_path):
    cfg = write_inputs(configfiles, tmp_path)
    t = time.perf_counter()
    r = smk("-n", "-p", "--cores", "2", workdir=tmp_path, configfile=configfiles)
    took = time.perf_counter() - t
    assert r.returncode == 0, r.stderr[-2000:]
    # every job's shell command is one argument to bash: Linux refuses one over 128 KiB (MAX_ARG_STRLEN)
    shell = [line for line in r.stdout.splitlines() if line.startswith("Shell command: ")]
    longest = max(shell, key=len)
    assert len(longest.encode()) < 128 * 1024, (len(longest), longest[:300])
    assert "--manifest" in r.stdout and "report_manifest" in r.stdout
    counts = job_counts(r.stdout)
    assert counts.get("report") == 1
    # the report's lists (simattr.pipeline's walk of the run's jobs) are the DAG's: the benchmark of every job
    # upstream of the report, and the score files and support gathers the DAG makes
    jobs = dry_run_jobs(r.stdout)
    report_inputs = [f for rule, job in jobs if rule == "report" for f in job["input"].split(", ")]
    upstream = [job["benchmark"] for rule, job in jobs if "benchmark" in job and rule != "method_figures"]
    assert sorted(f for f in report_inputs if "/benchmarks/" in f) == sorted(upstream)
    made = [job["output"] for rule, job in jobs if rule in ("score", "score_model", "score_external", "support")]
    read = [f for f in report_inputs if "/scores/" in f or ("/support/" in f and f.endswith(".json"))]
    assert sorted(read) == sorted(made)
    if cfg.get("dataset", {}).get("root"):            # the full-size configs: jobs as the config implies
        name, shard = cfg["dataset"]["name"], cfg["embed"]["shard_size"]
        sizes = {"cifar10": (50000, 10000), "imagenet": (13000, 5000)}[name]
        encoders = {m["encoder"] for m in cfg["methods"]} - {"model", "external"}
        n_classes = 10 if name == "cifar10" else 1000
        assert counts["embed_shard"] == len(encoders) * sum(-(-n // shard) for n in sizes)
        assert counts["score"] + counts.get("score_model", 0) + counts.get("score_external", 0) == \
            len(cfg["methods"]) * n_classes
        made = [m for m in cfg["methods"] if m.get("command")]       # outside methods made from the export
        assert counts.get("outside_scores", 0) == len(made) and counts.get("export", 0) == (1 if made else 0)
        lds = cfg.get("lds", {}).get("models", 100)
        assert counts.get("subsets", 0) == (-(-lds // cfg["lds"]["shard_size"]) if lds else 0)
        assert counts.get("lds", 0) == (len(cfg["methods"]) if lds else 0)
        assert counts["support"] == len(cfg["methods"]) * len(cfg["support"]["metrics"])
    print(f"{shipped_id(configfiles)}: dry run {took:.1f} s, {counts}")


def test_simclr_arch_reaches_its_training_rule(tmp_path):
    r = smk("-n", "-p", "--cores", "2", workdir=tmp_path,
            configfile=variant(tmp_path, lambda c: c["encoders"]["simclr"].update(arch="resnet18")))
    assert r.returncode == 0, r.stderr[-2000:]
    assert '"arch":"resnet18"' in r.stdout and "train-encoder --settings" in r.stdout


def test_lint_reports_nothing(tmp_path):
    """`snakemake --lint` and `snakefmt --check` (its settings: pyproject.toml [tool.snakefmt]) find nothing in the
    Snakefile and workflow/rules (make lint and the CI run both)."""
    r = smk("--lint", workdir=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Lints for" not in r.stdout + r.stderr, r.stdout[-3000:] + r.stderr[-3000:]
    r = subprocess.run([sys.executable, "-m", "snakefmt", "--check", "--compact-diff", "Snakefile", "workflow"],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def common_smk_constant(name: str):
    """A literal constant of workflow/rules/common.smk (NAME = (...)), read without Snakemake."""
    text = (REPO / "workflow" / "rules" / "common.smk").read_text()
    m = re.search(rf"^{name} = (\(.*?\))\n", text, re.M | re.S)
    assert m, name
    return ast.literal_eval(m.group(1))


def test_the_launch_keys_are_the_schemas_and_launch_settings():
    """common.smk's LAUNCH_KEYS (the support command's --launch words, in their order) are every key of the schema's
    `launch` section and every field of simattr.launch.LaunchSettings but the submitit folder, each once; the report's
    PLAN_LAUNCH_KEYS are launch keys that simattr plan reads."""
    from simattr.launch import LaunchSettings

    keys = common_smk_constant("LAUNCH_KEYS")
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    assert len(set(keys)) == len(keys)
    assert set(keys) == set(schema["properties"]["launch"]["properties"])
    assert set(keys) == set(LaunchSettings.__dataclass_fields__) - {"folder"}
    plan = common_smk_constant("PLAN_LAUNCH_KEYS")
    estimate = (REPO / "src" / "simattr" / "plan" / "estimate.py").read_text()
    assert set(plan) <= set(keys) and all(f'"{k}"' in estimate for k in plan), plan


@pytest.mark.parametrize("change, expected", [
    (lambda c: c["esvm"].update(C=-1), "config key 'esvm.C': expected a value > 0, got -1"),
    (lambda c: c["support"].update(seeds="three"), "config key 'support.seeds': expected integer, got 'three'"),
    (lambda c: c["methods"].append({"encoder": "moco", "ranker": "esvm"}),
     "got 'moco', valid values: pixels, simclr, supervised"),
    (lambda c: c["methods"].append({"encoder": "pixels", "ranker": "svm"}),
     "got 'svm', valid values: esvm, esvm_reference, esvm_signed, knn_l2, knn_cos, random, trak, datamodels"),
    (lambda c: c["methods"].append({"encoder": "pixels", "ranker": "trak"}),
     "{encoder: pixels, ranker: trak}: ranker trak needs encoder model"),
    (lambda c: c["support"].update(seedz=3), "'seedz' was unexpected"),
    (lambda c: c["support"].update(threshold=1.0), "config key 'support.threshold': expected a value < 1"),
    (lambda c: c["methods"].append(dict(c["methods"][0])), "config key 'methods': has the same entry twice"),
    (lambda c: c["encoders"]["simclr"].update(arch="vgg"),
     "config key 'encoders.simclr.arch': got 'vgg', valid values: small, resnet18"),
    (lambda c: c["methods"].append({"encoder": "external", "ranker": "scores", "name": "mine", "path": "gone.pt"}),
     "external method 'mine': gone.pt: scores file not found"),
    (lambda c: c["methods"].append({"encoder": "external", "ranker": "scores", "name": "mine", "path": "variant.yaml",
                                    "index": "none.txt"}), "external method 'mine': none.txt: index file not found"),
    (lambda c: c["methods"].append({"encoder": "external", "ranker": "scores", "path": "x.npy"}),
     "an external method needs name"),
    (lambda c: c["methods"].append({"encoder": "external", "ranker": "scores", "name": "mine", "path": "m.pt",
                                    "command": "python examples/dattri_scores.py --method trak"}),
     "external method 'mine': a method made by its command is written to results/digits/outside/mine.pt: set its "
     "path to that"),
    (lambda c: c["methods"].append({"encoder": "pixels", "ranker": "esvm", "command": "true"}),
     "command belong to external methods"),
])
def test_bad_config_is_one_clear_error_before_any_job(change, expected, tmp_path):
    cfg = variant(tmp_path, change)
    r = smk("--cores", "1", workdir=tmp_path, configfile=cfg)
    assert r.returncode != 0
    assert expected in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "results").exists()


def _answers(wd: Path) -> dict:
    root = wd / "results" / "digits" / "support"
    drop = ("wall_s", "models_reused")
    return {p.relative_to(root): {k: v for k, v in json.loads(p.read_text()).items() if k not in drop}
            for p in root.glob("*/*/*/*.json")}


@pytest.mark.slow
def test_sigkill_during_support_then_rerun_gives_the_same_answers_and_no_model_twice(run, tmp_path):
    wd = tmp_path / "killed"
    wd.mkdir()
    cmd, env = smk_cmd("--cores", "2", workdir=wd)
    p = subprocess.Popen(cmd, cwd=wd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    journals = lambda: list((wd / "results" / "digits" / "support").glob("*/*/*/*.journal.jsonl"))
    deadline = time.monotonic() + 600
    try:
        while sum(len(j.read_text().splitlines()) for j in journals()) < 30:
            assert p.poll() is None, "the workflow ended before the support stage could be killed"
            assert time.monotonic() < deadline, "the support stage did not start"
            time.sleep(0.1)
    finally:
        os.killpg(p.pid, signal.SIGKILL)          # snakemake, the support rule and its submitit workers
        p.wait()
    assert not (wd / "results" / "digits" / "report" / "report.md").exists()
    assert smk("--unlock", workdir=wd).returncode == 0
    r = smk("--cores", "2", "--rerun-incomplete", workdir=wd)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _answers(wd) == _answers(run)
    drop = {"mean_wall_s"}
    rows = lambda d: [{k: v for k, v in row.items() if k not in drop}
                      for row in csv.DictReader((d / "results" / "digits" / "report" / "support.csv").open())]
    assert rows(wd) == rows(run)
    for j in journals():
        keys = [(e["k"], e["seed_index"]) for e in map(json.loads, j.read_text().splitlines())]
        assert len(keys) == len(set(keys)), j          # no model trained twice
        answer = json.loads(j.with_name(j.name.replace(".journal.jsonl", ".json")).read_text())
        assert len(keys) == answer["trainings"]


NETWORK_RULES = {"train_encoder", "embed_shard", "queries", "trak_checkpoints", "trak", "subsets"}


def profile_dry_run_jobs(configfile: Path, tmp_path: Path) -> list[dict]:
    """The jobs of a dry run through profiles/slurm: rule, encoder, the gpu resource and the --gpus /
    gpus_per_node= of its shell command (the support rule's --launch)."""
    import re

    cfg_path, _ = with_fake_inputs(configfile, tmp_path)
    r = smk("-n", "-p", "--profile", str(REPO / "profiles" / "slurm"), workdir=tmp_path, configfile=cfg_path)
    assert r.returncode == 0, r.stderr[-2000:]
    jobs = []
    for block in re.split(r"\n(?=\s*\[[^\]]*\d{4}\]\n)", r.stdout):     # a group job's members are indented
        rule = re.search(r"^\s*(?:local)?rule (\w+):", block, re.M)
        shell = re.search(r"^Shell command: (.*)$", block, re.M)
        if not rule or not shell:
            continue
        res = re.search(r"^\s*resources: (.*)$", block, re.M)

        def num(pattern, text):
            m = re.search(pattern, text or "")
            return int(m.group(1)) if m else None
        jobs.append({"rule": rule.group(1), "encoder": (re.findall(r"--encoder (\w+)", shell.group(1)) or [""])[0],
                     "gpu": num(r"\bgpu=(\d+)", res.group(1) if res else ""),
                     "flag": num(r"--gpus (\d+)", shell.group(1)),
                     "per_task": num(r"\bgpus_per_node=(\d+)", shell.group(1))})
    return jobs


@pytest.mark.parametrize("name", ["cifar10.yaml", "imagenet.yaml"])
def test_the_slurm_profile_asks_a_gpu_for_every_network_job_of_the_gpu_configs(name, tmp_path):
    jobs = profile_dry_run_jobs(REPO / "config" / name, tmp_path)
    network = [j for j in jobs if j["rule"] in NETWORK_RULES]
    assert {"queries", "embed_shard"} <= {j["rule"] for j in network}
    for j in network:                     # the resource (sbatch --gpus=1) and the job's own no-CUDA check
        assert j["gpu"] == 1 and j["flag"] == 1, j
    support = [j for j in jobs if j["rule"] == "support"]
    assert support and all(j["per_task"] == 1 for j in support), support   # every array task asks for one
    print(f"{name}: {len(network)} network jobs ask for a GPU ({sorted({j['rule'] for j in network})}), "
          f"{len(support)} support arrays with 1 GPU per task")


def test_the_imagenet_config_submits_tens_of_slurm_jobs_not_thousands(tmp_path):
    cfg_path, cfg = with_fake_inputs(REPO / "config" / "imagenet.yaml", tmp_path)
    r = smk("-n", "--profile", str(REPO / "profiles" / "slurm"), workdir=tmp_path, configfile=cfg_path)
    assert r.returncode == 0, r.stderr[-2000:]
    sub = slurm_submissions(r.stdout)
    n_score = len(cfg["methods"]) * 1000
    assert sub["rules"]["score"] == n_score                    # still one Snakemake job per (method, class) ...
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    per_group = profile["group-components"]["score"]
    assert sub["groups"]["score"] == -(-n_score // per_group)   # ... sent as group jobs of up to per_group
    assert sub["sbatch"] <= 100, sub
    print(f"imagenet.yaml through profiles/slurm: {sub['sbatch']} SLURM jobs for {sum(sub['rules'].values())} "
          f"Snakemake jobs ({sub['groups']})")


def test_the_digits_config_asks_no_gpu(tmp_path):
    jobs = profile_dry_run_jobs(REPO / "config" / "config.yaml", tmp_path)
    assert jobs and all(not j["gpu"] and not j["flag"] and not j["per_task"] for j in jobs), \
        [j for j in jobs if j["gpu"] or j["flag"] or j["per_task"]]


if __name__ == "__main__":          # python tests/test_workflow.py DIR: every shipped config's input files in DIR
    for files in SHIPPED:          # (make dryrun-all and the CI dry-run each config there, as it is)
        write_inputs(files, Path(sys.argv[1]))
