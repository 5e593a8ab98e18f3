import os

from simattr import plan as plan_mod

# Stage 4: per dataset, the comparison tables (CSV, Markdown) and plots.


# The report's inputs run to thousands of paths on ImageNet (score files, benchmarks, cost entries), past
# Linux's 128 KiB limit on one argument (the whole shell command is one), so they travel in a JSON manifest
# written by this local rule. Its params are the lists (it has no inputs: it names files, it does not read them),
# so it is rewritten only when a list changes, not whenever an upstream file is.
localrules:
    report_manifest,


rule report_manifest:
    output:
        path(store.REPORT_MANIFEST),
    log:
        job_log("report_manifest"),
    params:
        gathers=REPORT_GATHERS,
        scores=REPORT_SCORES,
        lds=REPORT_LDS,
        benchmarks=[f"{s}={f}" for s, f in REPORT_BENCHMARKS],
        method_costs=METHOD_COST_ENTRIES,
        stored=[f"{stage}={path(folder)}" for stage, folder in store.STORED],
    run:
        write_report_manifest(output[0], log[0], params)


# The report's planned-vs-spent table compares the run with its plan: `simattr plan` made from the same settings
# (the `plan` param: what the plan reads, so a change reruns the report) and the calibration file, without this
# run's answers, i.e. the plan one makes before the run: the calibration file (simattr calibrate) is an input when
# there is one (its appearing or changing reruns the report). How tasks run (`launch`) reaches it as resources, as
# for support: no rerun.
rule report:
    input:
        manifest=path(store.REPORT_MANIFEST),
        calibration=lambda wildcards: [f for f in [path(plan_mod.CALIBRATION)] if os.path.exists(f)],
        gathers=REPORT_GATHERS,
        scores=REPORT_SCORES,
        benchmarks=[f for _, f in REPORT_BENCHMARKS],
        lds=REPORT_LDS,
        external_costs=EXTERNAL_COSTS,
    output:
        report_outputs(),
    log:
        job_log("report"),
    conda:
        ENV
    threads: 1
    resources:
        **launch_resources(PLAN_LAUNCH_KEYS, "plan"),  # the launch keys the plan reads: plan_KEY
    params:
        settings=job_settings("report"),
        plan=job_settings("plan"),
        calibration=lambda wildcards, input: f"--calibration {input.calibration}" if input.calibration else "",
        out_dir=lambda wildcards, output: os.path.dirname(output[0]),
    shell:
        (
            "simattr --log {log} report --settings {params.settings:q} --manifest {input.manifest}"
            " --plan-settings {params.plan:q} {params.calibration} --launch LAUNCH_WORDS --out-dir {params.out_dir}"
        ).replace("LAUNCH_WORDS", launch_words(PLAN_LAUNCH_KEYS, "plan"))


# The HTML report's pages of one method (snakemake --report report.html): its top-k grid and every answer's flip curve.
rule method_figures:
    input:
        gathers=method_gathers,
        scores=class_scores,
    output:
        report(
            directory(path(store.METHOD_FIGURES)),
            patterns=["{name}.png"],
            caption="../report/method.rst",
            category="Methods",
            subcategory="{encoder}/{ranker}",
        ),
    log:
        job_log("method_figures"),
    benchmark:
        job_bench("method_figures")
    conda:
        ENV
    threads: 1
    params:
        settings=job_settings("method-figures"),
    shell:
        "simattr --log {log} method-figures --settings {params.settings:q} --gathers {input.gathers}"
        " --scores {input.scores} --out-dir {output}"
