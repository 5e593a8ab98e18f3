# The model-based rankers and the models they (and LDS) train: TRAK checkpoints and scores; shards of models
# trained on random subsets of the training set (purpose datamodels or lds); the LDS of every method.


rule trak_checkpoints:
    output:
        path(store.TRAK_CHECKPOINTS),
    log:
        logfile("attribution", "trak-checkpoints"),
    benchmark:
        bench("attribution", "trak-checkpoints")
    params:
        data=DATA_ARGS,
        model=MODEL_ARGS,
        checkpoints=config["trak"]["checkpoints"],
        seed=config["trak"]["seed"],
    threads: retrain_threads
    resources:
        mem_mb=retrain_mem_mb,
        runtime=retrain_runtime,
        gpu=retrain_gpus,
    conda:
        ENV
    shell:
        "simattr --log {log} --gpus {resources.gpu} trak-checkpoints {params.data} {params.model} --checkpoints {params.checkpoints}"
        " --seed {params.seed} --out {output}"


rule trak:
    input:
        path(store.TRAK_CHECKPOINTS),
    output:
        path(store.TRAK_SCORES),
    log:
        logfile("attribution", "trak"),
    benchmark:
        bench("attribution", "trak")
    params:
        data=DATA_ARGS,
        model=MODEL_ARGS,
        proj_dim=config["trak"]["proj_dim"],
        projector_seed=config["trak"]["projector_seed"],
        batch_size=config["trak"]["batch_size"],
        lambda_reg=config["trak"]["lambda_reg"],
        projector=TRAK_PROJECTOR,   # not in the shell line: a new projection reruns the rule
    threads: 2
    resources:
        mem_mb=lambda wildcards: max(8000, retrain_mem_mb(wildcards)),
        runtime=retrain_runtime,
        gpu=retrain_gpus,
    conda:
        ENV
    shell:
        "simattr --log {log} --gpus {resources.gpu} trak {params.data} {params.model} --checkpoints-file {input}"
        " --proj-dim {params.proj_dim} --projector-seed {params.projector_seed}"
        " --trak-batch-size {params.batch_size} --lambda-reg {params.lambda_reg} --out {output}"


rule subsets:
    output:
        path(store.SUBSET_SHARD),
    log:
        logfile("attribution", "subsets-{purpose}-{shard}"),
    benchmark:
        bench("attribution", "subsets-{purpose}-{shard}")
    params:
        data=DATA_ARGS,
        model=MODEL_ARGS,
        alpha=lambda wildcards: config[wildcards.purpose]["alpha"],
        models=lambda wildcards: config[wildcards.purpose]["models"],
        shard_size=lambda wildcards: config[wildcards.purpose]["shard_size"],
        shard=lambda wildcards: int(wildcards.shard),
    threads: retrain_threads
    resources:
        mem_mb=retrain_mem_mb,
        runtime=retrain_runtime,
        gpu=retrain_gpus,
    conda:
        ENV
    shell:
        "simattr --log {log} --gpus {resources.gpu} subsets {params.data} {params.model} --purpose {wildcards.purpose}"
        " --alpha {params.alpha} --models {params.models} --shard-size {params.shard_size}"
        " --shard {params.shard} --out {output}"


rule lds:
    input:
        scores=class_scores,
        subsets=lambda wildcards: subset_shards("lds"),
    output:
        path(store.LDS),
    log:
        logfile("attribution", "lds-{encoder}-{ranker}"),
    benchmark:
        bench("attribution", "lds-{encoder}-{ranker}")
    params:
        n_boot=config["report"]["n_boot"],
        seed=config["report"]["seed"],
    threads: 1
    resources:
        mem_mb=4000,
    conda:
        ENV
    shell:
        "simattr --log {log} lds --scores {input.scores} --subsets {input.subsets} --n-boot {params.n_boot}"
        " --seed {params.seed} --out {output}"
