# Stage 2: per (encoder, ranker, class): the score matrix of the class's test images against the
# training images (same class, or all when score.class_conditioned is false) and each one's top-k.


rule score:
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
        C=lambda wildcards: ranker_setting(wildcards, ("esvm", "esvm_reference"), "esvm", "C"),
        tol=lambda wildcards: ranker_setting(wildcards, "esvm_reference", "esvm", "tol"),
        max_iter=lambda wildcards: ranker_setting(wildcards, "esvm_reference", "esvm", "max_iter"),
        chunk_size=lambda wildcards: ranker_setting(wildcards, ("esvm", "knn_l2", "knn_cos"), "esvm", "chunk_size"),
        device=lambda wildcards: ranker_setting(wildcards, ("esvm", "knn_l2", "knn_cos"), "esvm", "device"),
        random_seed=lambda wildcards: ranker_setting(wildcards, "random", "score", "random_seed"),
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        ENV
    shell:
        "simattr --log {log} --no-progress score --dataset {params.dataset} --encoder {wildcards.encoder}"
        " --ranker {wildcards.ranker} --class {wildcards.cls} --train-index {input.train}"
        " --test-index {input.test} --class-conditioned {params.class_conditioned} --topk {params.topk}"
        " --C {params.C} --tol {params.tol} --max-iter {params.max_iter} --random-seed {params.random_seed}"
        " --chunk-size {params.chunk_size} --device {params.device}"
        " --out {output}"
