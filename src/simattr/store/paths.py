"""The data contract's paths: every template (relative to the results root), the contract's version, and the
hashes and seeds derived from what a unit of work is."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

CONTRACT_VERSION = 7   # 2: queries.h5 full_correct; answers carry checks and violations. 3: embeddings carry
                       # the label map (class_names) and the files a folder dataset left out (skipped).
                       # 4: subset-model shards, TRAK attributions, LDS files; score files may carry
                       # full_scores (every training image, signed). 5: answers carry their engine, seed set,
                       # fitted curve, both readings and intervals; replicate answers {t}.rep{r}.json; gathers
                       # carry seed_sets and replicates; the report adds wins.csv and retest.csv. 6: external
                       # methods (scores/external/NAME/, source_sha256 in their score files and answers), the
                       # export folder. 7: CNN training states ({...}.state.pt beside journals and outputs),
                       # plan/calibration.json, the report's plan.csv

# Path templates (relative to the results root). The workflow rules build their patterns from these.
ENCODERS_DIR = "{dataset}/encoders"
ENCODER_STATE = ENCODERS_DIR + "/{encoder}.pt"
EMBEDDINGS_DIR = "{dataset}/embeddings"
ENCODER_EMBED_DIR = EMBEDDINGS_DIR + "/{encoder}"
EMBED_DIR = ENCODER_EMBED_DIR + "/{split}"
INDEX_NAME = "index.json"
EMBED_INDEX = EMBED_DIR + "/" + INDEX_NAME
SHARD_NAME = "shard-{shard:05d}.h5"
EMBED_SHARD = EMBED_DIR + "/shard-{shard}.h5"     # the workflow's pattern: {shard} is SHARD_NAME's 5 digits
SCORES_ROOT = "{dataset}/scores"
SCORES_DIR = SCORES_ROOT + "/{encoder}/{ranker}"
SCORES = SCORES_DIR + "/class-{cls}.h5"
SUPPORT_ROOT = "{dataset}/support"
QUERIES = SUPPORT_ROOT + "/queries.h5"
SUPPORT_DIR = SUPPORT_ROOT + "/{encoder}/{ranker}/{metric}"
SUPPORT_ANSWER = SUPPORT_DIR + "/{test_index}.json"          # replicate r >= 1: {test_index}.rep{r}.json
SUPPORT_GATHER = SUPPORT_ROOT + "/{encoder}/{ranker}/{metric}.json"
SUBMITIT_DIR = "{dataset}/submitit/{encoder}-{ranker}-{metric}"   # submitit's own files of a support job
SUBSETS_DIR = "{dataset}/subsets/{purpose}"
SUBSET_SHARD = SUBSETS_DIR + "/shard-{shard}.h5"  # {shard}: SHARD_NAME's 5 digits
ATTRIBUTIONS_DIR = "{dataset}/attributions"
TRAK_CHECKPOINTS = ATTRIBUTIONS_DIR + "/trak-checkpoints.pt"
TRAK_SCORES = ATTRIBUTIONS_DIR + "/trak.h5"
LDS_DIR = "{dataset}/lds"
LDS = LDS_DIR + "/{encoder}/{ranker}.json"
EXPORT_DIR = "{dataset}/export"
#: an outside method's scores that the workflow makes from the export (a method entry's `command`), and its cost
OUTSIDE_SCORES = "{dataset}/outside/{name}.pt"
OUTSIDE_COST = "{dataset}/outside/{name}.cost.json"
REPORT_DIR = "{dataset}/report"
REPORT_MANIFEST = REPORT_DIR + "/inputs.json"
METHOD_FIGURES = REPORT_DIR + "/methods/{encoder}/{ranker}"   # the HTML report's pages of one method
#: the report's files in REPORT_DIR (overlap with two methods or more, lds when LDS is on, retest with replicates)
REPORT_FILES = {"support": "support.csv", "markdown": "report.md", "cdf": "support_cdf.png", "grid": "topk_grid.png",
                "cost": "cost.csv", "overlap": "overlap.csv", "lds": "lds.csv", "wins": "wins.csv",
                "retest": "retest.csv", "plan": "plan.csv"}
BENCHMARK = "{dataset}/benchmarks/{stage}/{name}.tsv"      # a job's Snakemake benchmark
LOG = "{dataset}/logs/{stage}/{name}.log"                   # a job's log (and its usage record: usage_path)
#: (stage, folder): what each stage keeps on disk (the report's bytes stored per stage)
STORED = (("embed", EMBEDDINGS_DIR), ("embed", ENCODERS_DIR), ("trak", ATTRIBUTIONS_DIR),
          ("datamodels", SUBSETS_DIR.replace("{purpose}", "datamodels")),
          ("lds", SUBSETS_DIR.replace("{purpose}", "lds")), ("lds", LDS_DIR), ("score", SCORES_ROOT),
          ("support", SUPPORT_ROOT))
REPORT_MANIFEST_KEYS = ("gathers", "scores", "benchmarks", "stored", "lds", "method_costs")  # lists of strings


def answer_path(answers_dir: str | os.PathLike, test_index: int, replicate: int = 0) -> Path:
    """One support answer in SUPPORT_DIR: {test_index}.json for the configured seed set (replicate 0),
    {test_index}.rep{r}.json for replicate r >= 1 (seed set support.seed_set + r)."""
    name = Path(SUPPORT_ANSWER).name.format(test_index=test_index)
    return Path(answers_dir) / (name if replicate == 0 else name.replace(".json", f".rep{replicate}.json"))


def config_hash(values: dict[str, Any]) -> str:
    """A short stable hash of the settings that determine an output (sorted JSON, sha256)."""
    blob = json.dumps(values, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def fill(template: str, **fields: Any) -> str:
    """`template` with the given fields filled in; the others stay as {wildcards}."""
    class Keep(dict):
        def __missing__(self, key):
            return f"{{{key}}}"

    return template.format_map(Keep(fields))


def usage_path(log_path: str | os.PathLike) -> Path:
    """Where a command run with --log LOG records what it used (wall, CPU and GPU seconds): LOG with the suffix
    .usage.json."""
    return Path(log_path).with_suffix(".usage.json")


def seed_from(*identity: Any) -> int:
    """A 31-bit seed derived from what a unit of work is (so reruns of one unit repeat exactly)."""
    blob = json.dumps([str(x) for x in identity]).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:4], "little") & 0x7FFFFFFF
