"""The report's figures (matplotlib, Agg): the support CDF per metric and method (plot_cdf) and the grid of each
method's top-k training images for a few test images (plot_topk_grid). Each writes its PNG atomically
(store.atomic_path) and returns the matplotlib Figure it saved, so what it plots can be inspected."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from ..config import METRICS
from ..errors import SimattrError
from ..images import to_unit
from ..store import atomic_path
from .statistics import (
    check_gathers,
    draw_matrix,
    method_name,
    metric_order,
    sorted_gathers,
    supports,
    two_level_samples,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TOPK_SHOWN = 8          # training images per test image in the top-k grids


def _new_figure(figsize: tuple[float, float]):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, dpi=100)


def _save_png(fig, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})


def plot_cdf(gathers: list[dict], path: str | os.PathLike, *, n_boot: int = 200, seed: int = 0) -> Figure:
    """One PNG, one subplot per metric, one step curve per method: fraction of test images with
    support <= k for k = 0..k_max (censored answers never count as flipped), in a band: the 95% interval of
    that fraction at each k under the two-level bootstrap (images and models), when n_boot > 0. Returns the
    Figure saved: per axis (metric) one step line per method (x = k, y = the fraction) and one band each."""
    check_gathers(gathers)
    gs = sorted_gathers(gathers)
    metrics = sorted({g["metric"] for g in gs}, key=metric_order) or list(METRICS[:1])
    methods = sorted({method_name(g) for g in gs})
    fig = _new_figure((5.2 * len(metrics), 4.2))
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    import matplotlib as mpl

    colors = mpl.colormaps["tab10" if len(methods) <= 10 else "tab20"]
    for ax, metric in zip(axes, metrics):
        mine = [g for g in gs if g["metric"] == metric]
        k_top = max((int(g["k_max"]) for g in mine), default=1)
        for g in mine:
            s = supports(g)
            k_max = int(g["k_max"])
            ks = np.arange(0, k_max + 1)
            frac = (s[None, :] <= ks[:, None]).mean(axis=1) if len(s) else np.zeros(len(ks))
            # one extra step past k_max so that answers of exactly k_max show as a jump
            ks, frac = np.append(ks, k_max + 1), np.append(frac, frac[-1])
            color = colors(methods.index(method_name(g)) % colors.N)
            ax.step(ks, frac, where="post", color=color, label=f"{method_name(g)} (n={len(s)})", linewidth=1.6)
            if n_boot > 0 and len(s):
                boot = np.sort(two_level_samples(draw_matrix(g, [int(a["test_index"]) for a in g["answers"]]),
                                                 n_boot, np.random.default_rng(seed)), axis=1)
                at = np.stack([np.searchsorted(b, ks, side="right") for b in boot]) / boot.shape[1]
                ax.fill_between(ks, np.quantile(at, 0.025, axis=0), np.quantile(at, 0.975, axis=0), step="post",
                                color=color, alpha=0.15, linewidth=0)
        ax.set_xlim(0, k_top + 1)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{metric} support")
        verb = "removed" if metric == "removal" else "relabelled"
        ax.set_xlabel(f"k (top-k training images {verb})")
        ax.set_ylabel("fraction of test images flipped (support ≤ k)")
        ax.grid(True, alpha=0.3)
        if mine:
            ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    _save_png(fig, path)
    return fig


def _to_hwc(img: np.ndarray) -> tuple[np.ndarray, str | None]:
    a = np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)
    if a.ndim == 2:
        return a, "gray"
    if a.ndim != 3 or a.shape[0] not in (1, 3):
        raise SimattrError(f"image of shape {a.shape}: expected (C, H, W) with C = 1 or 3")
    if a.shape[0] == 1:
        return a[0], "gray"
    return np.transpose(a, (1, 2, 0)), None


def _lookup(topk: Mapping[Any, Sequence[int]], t: int) -> Sequence[int] | None:
    if t in topk:
        return topk[t]
    if str(t) in topk:  # dicts read back from JSON have string keys
        return topk[str(t)]
    return None


def plot_topk_grid(test_images, train_images,
                   topk_by_method: dict[str, dict[int, list[int]]], test_indices: list[int],
                   path: str | os.PathLike, k: int = 8) -> Figure:
    """Rows: for each test index, one row per method (in the dict's order): the test image, then the
    method's top-k training images (best first). Missing entries leave blank cells. The images are (N, C, H, W)
    arrays or anything with len() and [i] (a datasets.Split decodes only the images shown). Returns the Figure
    saved: its axes, a (rows, k + 1) grid in row-major order, each showing at most one image."""
    if k < 1:
        raise ValueError("k must be >= 1")
    methods = list(topk_by_method)
    n_rows = max(1, len(test_indices) * len(methods))
    n_test, n_train = len(test_images), len(train_images)
    cell = 1.15
    fig = _new_figure(((k + 1) * cell + 1.2, n_rows * cell + 0.4))
    axes = fig.subplots(n_rows, k + 1, squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for sp in ax.spines.values():
            sp.set_visible(False)
    r = 0
    for t in test_indices:
        t = int(t)
        if not 0 <= t < n_test:
            raise SimattrError(f"test index {t} is outside the {n_test} test images given")
        timg, tcmap = _to_hwc(test_images[t])
        for m in methods:
            row = axes[r]
            row[0].imshow(timg, cmap=tcmap, vmin=0, vmax=1, interpolation="nearest")
            for sp in row[0].spines.values():
                sp.set_visible(True)
                sp.set_color("tab:red")
                sp.set_linewidth(2)
            row[0].set_ylabel(f"{m}\ntest {t}", rotation=0, ha="right", va="center", fontsize=8)
            top = _lookup(topk_by_method[m], t)
            if top is None:
                row[1].text(0.5, 0.5, "no top-k", ha="center", va="center", fontsize=7,
                            transform=row[1].transAxes)
                top = []
            for j, i in enumerate(list(top)[:k]):
                i = int(i)
                if not 0 <= i < n_train:
                    raise SimattrError(f"method {m}, test {t}: train index {i} is outside the {n_train} "
                                       f"training images given")
                img, cmap = _to_hwc(train_images[i])
                row[j + 1].imshow(img, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            r += 1
    axes[0][0].set_title("test", fontsize=8)
    for j in range(1, k + 1):
        axes[0][j].set_title(f"#{j}", fontsize=8)
    fig.subplots_adjust(left=min(0.45, 1.3 / ((k + 1) * cell + 1.2)), right=0.99, bottom=0.01,
                        top=1 - 0.3 / (n_rows * cell + 0.4), wspace=0.05, hspace=0.08)
    _save_png(fig, path)
    return fig


def plot_explanation(image, train_images, record: Mapping[str, Any], path: str | os.PathLike | None = None,
                     per_row: int = 8) -> Figure:
    """An explained image (simattr.explain record) beside its top-k training images, best first, `per_row` to a
    row, each titled with its training index, class and score; the image (raw, as datasets.read_image gives it, or
    None) titled with its class and how it was found. Saved as PNG at `path` when given; returns the Figure: axes
    in row-major order, the first the image's."""

    top = list(record["top"])
    cols = min(per_row, max(1, len(top))) + 1
    rows = max(1, -(-len(top) // per_row))
    height = rows * 1.6 + 0.55
    fig = _new_figure((cols * 1.3 + 0.2, height))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_axis_off()
    head = axes[0][0]
    if image is not None:
        img, cmap = _to_hwc(to_unit(np.asarray(image)))
        head.imshow(img, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    prob = "" if record.get("probability") is None else f" p={record['probability']:.2f}"
    head.set_title(f"{record['name']}\n{record['class_name']} ({record['label_source']}{prob})", fontsize=7,
                   color="tab:red")
    head.set_axis_on()
    for sp in head.spines.values():
        sp.set_color("tab:red")
        sp.set_linewidth(2)
    for j, t in enumerate(top):
        ax = axes[j // per_row][1 + j % per_row]
        img, cmap = _to_hwc(train_images[int(t["train_index"])])
        ax.imshow(img, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"#{t['train_index']} {t['class_name']}\n{t['score']:.3g}", fontsize=7)
    fig.suptitle(f"{record['method']}: top-{len(top)} training images (index, class, score)", fontsize=8,
                 y=1 - 0.08 / height, va="top")
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.6 / height, wspace=0.08, hspace=0.55)
    if path is not None:
        _save_png(fig, path)
    return fig


def plot_curve(answer: Mapping[str, Any], path: str | os.PathLike | None = None) -> Figure:
    """One answer's flip curve: per probed k its models' accuracy on the image (marker area ~ models), the fitted
    curve, the threshold, and the answer (its support, a vertical line) with its 90% interval (a band; to k_max when
    it may be censored). Returns the Figure (one axis: the accuracy points first, then the fitted line)."""
    curve = list(answer["curve"])
    fig = _new_figure((4.2, 2.6))
    ax = fig.subplots()
    k = np.array([c["k"] for c in curve], float)
    ax.scatter(k, [c["accuracy"] for c in curve], s=[12 * c["n_models"] for c in curve], color="tab:blue",
               alpha=0.7, label="models' accuracy (area: models)", zorder=3)
    ax.plot(k, [c["fitted"] for c in curve], color="tab:orange", label="fitted curve")
    ax.axhline(float(answer["threshold"]), color="grey", ls=":", lw=1, label="threshold")
    lo, hi = answer.get("support_ci90") or [None, None]
    k_max = float(answer["k_max"])
    if lo is not None:
        ax.axvspan(lo, k_max if hi is None else hi, color="tab:green", alpha=0.15, label="90% interval")
    s = answer.get("support")
    if s is not None:
        ax.axvline(s, color="tab:green", lw=1.5, label=f"support {s}")
    title = (f"{answer['encoder']}/{answer['ranker']} {answer['metric']}, test {answer['test_index']}: "
             + (f"support {s}" if s is not None else f"not flipped by k={answer['k_max']}"))
    ax.set_title(title, fontsize=8)
    ax.set_xlabel("k (training images removed)" if answer["metric"] == "removal" else "k (training images relabelled)",
                  fontsize=8)
    ax.set_ylabel("accuracy on the image", fontsize=8)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlim(-0.02 * k_max, k_max * 1.02)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    if path is not None:
        _save_png(fig, path)
    return fig
