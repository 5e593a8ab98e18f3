# Stage 2: per (encoder, ranker, class): the score matrix of the class's test images against the
# training images (same class, or all when score.class_conditioned is false) and each one's top-k.


rule score:
    wildcard_constraints:
        encoder="|".join(FEATURE_ENCODERS),
        ranker="|".join(FEATURE_RANKERS),
    input:
        train=path(store.EMBED_INDEX, split="train"),
        test=path(store.EMBED_INDEX, split="test"),
    output:
        path(store.SCORES),
    log:
        logfile("score", "{encoder}-{ranker}-class-{cls}"),
    benchmark:
        bench("score", "{encoder}-{ranker}-class-{cls}")
    params:
        dataset=D,
        class_conditioned=config["score"]["class_conditioned"],
        topk=config["score"]["topk"],
        C=lambda wildcards: ranker_setting(wildcards, ("esvm", "esvm_signed", "esvm_reference"), "esvm", "C"),
        tol=lambda wildcards: ranker_setting(wildcards, "esvm_reference", "esvm", "tol"),
        max_iter=lambda wildcards: ranker_setting(wildcards, "esvm_reference", "esvm", "max_iter"),
        chunk_size=lambda wildcards: ranker_setting(wildcards, ("esvm", "esvm_signed", "knn_l2", "knn_cos"), "esvm", "chunk_size"),
        device=lambda wildcards: ranker_setting(wildcards, ("esvm", "esvm_signed", "knn_l2", "knn_cos"), "esvm", "device"),
        random_seed=lambda wildcards: ranker_setting(wildcards, "random", "score", "random_seed"),
        neighbours=lambda wildcards: ranker_setting(wildcards, "esvm_signed", "esvm", "runner_up_neighbours"),
    threads: 1
    resources:
        gpu=score_gpus,
        mem_mb=2000,
    conda:
        ENV
    shell:
        "simattr --log {log} --gpus {resources.gpu} --no-progress score --dataset {params.dataset}"
        " --encoder {wildcards.encoder}"
        " --ranker {wildcards.ranker} --class {wildcards.cls} --train-index {input.train}"
        " --test-index {input.test} --class-conditioned {params.class_conditioned} --topk {params.topk}"
        " --C {params.C} --tol {params.tol} --max-iter {params.max_iter} --random-seed {params.random_seed}"
        " --chunk-size {params.chunk_size} --device {params.device} --neighbours {params.neighbours}"
        " --out {output}"


rule score_model:
    wildcard_constraints:
        encoder=sconfig.MODEL_ENCODER,
        ranker="|".join(sconfig.MODEL_RANKERS),
    input:
        model_attribution_inputs,
    output:
        path(store.SCORES),
    log:
        logfile("score", "{encoder}-{ranker}-class-{cls}"),
    benchmark:
        bench("score", "{encoder}-{ranker}-class-{cls}")
    params:
        data=DATA_ARGS,
        class_conditioned=config["score"]["class_conditioned"],
        topk=config["score"]["topk"],
        inputs=lambda wildcards, input: (f"--trak-scores {input[0]}" if wildcards.ranker == "trak"
                                         else "--subsets " + " ".join(input)),
        n_alphas=lambda wildcards: ranker_setting(wildcards, "datamodels", "datamodels", "n_alphas"),
        val_fraction=lambda wildcards: ranker_setting(wildcards, "datamodels", "datamodels", "val_fraction"),
    threads: 1
    resources:
        mem_mb=4000,
    conda:
        ENV
    shell:
        "simattr --log {log} --no-progress score-model {params.data} --ranker {wildcards.ranker}"
        " --class {wildcards.cls} --class-conditioned {params.class_conditioned} --topk {params.topk}"
        " {params.inputs} --n-alphas {params.n_alphas} --val-fraction {params.val_fraction} --out {output}"
