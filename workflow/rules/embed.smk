# Stage 1: dataset -> trained encoders -> HDF5 embedding shards per (encoder, split).


rule train_simclr:
    output:
        path(store.ENCODER_STATE, encoder="simclr"),
    log:
        logfile("embed", "train-simclr"),
    benchmark:
        bench("embed", "train-simclr")
    params:
        dataset=D,
        test_fraction=config["dataset"]["test_fraction"],
        split_seed=config["dataset"]["split_seed"],
        seed=config["encoders"]["simclr"]["seed"],
        epochs=config["encoders"]["simclr"]["epochs"],
        batch_size=config["encoders"]["simclr"]["batch_size"],
        lr=config["encoders"]["simclr"]["lr"],
        temperature=config["encoders"]["simclr"]["temperature"],
        feature_dim=config["encoders"]["simclr"]["feature_dim"],
        proj_dim=config["encoders"]["simclr"]["proj_dim"],
    threads: 2
    resources:
        mem_mb=4000,
    conda:
        ENV
    shell:
        "simattr --log {log} train-encoder --dataset {params.dataset} --encoder simclr"
        " --test-fraction {params.test_fraction} --split-seed {params.split_seed} --seed {params.seed}"
        " --param epochs={params.epochs} --param batch_size={params.batch_size} --param lr={params.lr}"
        " --param temperature={params.temperature} --param feature_dim={params.feature_dim}"
        " --param proj_dim={params.proj_dim} --out {output}"


rule train_supervised:
    output:
        path(store.ENCODER_STATE, encoder="supervised"),
    log:
        logfile("embed", "train-supervised"),
    benchmark:
        bench("embed", "train-supervised")
    params:
        dataset=D,
        test_fraction=config["dataset"]["test_fraction"],
        split_seed=config["dataset"]["split_seed"],
        seed=config["encoders"]["supervised"]["seed"],
        epochs=config["encoders"]["supervised"]["epochs"],
        batch_size=config["encoders"]["supervised"]["batch_size"],
        lr=config["encoders"]["supervised"]["lr"],
        hidden=config["encoders"]["supervised"]["hidden"],
    threads: 2
    resources:
        mem_mb=4000,
    conda:
        ENV
    shell:
        "simattr --log {log} train-encoder --dataset {params.dataset} --encoder supervised"
        " --test-fraction {params.test_fraction} --split-seed {params.split_seed} --seed {params.seed}"
        " --param epochs={params.epochs} --param batch_size={params.batch_size} --param lr={params.lr}"
        " --param hidden={params.hidden} --out {output}"


rule embed:
    input:
        state=encoder_state,
    output:
        path(store.EMBED_INDEX),
    log:
        logfile("embed", "{encoder}-{split}"),
    benchmark:
        bench("embed", "{encoder}-{split}")
    params:
        dataset=D,
        test_fraction=config["dataset"]["test_fraction"],
        split_seed=config["dataset"]["split_seed"],
        shard_size=config["embed"]["shard_size"],
        state=lambda wildcards, input: f"--state {input.state}" if input.state else "",
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        ENV
    shell:
        "simattr --log {log} embed --dataset {params.dataset} --encoder {wildcards.encoder} --split {wildcards.split}"
        " --test-fraction {params.test_fraction} --split-seed {params.split_seed}"
        " --shard-size {params.shard_size} {params.state} --out-dir $(dirname {output})"
