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
