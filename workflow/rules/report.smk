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
        gathers=gather_files(),
        scores=all_scores(),
        lds=lds_files(),
        benchmarks=[f"{s}={f}" for s, f in report_benchmarks()],
        method_costs=method_cost_entries(),
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
        gathers=gather_files(),
        scores=all_scores(),
        benchmarks=[f for _, f in report_benchmarks()],
        lds=lds_files(),
        external_costs=external_costs(),
    output:
        report_outputs(),
    log:
        job_log("report"),
    conda:
        ENV
    threads: 1
    resources:
        plan_parallelism=config["launch"]["parallelism"],
        plan_images_per_task=config["launch"]["images_per_task"],
        plan_cpus_per_task=config["launch"]["cpus_per_task"],
        plan_gpus_per_node=config["launch"]["gpus_per_node"],
    params:
        settings=job_settings("report"),
        plan=job_settings("plan"),
        calibration=lambda wildcards, input: f"--calibration {input.calibration}" if input.calibration else "",
        out_dir=lambda wildcards, output: os.path.dirname(output[0]),
    shell:
        "simattr --log {log} report --settings {params.settings:q} --manifest {input.manifest}"
        " --plan-settings {params.plan:q} {params.calibration} --launch parallelism={resources.plan_parallelism}"
        " images_per_task={resources.plan_images_per_task} cpus_per_task={resources.plan_cpus_per_task}"
        " gpus_per_node={resources.plan_gpus_per_node} --out-dir {params.out_dir}"


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
