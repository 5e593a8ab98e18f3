# The model-based rankers and the models they (and LDS) train: TRAK checkpoints and scores; shards of models
# trained on random subsets of the training set (purpose datamodels or lds); the LDS of every method.


rule trak_checkpoints:
    output:
        path(store.TRAK_CHECKPOINTS),
    log:
        job_log("trak_checkpoints"),
    benchmark:
        job_bench("trak_checkpoints")
    conda:
        ENV
    threads: retrain_threads
    resources:
        mem_mb=retrain_mem_mb,
        runtime=retrain_runtime,
        gpu=retrain_gpus,
        state_every_s=str(config["launch"]["state_every_s"]),  # how often a CNN saves its state: no result changes
    params:
        settings=job_settings("trak-checkpoints"),
    shell:
        "SIMATTR_STATE_EVERY_S={resources.state_every_s} simattr --log {log} --gpus {resources.gpu}"
        " trak-checkpoints --settings {params.settings:q} --out {output}"


rule trak:
    input:
        path(store.TRAK_CHECKPOINTS),
    output:
        path(store.TRAK_SCORES),
    log:
        job_log("trak"),
    benchmark:
        job_bench("trak")
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=lambda wildcards: max(8000, retrain_mem_mb(wildcards)),
        runtime=retrain_runtime,
        gpu=retrain_gpus,
    params:
        settings=job_settings("trak"),  # with the projector's name: a new projection reruns the rule
    shell:
        "simattr --log {log} --gpus {resources.gpu} trak --settings {params.settings:q}"
        " --checkpoints-file {input} --out {output}"


rule subsets:
    output:
        path(store.SUBSET_SHARD),
    log:
        job_log("subsets"),
    benchmark:
        job_bench("subsets")
    conda:
        ENV
    threads: retrain_threads
    resources:
        mem_mb=retrain_mem_mb,
        runtime=retrain_runtime,
        gpu=retrain_gpus,
        state_every_s=str(config["launch"]["state_every_s"]),  # how often a CNN saves its state: no result changes
    params:
        settings=job_settings("subsets"),
    shell:
        "SIMATTR_STATE_EVERY_S={resources.state_every_s} simattr --log {log} --gpus {resources.gpu}"
        " subsets --settings {params.settings:q}"
        " --purpose {wildcards.purpose} --shard {wildcards.shard} --out {output}"


rule lds:
    input:
        scores=class_scores,
        subsets=lambda wildcards: subset_shards("lds"),
    output:
        path(store.LDS),
    log:
        job_log("lds"),
    benchmark:
        job_bench("lds")
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
    params:
        settings=job_settings("lds"),
    shell:
        "simattr --log {log} lds --settings {params.settings:q} --scores {input.scores} --subsets {input.subsets}"
        " --out {output}"
