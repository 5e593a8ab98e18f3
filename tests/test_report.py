import csv
import math
import re

import numpy as np
import pytest

from simattr.errors import SimattrError
from simattr.report import costs, figures, render, statistics

BOOT = dict(n_boot=1000, seed=0)          # win_rates' bootstrap as report.n_boot and report.seed default


def answer(t, support, *, k_max=4, trainings=3, wall_s=1.0):
    return {"test_index": t, "label": 0, "flip_class": None if support is None else 1, "support": support,
            "k_max": k_max, "trainings": trainings,
            "probes": [{"k": k_max, "accuracy": 0.5, "n_models": 2, "flipped": support is not None}],
            "wall_s": wall_s}


def gather(encoder, ranker, metric, supports, *, k_max=4, trainings=None, test_indices=None):
    test_indices = test_indices if test_indices is not None else list(range(len(supports)))
    trainings = trainings or [3] * len(supports)
    return {"dataset": "toy", "encoder": encoder, "ranker": ranker, "metric": metric, "k_max": k_max,
            "answers": [answer(t, s, k_max=k_max, trainings=n) for t, s, n in
                        zip(test_indices, supports, trainings)]}


def by_method(rows, metric="removal"):
    return {r["method"]: r for r in rows if r["metric"] == metric}


# ----------------------------------------------------------------------------------------- summarize
def test_summarize_counts_median_auc():
    gs = [gather("simclr", "esvm", "removal", [1, 3, None], trainings=[2, 4, 6]),
          gather("simclr", "cos", "removal", [2, None, None, None, 1]),
          gather("simclr", "cos", "mislabel", [1, 2, None, None], k_max=4)]
    rows = statistics.summarize(gs, n_boot=200, seed=0)
    # order: removal first, then mislabel; methods alphabetically
    assert [(r["metric"], r["method"]) for r in rows] == [
        ("removal", "simclr/cos"), ("removal", "simclr/esvm"), ("mislabel", "simclr/cos")]

    esvm = by_method(rows)["simclr/esvm"]
    assert (esvm["n_test"], esvm["n_flipped"]) == (3, 2)
    assert esvm["frac_flipped"] == pytest.approx(2 / 3)
    assert esvm["median_support"] == 3 and esvm["median_censored"] is False
    # k=1: 1/3, k=2: 1/3, k=3: 2/3, k=4: 2/3 -> mean 0.5
    assert esvm["auc"] == pytest.approx(0.5)
    assert esvm["mean_trainings"] == pytest.approx(4.0)

    cos = by_method(rows)["simclr/cos"]  # 3 of 5 censored -> median is "> k_max"
    assert (cos["n_test"], cos["n_flipped"]) == (5, 2)
    assert cos["median_support"] is None and cos["median_censored"] is True
    # k=1: 1/5, k=2..4: 2/5 -> (0.2 + 0.4 * 3) / 4
    assert cos["auc"] == pytest.approx(0.35)

    mis = by_method(rows, "mislabel")["simclr/cos"]  # exactly half censored: the median is still finite
    assert mis["median_support"] == 2 and mis["median_censored"] is False


def test_summarize_ci_contains_median_and_is_deterministic():
    rng = np.random.default_rng(1)
    sup = [int(x) for x in rng.integers(1, 30, size=40)] + [None] * 5
    gs = [gather("a", "r", "removal", sup, k_max=30)]
    r1 = statistics.summarize(gs, n_boot=500, seed=7)[0]
    r2 = statistics.summarize(gs, n_boot=500, seed=7)[0]
    assert r1 == r2
    assert r1["ci_low"] <= r1["median_support"] <= r1["ci_high"]
    assert r1["ci_low"] < r1["ci_high"]
    finite = sorted(s for s in sup if s is not None)
    assert r1["median_support"] == sorted(finite + [math.inf] * 5)[(45 - 1) // 2]
    # a different seed is still a valid interval around the median
    r3 = statistics.summarize(gs, n_boot=500, seed=8)[0]
    assert r3["ci_low"] <= r3["median_support"] <= r3["ci_high"]


def test_summarize_censored_ci_bound():
    gs = [gather("a", "r", "removal", [1, None, None, 2, None, 3, None], k_max=5)]  # 4 of 7 censored
    r = statistics.summarize(gs, n_boot=300, seed=0)[0]
    assert r["median_censored"] is True
    assert r["ci_high"] is None and r["ci_high_censored"] is True
    assert r["ci_low"] is not None and 1 <= r["ci_low"] <= 3


def test_summarize_rejects_bad_gathers():
    g = gather("a", "r", "removal", [1])
    with pytest.raises(SimattrError, match="given twice"):
        statistics.summarize([g, g], n_boot=10, seed=0)
    bad = gather("a", "r", "deletion", [1])
    with pytest.raises(SimattrError, match="metric"):
        statistics.summarize([bad], n_boot=10, seed=0)
    other = dict(gather("b", "r", "removal", [1]), dataset="other")
    with pytest.raises(SimattrError, match="more than one dataset"):
        statistics.summarize([g, other], n_boot=10, seed=0)


# ----------------------------------------------------------------------------------------- win rates
def test_win_rates_exact():
    # test images 0..4; B lacks test 4 and has an extra test 9 -> 4 shared images
    a = gather("e", "A", "removal", [1, 5, None, None, 2], test_indices=[0, 1, 2, 3, 4])
    b = gather("e", "B", "removal", [2, 3, None, 4, 1], test_indices=[0, 1, 2, 3, 9])
    c = gather("e", "C", "mislabel", [1])
    wins = statistics.win_rates([a, b, c], **BOOT)
    assert [(w["method_a"], w["method_b"]) for w in wins] == [("e/A", "e/B"), ("e/B", "e/A")]
    ab, ba = wins
    # shared: t0 1<2 (A wins), t1 5>3 (B), t2 inf=inf (tie), t3 inf>4 (B)
    assert ab["n"] == ba["n"] == 4
    assert (ab["win"], ab["tie"], ab["loss"]) == (0.25, 0.25, 0.5)
    assert (ba["win"], ba["tie"], ba["loss"]) == (0.5, 0.25, 0.25)


def test_win_rates_no_overlap():
    a = gather("e", "A", "removal", [1], test_indices=[0])
    b = gather("e", "B", "removal", [1], test_indices=[1])
    w = statistics.win_rates([a, b], **BOOT)[0]
    assert w["n"] == 0 and w["win"] is None and w["tie"] is None


# ----------------------------------------------------------------------------------------- costs
BENCH_HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def write_bench(path, s, rss):
    path.write_text(BENCH_HEADER + f"{s}\t0:00:{int(s):02d}\t{rss}\t1\t1\t1\t0\t0\t0\t{s}\n")
    return path


def test_stage_costs(tmp_path):
    b1 = write_bench(tmp_path / "embed-a.tsv", 12.5, 100.0)
    b2 = write_bench(tmp_path / "embed-b.tsv", 7.25, "NA")
    b3 = write_bench(tmp_path / "score.tsv", 3.0, 50.5)
    d = tmp_path / "emb"
    (d / "sub").mkdir(parents=True)
    (d / "x.bin").write_bytes(b"\0" * 1000)
    (d / "sub" / "y.bin").write_bytes(b"\0" * 24)
    f = tmp_path / "scores.h5"
    f.write_bytes(b"\0" * 300)
    stage_rows = costs.stage_costs({"embed": [b1, b2], "score": [b3]},
                                   {"embed": [d, d / "x.bin"], "score": [f], "support": [tmp_path / "absent"]})
    assert stage_rows == [
        {"stage": "embed", "jobs": 2, "wall_s": pytest.approx(19.75), "max_rss_mb": 100.0, "bytes": 1024},
        {"stage": "score", "jobs": 1, "wall_s": pytest.approx(3.0), "max_rss_mb": 50.5, "bytes": 300},
        {"stage": "support", "jobs": 0, "wall_s": 0.0, "max_rss_mb": None, "bytes": 0},
    ]


def test_stage_costs_bad_benchmark(tmp_path):
    p = tmp_path / "b.tsv"
    p.write_text("foo\tbar\n1\t2\n")
    with pytest.raises(SimattrError, match="benchmark"):
        costs.stage_costs({"embed": [p]}, {})
    with pytest.raises(SimattrError, match="not found"):
        costs.stage_costs({"embed": [tmp_path / "missing.tsv"]}, {})


# ----------------------------------------------------------------------------------------- figures
def png_size(path):
    """(width, height) in pixels from a PNG's IHDR chunk; also checks that no temporary is left behind."""
    import struct

    data = path.read_bytes()
    assert not list(path.parent.glob(f".{path.name}.*"))  # written atomically: no temporary left behind
    return struct.unpack(">II", data[16:24])


def cdf_points(supports, k_max):
    """What the support CDF must draw for one method: fraction with support <= k for k = 0..k_max, and one more
    step at k_max + 1 with the last value (None = censored never counts)."""
    y = [sum(s is not None and s <= k for s in supports) / len(supports) for k in range(k_max + 1)]
    return list(range(k_max + 2)), y + y[-1:]


def test_plot_cdf_draws_each_methods_fraction_flipped_per_metric(tmp_path):
    sup = {("simclr/esvm", "removal"): [1, 3, None, 2], ("simclr/cos", "removal"): [4, None, None, 5],
           ("simclr/esvm", "mislabel"): [1, 1, 2, None]}
    gs = [gather(*m.split("/"), metric, s, k_max=5) for (m, metric), s in sup.items()]
    out = tmp_path / "report" / "support_cdf.png"
    fig = figures.plot_cdf(gs, out)
    assert png_size(out) == pytest.approx((2 * 520, 420), abs=1)        # one 5.2 x 4.2 in panel per metric
    assert [ax.get_title() for ax in fig.axes] == ["removal support", "mislabel support"]
    colors = {}
    for ax, metric in zip(fig.axes, ("removal", "mislabel")):
        methods = sorted(m for m, mt in sup if mt == metric)
        lines = ax.get_lines()
        assert [ln.get_label() for ln in lines] == [f"{m} (n=4)" for m in methods]
        assert [t.get_text() for t in ax.get_legend().get_texts()] == [ln.get_label() for ln in lines]
        for m, ln in zip(methods, lines):
            x, y = cdf_points(sup[(m, metric)], 5)
            assert ln.get_drawstyle() == "steps-post"
            assert list(ln.get_xdata()) == x
            assert list(ln.get_ydata()) == pytest.approx(y)
            assert colors.setdefault(m, ln.get_color()) == ln.get_color()    # a method keeps its colour
        assert len(ax.collections) == len(methods)                              # one bootstrap band each
        assert ax.get_xlim() == (0, 6)
    assert colors["simclr/esvm"] != colors["simclr/cos"]
    # the hand values, so that cdf_points is not the only reference: esvm removal flips 1, 2, 3 of 4 at k = 1..3
    esvm = fig.axes[0].get_lines()[1]
    assert list(esvm.get_ydata()) == pytest.approx([0, 0.25, 0.5, 0.75, 0.75, 0.75, 0.75])


def test_plot_cdf_band_without_model_noise_is_the_curve(tmp_path):
    # every image has support 3 and no flip curve (no model noise): each bootstrap sample flips none below k = 3
    # and all from k = 3 on, so the band is exactly the step from 0 to 1 at k = 3
    fig = figures.plot_cdf([gather("e", "a", "removal", [3] * 6, k_max=5)], tmp_path / "cdf.png", n_boot=50)
    (ax,) = fig.axes
    (band,) = ax.collections
    xy = np.concatenate([p.vertices for p in band.get_paths()])
    assert set(xy[:, 1]) == {0.0, 1.0}
    assert xy[xy[:, 1] == 1.0, 0].min() == 3 and xy[xy[:, 1] == 0.0, 0].max() == 3
    assert xy[:, 0].min() == 0 and xy[:, 0].max() == 6
    assert list(ax.get_lines()[0].get_ydata()) == [0, 0, 0, 1, 1, 1, 1]


def grid_expectation(topk, test_indices, k):
    """Per grid row (test index, then method in the dict's order): the label and the train indices shown."""
    rows = []
    for t in test_indices:
        for m, tops in topk.items():
            top = tops.get(t, tops.get(str(t)))
            rows.append((f"{m}\ntest {t}", t, None if top is None else list(top)[:k]))
    return rows


@pytest.mark.parametrize("channels", [1, 3])
def test_plot_topk_grid_shows_each_methods_top_k_images(tmp_path, channels):
    rng = np.random.default_rng(0)
    test = rng.random((5, channels, 8, 8)).astype(np.float32)
    train = rng.random((30, channels, 8, 8)).astype(np.float32)
    topk = {"simclr/esvm": {1: list(range(10)), 3: [5, 4, 3]},
            "simclr/cos": {"1": [29, 28, 27, 26, 25, 24, 23, 22], "3": list(range(20, 30))},
            "simclr/knn": {1: [7]}}                                     # no top-k for test image 3
    k = 6
    out = tmp_path / "topk_grid.png"
    fig = figures.plot_topk_grid(test, train, topk, [1, 3], out, k=k)
    expect = grid_expectation(topk, [1, 3], k)
    assert len(expect) == 6
    width, height = png_size(out)
    assert (width, height) == pytest.approx(((k + 1) * 115 + 120, len(expect) * 115 + 40), abs=1)
    axes = np.array(fig.axes).reshape(len(expect), k + 1)

    def hwc(img):
        return img[0] if channels == 1 else np.transpose(img, (1, 2, 0))

    assert [ax.get_title() for ax in axes[0]] == ["test"] + [f"#{j}" for j in range(1, k + 1)]
    assert all(ax.get_title() == "" for ax in axes[1:].flat)
    n_images = 0
    for row, (label, t, top) in zip(axes, expect):
        assert row[0].get_ylabel() == label
        assert len(row[0].images) == 1
        np.testing.assert_array_equal(row[0].images[0].get_array(), hwc(test[t]))
        shown = top or []
        for j, ax in enumerate(row[1:]):
            if j < len(shown):
                assert len(ax.images) == 1
                np.testing.assert_array_equal(ax.images[0].get_array(), hwc(train[shown[j]]))
            else:
                assert not ax.images
        texts = [x.get_text() for x in row[1].texts]
        assert texts == (["no top-k"] if top is None else [])
        n_images += sum(len(ax.images) for ax in row)
    # test images: 2 x 3 methods; esvm 6 + 3, cos 6 + 6, knn 1 + 0 training images
    assert n_images == 6 + 9 + 12 + 1
    with pytest.raises(SimattrError, match="outside"):
        figures.plot_topk_grid(test, train, topk, [7], tmp_path / "bad.png", k=3)


# ----------------------------------------------------------------------------------------- tables
def test_write_tables(tmp_path):
    gs = [gather("simclr", "esvm", "removal", [1, 3, None, 2], k_max=5),
          gather("simclr", "cos", "removal", [4, None, None, None], k_max=5),
          gather("simclr", "esvm", "mislabel", [1, 1, 2, None], k_max=5),
          gather("supervised", "cos", "mislabel", [2, 2, 2, 2], k_max=5)]
    rows = statistics.summarize(gs, n_boot=100, seed=0)
    wins = statistics.win_rates(gs, **BOOT)
    b = write_bench(tmp_path / "b.tsv", 4.0, 10.0)
    stage_rows = costs.stage_costs({"embed": [b]}, {"embed": [b]})
    out = tmp_path / "report"
    render.write_tables(rows, wins, stage_rows, out)

    with (out / "support.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        got = list(reader)
        assert tuple(reader.fieldnames) == render.SUPPORT_COLUMNS
    assert len(got) == 4
    assert {"method", "metric", "n_test", "n_flipped", "median_support", "ci_low", "ci_high", "auc",
            "mean_trainings"} <= set(got[0])
    cos = next(r for r in got if r["method"] == "simclr/cos" and r["metric"] == "removal")
    assert cos["median_support"] == ">5" and cos["median_censored"] == "true"
    assert cos["n_flipped"] == "1"
    esvm = next(r for r in got if r["method"] == "simclr/esvm" and r["metric"] == "removal")
    assert esvm["median_support"] == "2" and float(esvm["auc"]) == pytest.approx((0.25 + 0.5 + 0.75 * 3) / 5)

    md = (out / "report.md").read_text()
    for name in ("simclr/esvm", "simclr/cos", "supervised/cos"):
        assert name in md
    assert "### removal" in md and "### mislabel" in md
    assert ">5" in md
    assert "![Support CDF](support_cdf.png)" in md and "(topk_grid.png)" in md
    assert "| embed | 1 | 4.0 | 0:00:04 |" in md
    # esvm beats cos on removal in 3 of 4 shared images (1<4, 3<inf, 2<inf; inf=inf tie)
    assert "| `simclr/esvm` | 75.0% *(within noise)* | — |" in md     # 4 images cannot settle it

    # deterministic bytes
    first = ((out / "support.csv").read_bytes(), (out / "report.md").read_bytes())
    render.write_tables(statistics.summarize(gs, n_boot=100, seed=0), statistics.win_rates(gs, **BOOT), stage_rows, out)
    assert ((out / "support.csv").read_bytes(), (out / "report.md").read_bytes()) == first


def test_load_gathers_roundtrip(tmp_path):
    from simattr.store import write_json

    g = gather("a", "r", "removal", [1, None])
    write_json(tmp_path / "g.json", g)
    assert statistics.load_gathers([tmp_path / "g.json"]) == [g]


def test_method_costs_sum_each_methods_jobs_and_count_gpu_jobs(tmp_path):
    import json

    b1, b2 = write_bench(tmp_path / "a.tsv", 10.0, 1), write_bench(tmp_path / "b.tsv", 4.0, 1)
    (tmp_path / "a.usage.json").write_text(json.dumps({"wall_s": 9.0, "cuda": True}))
    (tmp_path / "b.usage.json").write_text(json.dumps({"wall_s": 3.5, "cuda": False}))
    (tmp_path / "m.pt").write_bytes(b"\0" * 100)
    rows = costs.method_costs([("x/trak", "bench", str(b1)), ("x/trak", "usage", str(tmp_path / "a.usage.json")),
                               ("x/trak", "bench", str(b2)), ("x/trak", "usage", str(tmp_path / "b.usage.json")),
                               ("x/trak", "stored", str(tmp_path / "m.pt")), ("x/trak", "models", "5"),
                               ("y/knn", "bench", str(b2)), ("y/knn", "usage", str(tmp_path / "absent.json"))])
    assert rows == [
        {"method": "x/trak", "jobs": 2, "wall_s": 14.0, "cpu_s": 14.0, "gpu_s": 9.0, "models_trained": 5,
         "bytes": 100, "sidecar": ""},
        {"method": "y/knn", "jobs": 1, "wall_s": 4.0, "cpu_s": 4.0, "gpu_s": 0.0, "models_trained": 0, "bytes": 0,
         "sidecar": ""}]
    with pytest.raises(SimattrError, match="unknown kind 'time'"):
        costs.method_costs([("x", "time", "1")])


def test_an_external_methods_cost_adds_what_its_author_reported(tmp_path):
    import json

    b = write_bench(tmp_path / "a.tsv", 2.0, 1)
    side = tmp_path / "if.cost.json"
    side.write_text(json.dumps({"wall_s": 100.5, "gpu_s": 80, "models_trained": 3}))
    (row,) = costs.method_costs([("external/if", "bench", str(b)), ("external/if", "sidecar", str(side))])
    assert (row["wall_s"], row["gpu_s"], row["models_trained"], row["sidecar"]) == (102.5, 80.0, 3, str(side))
    render.write_tables([], [], [], tmp_path, mcosts=[row])
    assert "| `external/if` (+ author's) | 1 | 102.5 |" in (tmp_path / "report.md").read_text()
    for bad, match in (({"wall_s": -1}, "'wall_s' must be a number >= 0, got -1"),
                       ({"models_trained": 1.5}, "'models_trained' must be a whole number >= 0, got 1.5"),
                       ({"gpu_s": "10"}, "'gpu_s' must be a number >= 0"), ({"wall": 1}, "unknown keys wall"),
                       ([1], "expected a JSON object")):
        side.write_text(json.dumps(bad))
        with pytest.raises(SimattrError, match=f"{side.name}: .*{re.escape(match) if '(' in match else match}"):
            costs.method_costs([("external/if", "sidecar", str(side))])


def _scores(test, train, s):
    return {"test_indices": np.array(test), "train_indices": np.array(train), "scores": np.array(s, float)}


def test_overlap_of_a_method_with_itself_is_one_and_a_hand_case():
    a = [_scores([0, 1], [10, 11, 12, 13], [[4, 3, 2, 1], [1, 2, 3, 4]])]   # top-2: {10, 11}, {13, 12}
    b = [_scores([0, 1], [10, 11, 12, 13], [[4, 1, 3, 2], [1, 2, 3, 4]])]   # top-2: {10, 12}, {13, 12}
    rows = {(r["method_a"], r["method_b"], r["k"]): r for r in statistics.overlap_rows({"a": a, "b": b}, [2, 4])}
    assert rows[("a", "a", 2)]["jaccard"] == 1.0 and rows[("b", "b", 4)]["jaccard"] == 1.0
    # image 0: |{10}| / |{10, 11, 12}| = 1/3; image 1: 1; mean 2/3
    assert rows[("a", "b", 2)]["jaccard"] == pytest.approx(2 / 3) and rows[("a", "b", 2)]["n"] == 2
    assert rows[("b", "a", 4)]["jaccard"] == 1.0            # all four candidates: the same set


def test_lds_overlap_and_cost_tables_in_the_report(tmp_path):
    lds = statistics.lds_rows([{"encoder": "e", "ranker": "r", "n_test": 3, "n_models": 20, "alpha": 0.5,
                                "mean": 0.25, "ci_low": 0.1, "ci_high": 0.4, "n_undefined": 0,
                                "weights": "full_scores"}])
    overlap = [{"method_a": "e/r", "method_b": "e/r", "k": 10, "n": 3, "jaccard": 1.0}]
    mcosts = [{"method": "e/r", "jobs": 2, "wall_s": 1.5, "cpu_s": None, "gpu_s": 0.0, "models_trained": 0,
               "bytes": 2048}]
    render.write_tables([], [], [], tmp_path, lds=lds, overlap=overlap, mcosts=mcosts)
    md = (tmp_path / "report.md").read_text()
    assert "| `e/r` | 0.2500 | [0.1000, 0.4000] | 3 | 0 | 20 | full_scores |" in md
    assert "### top-10" in md and "| `e/r` | 1.000 |" in md and "| `e/r` | 2 | 1.5 |  | 0.0 | 0 | 2.00 KiB |" in md
    assert (tmp_path / "lds.csv").read_text().splitlines()[1] == "e/r,0.25,0.1,0.4,3,0,20,0.5,full_scores"
    assert (tmp_path / "cost.csv").read_text().splitlines()[1] == "e/r,2,1.5,,0.0,0,2048,"


def _curve_answer(t, support, flips_at, n=3, k_max=64, noisy=False):
    """An answer with a curve: n models correct below `flips_at`, none from it on (noisy: 2 of 3 near it)."""
    ks = sorted({0, flips_at - 1, flips_at, k_max})
    curve = []
    for k in ks:
        c = n if k < flips_at else 0
        if noisy and abs(k - flips_at) <= 1:
            c = 2 if k < flips_at else 1
        curve.append({"k": k, "n_models": n, "n_correct": c})
    return {"test_index": t, "support": support, "trainings": n * len(ks), "threshold": 0.5, "curve": curve}


def _g(ranker, answers, metric="removal", k_max=64, **extra):
    return {"dataset": "toy", "encoder": "e", "ranker": ranker, "metric": metric, "k_max": k_max,
            "answers": answers, **extra}


def test_model_noise_widens_the_median_interval_beyond_image_resampling():
    sure = _g("a", [_curve_answer(t, 20 + t, 20 + t, n=40) for t in range(12)])
    noisy = _g("a", [_curve_answer(t, 20 + t, 20 + t, n=3, noisy=True) for t in range(12)])
    bare = _g("a", [{k: v for k, v in a.items() if k != "curve"} for a in sure["answers"]])
    r_bare, r_sure, r_noisy = (statistics.summarize([g], n_boot=400, seed=0)[0] for g in (bare, sure, noisy))
    assert r_bare["median_support"] == r_sure["median_support"] == r_noisy["median_support"] == 25
    width = lambda r: r["ci_high"] - r["ci_low"]
    assert width(r_noisy) > width(r_bare) and width(r_noisy) > width(r_sure)
    assert r_noisy["flipped_ci_low"] <= 1.0 and r_sure["flipped_ci_high"] == 1.0


def test_win_rates_are_significant_only_when_the_difference_survives_model_noise():
    small = _g("small", [_curve_answer(t, 5, 5, n=20) for t in range(20)])
    large = _g("large", [_curve_answer(t, 50, 50, n=20) for t in range(20)])
    w = {(r["method_a"], r["method_b"]): r for r in statistics.win_rates([small, large], n_boot=400, seed=0)}
    assert w[("e/small", "e/large")]["win"] == 1.0 and w[("e/small", "e/large")]["significant"]
    assert w[("e/small", "e/large")]["p_value"] < 0.01
    # two methods whose answers differ only by seed noise: 11 vs 12, each on a coin-flip curve
    a = _g("a", [_curve_answer(t, 11, 11, noisy=True) for t in range(20)])
    b = _g("b", [_curve_answer(t, 12, 12, noisy=True) for t in range(20)])
    w = {(r["method_a"], r["method_b"]): r for r in statistics.win_rates([a, b], n_boot=400, seed=0)}
    assert w[("e/a", "e/b")]["win"] == 1.0 and not w[("e/a", "e/b")]["significant"]
    assert w[("e/a", "e/b")]["diff_ci_low"] < 0 < w[("e/a", "e/b")]["diff_ci_high"]


def test_replicates_give_a_test_retest_table():
    first = [_curve_answer(t, s, s) for t, s in enumerate([4, 8, 16, 32])]
    again = [_curve_answer(t, s, s) for t, s in enumerate([4, 10, 16])]
    again += [{"test_index": 3, "support": None, "trainings": 3, "curve": [{"k": 64, "n_models": 3, "n_correct": 3}]}]
    g = _g("a", first, replicates=[again], seed_sets=[0, 1], settings={"engine": "adaptive"})
    (row,) = statistics.retest_rows([g])
    assert (row["seed_set_a"], row["seed_set_b"], row["n"], row["identical"]) == (0, 1, 4, 2)
    assert row["flip_disagreements"] == 1
    assert row["median_rel_diff"] == pytest.approx(0.0) and row["rel_diffs"] == [0.0, 0.2, 0.0]
    assert row["spearman"] == pytest.approx(1.0)
    r = statistics.summarize([g], n_boot=100, seed=0)[0]
    assert r["seed_sets"] == 2 and r["engine"] == "adaptive"
    md = render.render_markdown([r], [], [], retest=[row])
    assert "## Test-retest across seed sets" in md and "| `e/a` | removal | 0 vs 1 | 4 | 2 |" in md


def test_cdf_plot_draws_a_band(tmp_path):
    g = _g("a", [_curve_answer(t, 10 + t, 10 + t, noisy=True) for t in range(8)])
    banded = figures.plot_cdf([g], tmp_path / "cdf.png", n_boot=50).axes[0]
    plain = figures.plot_cdf([g], tmp_path / "plain.png", n_boot=0).axes[0]
    assert len(banded.collections) == 1 and not plain.collections         # the band only with a bootstrap
    line, = banded.get_lines()
    x, y = cdf_points([10 + t for t in range(8)], 64)
    assert list(line.get_xdata()) == x and list(line.get_ydata()) == pytest.approx(y)
    assert list(plain.get_lines()[0].get_ydata()) == pytest.approx(y)     # the same curve either way
    xy = np.concatenate([p.vertices for p in banded.collections[0].get_paths()])
    assert xy[:, 1].min() >= 0 and xy[:, 1].max() <= 1 and xy[:, 1].max() > xy[:, 1].min()
    assert xy[:, 0].min() == 0 and xy[:, 0].max() == 65
    from matplotlib.colors import to_rgb

    assert tuple(banded.collections[0].get_facecolor()[0][:3]) == pytest.approx(to_rgb(line.get_color()))


def test_win_rate_tests_of_a_pair_mirror_each_other():
    rng = np.random.default_rng(3)
    a = _g("a", [_curve_answer(t, int(s), int(s), noisy=True) for t, s in enumerate(rng.integers(5, 40, 25))])
    b = _g("b", [_curve_answer(t, int(s), int(s), noisy=True) for t, s in enumerate(rng.integers(8, 48, 25))])
    w = {(r["method_a"], r["method_b"]): r for r in statistics.win_rates([a, b], n_boot=200, seed=0)}
    ab, ba = w[("e/a", "e/b")], w[("e/b", "e/a")]
    assert ab["p_value"] == ba["p_value"] and ab["significant"] == ba["significant"]
    assert ab["diff_ci_low"] == pytest.approx(-ba["diff_ci_high"]) and ab["diff_ci_high"] == pytest.approx(-ba["diff_ci_low"])


def test_a_bisection_answers_interval_is_about_the_reading_it_reports():
    # bisection read 32 (the smallest flipped probe) while the fitted curve crosses near 20: the interval
    # must be about 32's reading, so it holds the median it is printed beside
    answers = [{"test_index": t, "support": 32, "trainings": 8, "engine": "bisection", "threshold": 0.5, "k_max": 32,
                "curve": [{"k": 0, "n_models": 3, "n_correct": 3}, {"k": 16, "n_models": 3, "n_correct": 2},
                          {"k": 32, "n_models": 2, "n_correct": 0}]} for t in range(20)]
    r = statistics.summarize([_g("a", answers, k_max=32)], n_boot=300, seed=0)[0]
    assert r["median_support"] == 32 and r["ci_low"] <= 32 and (r["ci_high_censored"] or r["ci_high"] >= 32)


def test_a_table_without_rows_leaves_no_stale_file(tmp_path):
    g = _g("a", [_curve_answer(t, 10 + t, 10 + t) for t in range(4)], replicates=[
        [_curve_answer(t, 11 + t, 11 + t) for t in range(4)]], seed_sets=[0, 1])
    rows = statistics.summarize([g], n_boot=50, seed=0)
    render.write_tables(rows, [], [], tmp_path, retest=statistics.retest_rows([g]))
    assert (tmp_path / "retest.csv").exists()
    render.write_tables(rows, [], [], tmp_path, retest=[])
    assert not (tmp_path / "retest.csv").exists()


def test_a_flip_curve_figure_plots_the_answers_models_fit_and_interval(tmp_path):
    answer = {"encoder": "simclr", "ranker": "esvm", "metric": "removal", "test_index": 7, "threshold": 0.5,
              "k_max": 64, "support": 20, "support_ci90": [12, 30],
              "curve": [{"k": 0, "n_models": 3, "accuracy": 1.0, "fitted": 1.0},
                        {"k": 16, "n_models": 5, "accuracy": 0.6, "fitted": 0.6},
                        {"k": 24, "n_models": 5, "accuracy": 0.2, "fitted": 0.3},
                        {"k": 64, "n_models": 3, "accuracy": 0.0, "fitted": 0.0}]}
    fig = figures.plot_curve(answer, tmp_path / "c.png")
    (ax,) = fig.axes
    pts = ax.collections[0].get_offsets()
    assert pts[:, 0].tolist() == [0, 16, 24, 64] and pts[:, 1].tolist() == [1.0, 0.6, 0.2, 0.0]
    assert ax.collections[0].get_sizes().tolist() == [36, 60, 60, 36]              # area ~ models
    fitted = [ln for ln in ax.lines if ln.get_label() == "fitted curve"][0]
    assert list(fitted.get_ydata()) == [1.0, 0.6, 0.3, 0.0]
    assert [ln.get_xdata()[0] for ln in ax.lines if ln.get_label() == "support 20"] == [20]
    band = [p for p in ax.patches if p.get_label() == "90% interval"][0]
    assert band.get_x() == 12 and band.get_width() == 18
    assert (tmp_path / "c.png").stat().st_size > 0
    censored = {**answer, "support": None, "support_ci90": [40, None]}
    ax = figures.plot_curve(censored).axes[0]
    band = [p for p in ax.patches if p.get_label() == "90% interval"][0]
    assert (band.get_x(), band.get_width()) == (40, 24) and "not flipped by k=64" in ax.get_title()


# ------------------------------------------------------------------------------------------ planned vs spent
def test_the_planned_vs_spent_table_puts_each_stages_benchmarks_and_trainings_beside_the_plan(tmp_path):
    from simattr import plan as planmod

    def bench(rel, s):
        p = tmp_path / "toy" / "benchmarks" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"s\th:m:s\tmax_rss\n{s}\t0:00:01\t10\n")
        return str(p)

    stage = lambda st, jobs, bound=0, expected=0, wall=None: {      # noqa: E731
        "stage": st, "jobs": jobs, "tasks": 0, "models_bound": bound, "models_expected": expected, "wall_s": wall,
        "cpu_h": None if wall is None else wall / 3600, "gpu_h": None if wall is None else 0.0}
    p = {"stages": [stage("embed", 2), stage("queries", 1, 3, 3, 1.5), stage("subsets", 2, 20, 20, 10.0),
                    stage("support", 1, 40, 22, 30.0)],
         "time_per_model_s": 0.5, "time_source": "given (--time-per-model)", "expected_basis": "a test"}
    files = [bench("embed/pixels-train.tsv", 1.0), bench("embed/pixels-test.tsv", 2.0),
             bench("support/queries.tsv", 1.25), bench("attribution/subsets-lds-00000.tsv", 4.0),
             bench("support/pixels-knn_l2-removal.tsv", 25.0), bench("score/pixels-knn_l2-class-0.tsv", 9.0)]
    g = gather("pixels", "knn_l2", "removal", [1, None], trainings=[7, 9])
    g["replicates"] = [[answer(0, 1, trainings=5), answer(1, None, trainings=2)]]
    rows = planmod.planned_vs_spent(p, [(f, costs.read_benchmark(f)) for f in files], [g])
    got = {r["stage"]: r for r in rows}
    assert [r["stage"] for r in rows] == ["embed", "queries", "subsets", "support"]      # the plan's stages only
    assert (got["embed"]["spent_jobs"], got["embed"]["spent_wall_s"], got["embed"]["trained_models"]) == (2, 3.0, None)
    assert got["queries"]["trained_models"] == 3                  # every job ran: its fixed count
    assert got["subsets"]["spent_jobs"] == 1 and got["subsets"]["trained_models"] is None     # one of two ran
    assert got["support"]["trained_models"] == 7 + 9 + 5 + 2      # every replicate's trainings
    assert (got["support"]["planned_models_expected"], got["support"]["planned_models_bound"]) == (22, 40)
    render.write_tables([], [], [], tmp_path / "out", planned=rows, plan=p)
    with open(tmp_path / "out" / render.PLAN_FILE) as f:
        table = list(csv.DictReader(f))
    assert tuple(table[0]) == render.PLAN_COLUMNS and table[3]["spent_wall_s"] == "25.0"
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Planned vs spent" in md and "given (--time-per-model)" in md and "22 (40)" in md
    render.write_tables([], [], [], tmp_path / "out")            # no plan: no stale table
    assert not (tmp_path / "out" / render.PLAN_FILE).exists()
