# Stage 4: per dataset, the comparison tables (CSV, Markdown) and plots.


def report_benchmarks(wildcards):
    """STAGE=FILE pairs of every upstream job's benchmark (wall seconds per stage)."""
    pairs = []
    for e in ENCODERS_USED:
        if e in TRAINABLE:
            pairs.append(("embed", bench("embed", f"train-{e}")))
        for s in ("train", "test"):
            pairs.append(("embed", bench("embed", f"{e}-{s}")))
    for e, r in METHODS:
        for c in CLASSES:
            pairs.append(("score", bench("score", f"{e}-{r}-class-{c}")))
        for m in config["support"]["metrics"]:
            pairs.append(("support", bench("support", f"{e}-{r}-{m}")))
    pairs.append(("support", bench("support", "queries")))
    return pairs


rule report:
    input:
        gathers=gather_files(),
        scores=all_scores(),
        benchmarks=lambda wildcards: [f for _, f in report_benchmarks(wildcards)],
    output:
        report_files(),
    log:
        logfile("report", "report"),
    params:
        test_fraction=config["dataset"]["test_fraction"],
        split_seed=config["dataset"]["split_seed"],
        n_boot=config["report"]["n_boot"],
        seed=config["report"]["seed"],
        grid_images=config["report"]["grid_images"],
        benchmarks=lambda wildcards: " ".join(f"{s}={f}" for s, f in report_benchmarks(wildcards)),
        stored=" ".join(
            f"{s}={path(p)}"
            for s, p in [
                ("embed", "{dataset}/embeddings"),
                ("embed", "{dataset}/encoders"),
                ("score", "{dataset}/scores"),
                ("support", "{dataset}/support"),
            ]
        ),
        out_dir=path(store.REPORT_DIR),
    threads: 1
    shell:
        "simattr --log {log} report --dataset " + D + " --test-fraction {params.test_fraction}"
        " --split-seed {params.split_seed} --gathers {input.gathers} --scores {input.scores}"
        " --benchmarks {params.benchmarks} --stored {params.stored} --n-boot {params.n_boot}"
        " --seed {params.seed} --grid-images {params.grid_images} --out-dir {params.out_dir}"
