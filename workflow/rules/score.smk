# Stage 2: per (encoder, ranker, class): the score matrix of the class's test images against the
# training images (same class, or all when score.class_conditioned is false) and each one's top-k.
from simattr import scoring as sscoring

# A resource function that takes `input` is evaluated by Snakemake once the job's inputs exist, just before it runs
# (while they are missing, e.g. in a dry run, it stays <TBD>): the splits' manifests give the job's shapes then.
SCORE_SHAPES = lambda wildcards, input: sscoring.job_shapes(
    wildcards.cls,
    str(input.train),
    str(input.test),
    class_conditioned=config["score"]["class_conditioned"],
    chunk_size=config["esvm"]["chunk_size"],
    guess=lambda: (split_size(DATA, "train"), split_size(DATA, "test"), len(CLASSES)),
)


rule score:
    input:
        train=path(store.EMBED_INDEX, split="train"),
        test=path(store.EMBED_INDEX, split="test"),
    output:
        path(store.SCORES),
    log:
        job_log("score"),
    benchmark:
        job_bench("score")
    wildcard_constraints:
        encoder="|".join(sconfig.FEATURE_ENCODERS),
        ranker="|".join(sconfig.FEATURE_RANKERS),
    conda:
        ENV
    threads: 1
    resources:
        gpu=score_gpus,
        # from the manifests' shapes: a class job reads only its rows (scoring.peak_bytes, plus 10%); runtime in
        # minutes, at least 2 (scoring.runtime_minutes: a group of score jobs adds them up)
        mem_mb=lambda wildcards, input: sscoring.job_mem_mb(wildcards.ranker, SCORE_SHAPES(wildcards, input)),
        runtime=lambda wildcards, input: sscoring.runtime_minutes(wildcards.ranker, **SCORE_SHAPES(wildcards, input)),
    params:
        settings=job_settings("score"),
    shell:
        "simattr --log {log} --gpus {resources.gpu} --no-progress score --settings {params.settings:q}"
        " --encoder {wildcards.encoder} --ranker {wildcards.ranker} --class {wildcards.cls}"
        " --train-index {input.train} --test-index {input.test} --out {output}"


rule score_model:
    input:
        model_attribution_inputs,
    output:
        path(store.SCORES),
    log:
        job_log("score"),
    benchmark:
        job_bench("score")
    wildcard_constraints:
        encoder=sconfig.MODEL_ENCODER,
        ranker="|".join(sconfig.MODEL_RANKERS),
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
    params:
        settings=job_settings("score-model"),
        inputs=lambda wildcards, input: (
            f"--trak-scores {input[0]}" if wildcards.ranker == "trak" else "--subsets " + " ".join(input)
        ),
    shell:
        "simattr --log {log} --no-progress score-model --settings {params.settings:q} --ranker {wildcards.ranker}"
        " --class {wildcards.cls} {params.inputs} --out {output}"


rule score_external:
    input:
        unpack(external_scores),
    output:
        path(store.SCORES),
    log:
        job_log("score"),
    benchmark:
        job_bench("score")
    wildcard_constraints:
        encoder=sconfig.EXTERNAL_ENCODER,
        ranker="|".join(EXTERNAL) or "(?!)",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=lambda wildcards, input: max(2000, 3 * input.size_mb + 1000),
    params:
        settings=job_settings("score-external"),  # the scores file's content hash: a new file reruns it
        index=lambda wildcards, input: f"--index {shlex.quote(input.index)}" if "index" in input.keys() else "",
    shell:
        "simattr --log {log} --no-progress score-external --settings {params.settings:q}"
        " --ranker {wildcards.ranker} --class {wildcards.cls} --scores {input.scores:q} {params.index}"
        " --out {output}"
