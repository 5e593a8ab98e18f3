# Stage 1: dataset -> trained encoders -> HDF5 embedding shards per (encoder, split).


rule train_simclr:
    output:
        path(store.ENCODER_STATE, encoder="simclr"),
    log:
        logfile("embed", encoder_job("simclr")),
    benchmark:
        bench("embed", encoder_job("simclr"))
    params:
        data=DATA_ARGS,
        seed=config["encoders"]["simclr"]["seed"],
        arch=config["encoders"]["simclr"]["arch"],
        epochs=config["encoders"]["simclr"]["epochs"],
        batch_size=config["encoders"]["simclr"]["batch_size"],
        lr=config["encoders"]["simclr"]["lr"],
        temperature=config["encoders"]["simclr"]["temperature"],
        feature_dim=config["encoders"]["simclr"]["feature_dim"],
        proj_dim=config["encoders"]["simclr"]["proj_dim"],
    threads: 2
    resources:
        gpu=embed_gpus,
        mem_mb=4000,
    conda:
        ENV
    shell:
        "simattr --log {log} --gpus {resources.gpu} train-encoder {params.data} --encoder simclr"
        " --seed {params.seed} --param arch={params.arch}"
        " --param epochs={params.epochs} --param batch_size={params.batch_size} --param lr={params.lr}"
        " --param temperature={params.temperature} --param feature_dim={params.feature_dim}"
        " --param proj_dim={params.proj_dim} --out {output}"


rule train_supervised:
    output:
        path(store.ENCODER_STATE, encoder="supervised"),
    log:
        logfile("embed", encoder_job("supervised")),
    benchmark:
        bench("embed", encoder_job("supervised"))
    params:
        data=DATA_ARGS,
        seed=config["encoders"]["supervised"]["seed"],
        epochs=config["encoders"]["supervised"]["epochs"],
        batch_size=config["encoders"]["supervised"]["batch_size"],
        lr=config["encoders"]["supervised"]["lr"],
        hidden=config["encoders"]["supervised"]["hidden"],
    threads: 2
    resources:
        gpu=embed_gpus,
        mem_mb=4000,
    conda:
        ENV
    shell:
        "simattr --log {log} --gpus {resources.gpu} train-encoder {params.data} --encoder supervised"
        " --seed {params.seed}"
        " --param epochs={params.epochs} --param batch_size={params.batch_size} --param lr={params.lr}"
        " --param hidden={params.hidden} --out {output}"


rule import_resnet:
    input:
        checkpoint=resnet_checkpoint,
    output:
        path(store.ENCODER_STATE, encoder="resnet"),
    log:
        logfile("embed", encoder_job("resnet")),
    benchmark:
        bench("embed", encoder_job("resnet"))
    params:
        data=DATA_ARGS,
        arch=config["encoders"]["resnet"]["arch"],
        layout=config["encoders"]["resnet"]["layout"],
        feature=config["encoders"]["resnet"]["feature"],
        normalize=config["encoders"]["resnet"]["normalize"],
    threads: 1
    resources:
        mem_mb=4000,
    conda:
        ENV
    shell:
        "simattr --log {log} train-encoder {params.data} --encoder resnet --param checkpoint={input.checkpoint:q}"
        " --param arch={params.arch} --param layout={params.layout} --param feature={params.feature}"
        " --param normalize={params.normalize} --out {output}"


# one job per shard: a cluster embeds a large split on many GPUs at once
rule embed_shard:
    input:
        state=encoder_state,
    output:
        path(store.EMBED_SHARD),
    log:
        logfile("embed", "{encoder}-{split}-shard-{shard}"),
    benchmark:
        bench("embed", "{encoder}-{split}-shard-{shard}")
    params:
        data=DATA_ARGS,
        shard_size=config["embed"]["shard_size"],
        float16=config["embed"]["float16"],
        batch_size=embed_batch_size,
        state=lambda wildcards, input: f"--state {input.state}" if input.state else "",
    threads: config["embed"]["workers"] + 1
    resources:
        mem_mb=4000,
        gpu=embed_gpus,
        embed_workers=config["embed"]["workers"],   # a resource, not a param: it changes no result
    conda:
        ENV
    shell:
        "simattr --log {log} --gpus {resources.gpu} embed {params.data} --encoder {wildcards.encoder} --split {wildcards.split}"
        " --shard-size {params.shard_size} --shard {wildcards.shard} --batch-size {params.batch_size}"
        " --float16 {params.float16} --workers {resources.embed_workers} {params.state} --out {output}"


# the split's manifest: every shard checked against the current settings (a stale one is refused)
rule embed_index:
    input:
        state=encoder_state,
        shards=split_shards,
    output:
        path(store.EMBED_INDEX),
    log:
        logfile("embed", "{encoder}-{split}"),
    benchmark:
        bench("embed", "{encoder}-{split}")
    params:
        data=DATA_ARGS,
        state=lambda wildcards, input: f"--state {input.state}" if input.state else "",
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        ENV
    shell:
        "simattr --log {log} embed-index {params.data} --encoder {wildcards.encoder} --split {wildcards.split}"
        " {params.state} --shards {input.shards} --out {output}"
