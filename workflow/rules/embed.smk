# Stage 1: dataset -> trained encoders -> HDF5 embedding shards per (encoder, split).


rule train_simclr:
    output:
        path(store.ENCODER_STATE, encoder="simclr"),
    log:
        job_log("train_simclr"),
    benchmark:
        job_bench("train_simclr")
    params:
        settings=job_settings("train-encoder", encoder="simclr"),
    threads: 2
    resources:
        gpu=embed_gpus,
        mem_mb=4000,
    conda:
        ENV
    shell:
        "simattr --log {log} --gpus {resources.gpu} train-encoder --settings {params.settings:q} --encoder simclr"
        " --out {output}"


rule train_supervised:
    output:
        path(store.ENCODER_STATE, encoder="supervised"),
    log:
        job_log("train_supervised"),
    benchmark:
        job_bench("train_supervised")
    params:
        settings=job_settings("train-encoder", encoder="supervised"),
    threads: 2
    resources:
        gpu=embed_gpus,
        mem_mb=4000,
    conda:
        ENV
    shell:
        "simattr --log {log} --gpus {resources.gpu} train-encoder --settings {params.settings:q} --encoder supervised"
        " --out {output}"


rule import_resnet:
    input:
        checkpoint=resnet_checkpoint,
    output:
        path(store.ENCODER_STATE, encoder="resnet"),
    log:
        job_log("import_resnet"),
    benchmark:
        job_bench("import_resnet")
    params:
        settings=job_settings("train-encoder", encoder="resnet"),
    threads: 1
    resources:
        mem_mb=4000,
    conda:
        ENV
    shell:
        "simattr --log {log} train-encoder --settings {params.settings:q} --encoder resnet --out {output}"

rule embed_shard:
    input:
        state=encoder_state,
    output:
        path(store.EMBED_SHARD),
    log:
        job_log("embed_shard"),
    benchmark:
        job_bench("embed_shard")
    params:
        settings=job_settings("embed"),
        state=lambda wildcards, input: f"--state {input.state}" if input.state else "",
    threads: config["embed"]["workers"] + 1
    resources:
        mem_mb=4000,
        gpu=embed_gpus,
        embed_workers=config["embed"]["workers"],   # a resource, not a param: it changes no result
    conda:
        ENV
    shell:
        "simattr --log {log} --gpus {resources.gpu} embed --settings {params.settings:q}"
        " --encoder {wildcards.encoder} --split {wildcards.split} --shard {wildcards.shard}"
        " --workers {resources.embed_workers} {params.state} --out {output}"

rule embed_index:
    input:
        state=encoder_state,
        shards=split_shards,
    output:
        path(store.EMBED_INDEX),
    log:
        job_log("embed_index"),
    benchmark:
        job_bench("embed_index")
    params:
        settings=job_settings("embed-index"),
        state=lambda wildcards, input: f"--state {input.state}" if input.state else "",
    threads: 1
    resources:
        mem_mb=1000,    # reads labels and indices only (16 bytes an image; store.write_index), never the features
    conda:
        ENV
    shell:
        "simattr --log {log} embed-index --settings {params.settings:q} --encoder {wildcards.encoder}"
        " --split {wildcards.split} {params.state} --shards {input.shards} --out {output}"
