# Stage 3: counterfactual support. `queries` trains the full-data models once (flip classes, the test
# image sample); `support` fans one submitit array task per sampled test image out for each
# (encoder, ranker, metric). It is a local rule: the tasks, not this job, go to the cluster.


rule queries:
    output:
        path(store.QUERIES),
    log:
        job_log("queries"),
    benchmark:
        job_bench("queries")
    conda:
        ENV
    threads: retrain_threads
    resources:
        mem_mb=retrain_mem_mb,
        runtime=retrain_runtime,
        gpu=retrain_gpus,
        state_every_s=str(config["launch"]["state_every_s"]),  # how often a CNN saves its state: no result changes
    params:
        settings=job_settings("queries"),
    shell:
        "SIMATTR_STATE_EVERY_S={resources.state_every_s} simattr --log {log} --gpus {resources.gpu}"
        " queries --settings {params.settings:q} --out {output}"


rule support:
    input:
        queries=path(store.QUERIES),
        scores=class_scores,
    output:
        path(store.SUPPORT_GATHER),
    log:
        job_log("support"),
    benchmark:
        job_bench("support")
    localrule: True
    conda:
        ENV
    # on the local executor the tasks run on this machine: reserve their cores so that Snakemake does
    # not start other jobs on top of them
    threads: local_task_threads
    resources:
        **launch_resources(),  # the launch keys (LAUNCH_KEYS): no rerun, a profile may override each
    params:
        settings=job_settings("support"),
        answers=lambda wildcards: path(store.SUPPORT_DIR, **wildcards),
        submitit=lambda wildcards: path(store.SUBMITIT_DIR, **wildcards),
    shell:
        (
            "simattr --log {log} support --settings {params.settings:q} --encoder {wildcards.encoder}"
            " --ranker {wildcards.ranker} --metric {wildcards.metric} --queries {input.queries}"
            " --scores {input.scores} --launch LAUNCH_WORDS --submitit-dir {params.submitit}"
            " --answers-dir {params.answers} --out {output}"
        ).replace("LAUNCH_WORDS", launch_words())
