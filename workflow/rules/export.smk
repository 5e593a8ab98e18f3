# The evaluation problem for outside attribution methods (`snakemake export`, not part of the default target):
# data and labels in simattr's index order, the retrained model's inputs, recipe and full-data checkpoints (TRAK's),
# the sampled test images, the LDS subset models' masks and margins, the features of the encoders in use.
# A method's scores computed from it come back as {encoder: external, ranker: scores, name: NAME, path: FILE}.


rule export:
    input:
        queries=path(store.QUERIES),
        checkpoints=path(store.TRAK_CHECKPOINTS),
        lds=subset_shards("lds") if LDS_ON else [],
        embeddings=[e.split(":", 2)[2] for e in export_embeddings()],
    output:
        directory(path(store.EXPORT_DIR)),
    log:
        job_log("export"),
    benchmark:
        job_bench("export")
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
    params:
        settings=job_settings("export"),
        embeddings=export_embeddings(),
    shell:
        "simattr --log {log} export --settings {params.settings:q} --queries {input.queries}"
        " --checkpoints-file {input.checkpoints} --lds-subsets {input.lds} --embeddings {params.embeddings}"
        " --out-dir {output}"


# An outside method the workflow makes itself ({..., name: NAME, path: RESULTS/DATASET/outside/NAME.pt, command:
# COMMAND}): `COMMAND EXPORT_DIR PATH` writes the scores and NAME.cost.json beside them (examples/dattri_scores.py:
# dattri's attributors). Each method once, resumable; its command line is its identity (a new one remakes it).
rule outside_scores:
    input:
        path(store.EXPORT_DIR),
    output:
        scores=path(store.OUTSIDE_SCORES),
        cost=path(store.OUTSIDE_COST),
    log:
        job_log("outside_scores"),
    benchmark:
        job_bench("outside_scores")
    wildcard_constraints:
        name="|".join(MADE) or "(?!)",
    conda:
        "../../envs/peers.yaml"  # envs/simattr.yaml with the peers extra (dattri)
    threads: 2
    resources:
        mem_mb=lambda wildcards: max(8000, retrain_mem_mb(wildcards)),
        runtime=retrain_runtime,
        gpu=retrain_gpus,
    params:
        command=lambda wildcards: MADE[wildcards.name],
    shell:
        "{params.command} {input:q} {output.scores:q} > {log:q} 2>&1"
