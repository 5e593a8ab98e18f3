# simattr: similarity-based data attribution and its counterfactual evaluation.
# Stages: embed -> score -> support -> report. See docs/data-contract.md for the data contract.
from snakemake.utils import min_version

min_version("8.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/embed.smk"
include: "workflow/rules/score.smk"
include: "workflow/rules/attribution.smk"
include: "workflow/rules/support.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/export.smk"


rule all:
    default_target: True
    input:
        report_files(),
        method_figure_dirs(),
