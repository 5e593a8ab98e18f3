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
        data=DATA_ARGS,
        n_test=config["support"]["n_test"],
        sample_seed=config["support"]["sample_seed"],
        flip_models=config["support"]["flip_models"],
        model=MODEL_ARGS,
    threads: retrain_threads
    resources:
        mem_mb=retrain_mem_mb,
        runtime=retrain_runtime,
        gpu=retrain_gpus,
    conda:
        ENV
    shell:
        "simattr --log {log} --gpus {resources.gpu} queries {params.data} --n-test {params.n_test} --sample-seed {params.sample_seed}"
        " --flip-models {params.flip_models} {params.model} --out {output}"


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
        dataset=D,
        k_max=lambda wildcards: config["support"][wildcards.metric]["k_max"],
        bisection_steps=lambda wildcards: config["support"][wildcards.metric]["bisection_steps"],
        seeds=config["support"]["seeds"],
        threshold=config["support"]["threshold"],
        early_stop=config["support"]["early_stop"],
        monotone_checks=config["support"]["monotone_checks"],
        engine=config["support"]["engine"],
        seed_set=config["support"]["seed_set"],
        replicates=config["support"]["replicates"],
        seeds_min=config["support"]["seeds_min"],
        seeds_max=config["support"]["seeds_max"],
        max_models=config["support"]["max_models"],
        confidence=config["support"]["confidence"],
        model=MODEL_ARGS,
        answers=lambda wildcards: path(store.SUPPORT_DIR, **wildcards),
        submitit=lambda wildcards: path("{dataset}/submitit/{encoder}-{ranker}-{metric}", **wildcards),
    # how the tasks run never changes an answer: resources, unlike params, do not trigger reruns
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
    localrule: True
    # on the local executor the tasks run on this machine: reserve their cores so that Snakemake does
    # not start other jobs on top of them
    threads: local_task_threads
    conda:
        ENV
    shell:
        "simattr --log {log} support --dataset {params.dataset} --encoder {wildcards.encoder}"
        " --ranker {wildcards.ranker} --metric {wildcards.metric} --queries {input.queries}"
        " --scores {input.scores} --k-max {params.k_max} --bisection-steps {params.bisection_steps}"
        " --seeds {params.seeds} --threshold {params.threshold} --early-stop {params.early_stop}"
        " --monotone-checks {params.monotone_checks} --engine {params.engine} --seed-set {params.seed_set}"
        " --replicates {params.replicates} --seeds-min {params.seeds_min} --seeds-max {params.seeds_max}"
        " --max-models {params.max_models} --confidence {params.confidence}"
        " {params.model} --cluster {resources.submitit_cluster}"
        " --parallelism {resources.submitit_parallelism} --timeout-min {resources.submitit_timeout_min}"
        " --cpus-per-task {resources.submitit_cpus_per_task} --gpus-per-node {resources.submitit_gpus_per_node}"
        " --mem-gb {resources.submitit_mem_gb} --slurm-partition '{resources.submitit_partition}'"
        " --signal-delay-s {resources.submitit_signal_delay_s} --max-requeues {resources.submitit_max_requeues}"
        " --images-per-task {resources.submitit_images_per_task}"
        " --answers-at-once {resources.submitit_answers_at_once}"
        " --submitit-dir {params.submitit} --answers-dir {params.answers} --out {output}"
