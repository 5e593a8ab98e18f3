import os

# Stage 4: per dataset, the comparison tables (CSV, Markdown) and plots.


rule report:
    input:
        gathers=gather_files(),
        scores=all_scores(),
        benchmarks=lambda wildcards: [f for _, f in report_benchmarks(wildcards)],
        lds=lds_files(),
    output:
        report_files(),
    log:
        logfile("report", "report"),
    params:
        data=DATA_ARGS,
        n_boot=config["report"]["n_boot"],
        seed=config["report"]["seed"],
        grid_images=config["report"]["grid_images"],
        overlap_k=" ".join(str(k) for k in config["report"]["overlap_k"]),
        method_costs=" ".join(shlex.quote(e) for e in method_cost_entries()),
        lds=lambda wildcards, input: f"--lds {' '.join(input.lds)}" if input.lds else "",
        benchmarks=lambda wildcards: " ".join(f"{s}={f}" for s, f in report_benchmarks(wildcards)),
        stored=" ".join(
            f"{s}={path(p)}"
            for s, p in [
                ("embed", "{dataset}/embeddings"),
                ("embed", "{dataset}/encoders"),
                ("trak", "{dataset}/attributions"),
                ("datamodels", "{dataset}/subsets/datamodels"),
                ("lds", "{dataset}/subsets/lds"),
                ("lds", "{dataset}/lds"),
                ("score", "{dataset}/scores"),
                ("support", "{dataset}/support"),
            ]
        ),
        out_dir=lambda wildcards, output: os.path.dirname(output[0]),
    threads: 1
    conda:
        ENV
    shell:
        "simattr --log {log} report {params.data} --gathers {input.gathers} --scores {input.scores}"
        " --benchmarks {params.benchmarks} --stored {params.stored} --n-boot {params.n_boot}"
        " --seed {params.seed} --grid-images {params.grid_images} {params.lds} --overlap-k {params.overlap_k}"
        " --method-costs {params.method_costs} --out-dir {params.out_dir}"
