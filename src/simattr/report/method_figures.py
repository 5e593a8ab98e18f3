"""The method figures stage (`simattr method-figures`): per method, the pages of the HTML report
(`snakemake --report`): its top-k training images for every sampled test image (topk.png) and one flip-curve figure
per stored answer (curve-{metric}-{test_index}.png), written into one folder that appears whole or not at all."""
from __future__ import annotations

import logging
from pathlib import Path

from .. import datasets, store
from .figures import TOPK_SHOWN, plot_curve, plot_topk_grid

log = logging.getLogger("simattr")


def method_figures_stage(*, data: datasets.Spec, gathers: list[str], score_files: list[str], out_dir: str,
                         k: int = TOPK_SHOWN) -> list[str]:
    """The method's figures in out_dir; returns their names."""
    out = Path(out_dir)
    answers = [a for g in gathers for a in store.read_json(g)["answers"]]
    shown = sorted({int(a["test_index"]) for a in answers})
    method, topk = None, {}
    for f in score_files:
        sc = store.read_scores(f)
        method = f"{sc['attrs']['encoder']}/{sc['attrs']['ranker']}"
        for t, row in zip(sc["test_indices"].tolist(), sc["topk"]):
            if t in shown:
                topk[t] = row.tolist()
    names = []
    with store.atomic_dir(out) as tmp:
        if shown and method:
            plot_topk_grid(datasets.load_split(data, "test"), datasets.load_split(data, "train"), {method: topk},
                           shown, tmp / "topk.png", k=k)
            names.append("topk.png")
        for a in answers:
            name = f"curve-{a['metric']}-{a['test_index']}.png"
            plot_curve(a, tmp / name)
            names.append(name)
    log.info("%s: %d figures -> %s", method, len(names), out)
    return names
