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
    # how the tasks run never changes an answer: resources, unlike params, do not trigger reruns
    # (the profile may override each one: profiles/slurm sets submitit_cluster=slurm)
    resources:
        submitit_cluster=config["launch"]["cluster"],
        submitit_parallelism=config["launch"]["parallelism"],
        submitit_timeout_min=config["launch"]["timeout_min"],
        submitit_cpus_per_task=config["launch"]["cpus_per_task"],
        submitit_gpus_per_node=config["launch"]["gpus_per_node"],
        submitit_mem_gb=str(config["launch"]["mem_gb"]),
        submitit_partition=config["launch"]["slurm_partition"] or "",
        submitit_signal_delay_s=config["launch"]["signal_delay_s"],
        submitit_max_requeues=config["launch"]["max_requeues"],
        submitit_images_per_task=config["launch"]["images_per_task"],
        submitit_answers_at_once=config["launch"]["answers_at_once"],
        submitit_state_every_s=str(config["launch"]["state_every_s"]),
    params:
        settings=job_settings("support"),
        answers=lambda wildcards: path(store.SUPPORT_DIR, **wildcards),
        submitit=lambda wildcards: path(store.SUBMITIT_DIR, **wildcards),
    shell:
        "simattr --log {log} support --settings {params.settings:q} --encoder {wildcards.encoder}"
        " --ranker {wildcards.ranker} --metric {wildcards.metric} --queries {input.queries}"
        " --scores {input.scores} --launch cluster={resources.submitit_cluster}"
        " parallelism={resources.submitit_parallelism} timeout_min={resources.submitit_timeout_min}"
        " cpus_per_task={resources.submitit_cpus_per_task} gpus_per_node={resources.submitit_gpus_per_node}"
        " mem_gb={resources.submitit_mem_gb} slurm_partition={resources.submitit_partition:q}"
        " signal_delay_s={resources.submitit_signal_delay_s} max_requeues={resources.submitit_max_requeues}"
        " images_per_task={resources.submitit_images_per_task}"
        " answers_at_once={resources.submitit_answers_at_once} state_every_s={resources.submitit_state_every_s}"
        " --submitit-dir {params.submitit} --answers-dir {params.answers} --out {output}"
