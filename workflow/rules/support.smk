# Stage 3: counterfactual support. `queries` trains the full-data models once (flip classes, the test
# image sample); `support` fans one submitit array task per sampled test image out for each
# (encoder, ranker, metric). It is a local rule: the tasks, not this job, go to the cluster.


rule queries:
    output:
        path(store.QUERIES),
    log:
        logfile("support", "queries"),
    benchmark:
        bench("support", "queries")
    params:
        settings=job_settings("queries"),
    threads: retrain_threads
    resources:
        mem_mb=retrain_mem_mb,
        runtime=retrain_runtime,
        gpu=retrain_gpus,
    conda:
        ENV
    shell:
        "simattr --log {log} --gpus {resources.gpu} queries --settings {params.settings:q} --out {output}"


rule support:
    input:
        queries=path(store.QUERIES),
        scores=class_scores,
    output:
        path(store.SUPPORT_GATHER),
    log:
        logfile("support", "{encoder}-{ranker}-{metric}"),
    benchmark:
        bench("support", "{encoder}-{ranker}-{metric}")
    params:
        settings=job_settings("support"),
        answers=lambda wildcards: path(store.SUPPORT_DIR, **wildcards),
        submitit=lambda wildcards: path("{dataset}/submitit/{encoder}-{ranker}-{metric}", **wildcards),
    # how the tasks run never changes an answer: resources, unlike params, do not trigger reruns
    resources:
        submitit_launch=ssettings.as_json(ssettings.launch(config)),
    localrule: True
    # on the local executor the tasks run on this machine: reserve their cores so that Snakemake does
    # not start other jobs on top of them
    threads: local_task_threads
    conda:
        ENV
    shell:
        "simattr --log {log} support --settings {params.settings:q} --encoder {wildcards.encoder}"
        " --ranker {wildcards.ranker} --metric {wildcards.metric} --queries {input.queries}"
        " --scores {input.scores} --launch {resources.submitit_launch:q}"
        " --submitit-dir {params.submitit} --answers-dir {params.answers} --out {output}"
