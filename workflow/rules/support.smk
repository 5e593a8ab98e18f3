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
        dataset=D,
        test_fraction=config["dataset"]["test_fraction"],
        split_seed=config["dataset"]["split_seed"],
        n_test=config["support"]["n_test"],
        sample_seed=config["support"]["sample_seed"],
        flip_models=config["support"]["flip_models"],
        model=config["model"]["name"],
        hidden=config["model"]["hidden"],
        steps=config["model"]["steps"],
        lr=config["model"]["lr"],
        weight_decay=config["model"]["weight_decay"],
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        ENV
    shell:
        "simattr --log {log} queries --dataset {params.dataset} --test-fraction {params.test_fraction}"
        " --split-seed {params.split_seed} --n-test {params.n_test} --sample-seed {params.sample_seed}"
        " --flip-models {params.flip_models} --model {params.model} --hidden {params.hidden}"
        " --steps {params.steps} --lr {params.lr} --weight-decay {params.weight_decay} --out {output}"


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
        model=config["model"]["name"],
        hidden=config["model"]["hidden"],
        steps=config["model"]["steps"],
        lr=config["model"]["lr"],
        weight_decay=config["model"]["weight_decay"],
        cluster=config["launch"]["cluster"],
        parallelism=config["launch"]["parallelism"],
        timeout_min=config["launch"]["timeout_min"],
        cpus_per_task=config["launch"]["cpus_per_task"],
        gpus_per_node=config["launch"]["gpus_per_node"],
        mem_gb=config["launch"]["mem_gb"],
        partition=(
            f"--slurm-partition {config['launch']['slurm_partition']}"
            if config["launch"]["slurm_partition"]
            else ""
        ),
        answers=lambda wildcards: path(store.SUPPORT_DIR, **wildcards),
        submitit=lambda wildcards: path("{dataset}/submitit/{encoder}-{ranker}-{metric}", **wildcards),
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
        " --model {params.model} --hidden {params.hidden} --steps {params.steps} --lr {params.lr}"
        " --weight-decay {params.weight_decay} --cluster {params.cluster} --parallelism {params.parallelism}"
        " --timeout-min {params.timeout_min} --cpus-per-task {params.cpus_per_task}"
        " --gpus-per-node {params.gpus_per_node} --mem-gb {params.mem_gb} {params.partition}"
        " --submitit-dir {params.submitit} --answers-dir {params.answers} --out {output}"
