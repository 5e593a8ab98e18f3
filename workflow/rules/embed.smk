# Stage 1: dataset -> trained encoders -> HDF5 embedding shards per (encoder, split).


# An encoder's state: the trained ones (sconfig.TRAINED_ENCODERS: simclr, supervised) are fit on the train split
# here, resnet's is imported from its checkpoint (import_resnet). Either way its log and benchmark are
# train-ENCODER / import-resnet (simattr.pipeline.STATE_RULES: the rule of each).
rule train_encoder:
    output:
        path(store.ENCODER_STATE),
    log:
        job_log("train_encoder"),
    benchmark:
        job_bench("train_encoder")
    wildcard_constraints:
        encoder="|".join(sconfig.TRAINED_ENCODERS),
    conda:
        ENV
    threads: 2
    resources:
        gpu=embed_gpus,
        mem_mb=4000,
    params:
        settings=job_settings("train-encoder"),
    shell:
        "simattr --log {log} --gpus {resources.gpu} train-encoder --settings {params.settings:q}"
        " --encoder {wildcards.encoder} --out {output}"


rule import_resnet:
    input:
        checkpoint=resnet_checkpoint,
    output:
        path(store.ENCODER_STATE, encoder="resnet"),
    log:
        job_log("import_resnet"),
    benchmark:
        job_bench("import_resnet")
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
    params:
        settings=job_settings("train-encoder", encoder="resnet"),
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
    conda:
        ENV
    threads: config["embed"]["workers"] + 1
    resources:
        mem_mb=4000,
        gpu=embed_gpus,
        embed_workers=config["embed"]["workers"],  # a resource, not a param: it changes no result
    params:
        settings=job_settings("embed"),
        state=lambda wildcards, input: f"--state {input.state}" if input.state else "",
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
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,  # reads labels and indices only (16 bytes an image; store.write_index), never the features
    params:
        settings=job_settings("embed-index"),
        state=lambda wildcards, input: f"--state {input.state}" if input.state else "",
    shell:
        "simattr --log {log} embed-index --settings {params.settings:q} --encoder {wildcards.encoder}"
        " --split {wildcards.split} {params.state} --shards {input.shards} --out {output}"
