"""`simattr plan`: what a run will cost, before it runs; `simattr calibrate`: the time of one retrained model here.

The plan of a config is read off its settings and its dataset's listing (class sizes; no image is decoded, torch is
not imported): per stage the jobs and array tasks the workflow makes, the models it trains (an upper bound the run
can never exceed, and an expected count with the assumption it rests on), the hours they take from a time per
model, peak memory per job and bytes written. Where the time per model comes from, in this order: --time-per-model;
the calibration file (`simattr calibrate`, if its recipe and dataset match the config's); an earlier run's support
answers (their wall seconds per model trained); else the hours are unknown and the plan says how to get a time.

The bounds follow the code (simattr.support.search): an adaptive answer trains at most `support.max_models` models (the
full-data models reused at k = 0 do not count, models read back from a journal do); a bisection answer at most
seeds x (k_max probe + k = 0 probe + min(bisection_steps, ceil(log2 k_max)) + monotone_checks), less the seeds the
full-data models answer at k = 0 (seed set 0, seeds <= flip_models); plus the queries stage's flip_models, TRAK's
checkpoints, the datamodels and LDS subset models.

By role: estimate (the arithmetic, make_plan), render (text and the planned-vs-spent rows), calibrate (timing the
model); this module gathers them so callers keep plan.NAME.
"""
from __future__ import annotations

from .calibrate import calibrate, calibration_path
from .estimate import (
    ANSWER_BYTES,
    CALIBRATION,
    EXTRA_SEEDS,
    FOUND_SHARE,
    FOUND_SOURCE,
    HOW_TO_TIME,
    JOURNAL_BYTES_PER_MODEL,
    PLAN_VERSION,
    RULE_STAGE,
    STAGES,
    DataShape,
    adaptive_expected,
    answer_bound,
    data_shape,
    earlier_answers,
    feature_dim,
    make_plan,
    param_count,
    read_calibration,
    recipe_hash,
    time_per_model,
)
from .render import benchmark_stage, human_bytes, human_hours, planned_vs_spent, render, write_plan

__all__ = ["calibration_path", "calibrate", "PLAN_VERSION", "CALIBRATION", "STAGES", "RULE_STAGE",
           "ANSWER_BYTES", "JOURNAL_BYTES_PER_MODEL", "EXTRA_SEEDS", "FOUND_SHARE",
           "FOUND_SOURCE", "HOW_TO_TIME", "DataShape", "data_shape", "param_count", "feature_dim",
           "answer_bound", "earlier_answers", "time_per_model", "read_calibration",
           "recipe_hash", "make_plan", "adaptive_expected", "human_bytes", "human_hours", "render",
           "write_plan", "benchmark_stage", "planned_vs_spent"]
