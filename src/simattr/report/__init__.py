"""The report stage: support-size summaries, pairwise win rates, stage costs, figures and tables.

Modules:
  statistics  support summaries, answer draws, the two-level bootstrap, win rates, test-retest, LDS and overlap rows
  costs       Snakemake benchmarks read, bytes stored, costs per stage and per method
  figures     the support CDF and the top-k grid (matplotlib PNGs)
  render      Markdown and CSV rendering, the column tuples, write_tables
  stage       report_stage: reads the inputs and calls the others (`simattr report`)
"""
from .stage import report_stage

__all__ = ["report_stage"]
