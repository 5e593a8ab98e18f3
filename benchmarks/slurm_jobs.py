"""Benchmark: how many SLURM jobs a run of each shipped config submits through profiles/slurm (a dry run).

    python benchmarks/slurm_jobs.py                              # every config/*.yaml, fakes made in a temp dir
    python benchmarks/slurm_jobs.py --imagenet-root DIR          # an ImageNet-shaped root (class folders) to list
    python benchmarks/slurm_jobs.py --profile other/profile config/imagenet.yaml

The configs' data roots and checkpoints are replaced by fakes (tests/test_workflow.py: with_fake_inputs):
CIFAR-10 as 50,000 + 10,000 blank images in the real batch format; ImageNet as empty files in 1,000 class
folders (13 train + 5 val each unless --imagenet-root points at a bigger tree, e.g. one with ImageNet's
1,281,167 + 50,000 files: only the embed shards' count depends on it). Nothing is decoded or run:
`snakemake -n --profile PROFILE`, counted by tests/test_workflow.py: slurm_submissions:

  sbatch       what the SLURM executor submits: every job that is not a local rule, a group job counting once
               (profiles/slurm groups the per-class score jobs and a few other small ones)
  jobs         Snakemake jobs (rule instances), local ones and those inside group jobs included
  array tasks  the support jobs are local rules that submit submitit arrays, one per (method, metric), of
               n_test x replicates / images_per_task tasks; a scheduler counts each task as a job
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))      # the tests' fake inputs and dry-run parser (not a package)


def main() -> None:
    from test_workflow import slurm_submissions, with_fake_inputs

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("configs", nargs="*", type=Path, default=sorted((REPO / "config").glob("*.yaml")))
    ap.add_argument("--profile", default=str(REPO / "profiles" / "slurm"))
    ap.add_argument("--imagenet-root", help="an ImageNet-shaped folder to list instead of a made one")
    a = ap.parse_args()
    print("| config | Snakemake jobs | SLURM jobs (sbatch) | of which group jobs | support arrays | array tasks "
          "| dry run s |")
    print("|---|---|---|---|---|---|---|")
    for configfile in a.configs:
        with tempfile.TemporaryDirectory() as tmp:
            cfg_path, cfg = with_fake_inputs(configfile.resolve(), Path(tmp), a.imagenet_root)
            t0 = time.perf_counter()
            r = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--profile", a.profile, "--snakefile",
                                str(REPO / "Snakefile"), "--directory", tmp, "--configfile", str(cfg_path)],
                               capture_output=True, text=True, cwd=REPO)
            took = time.perf_counter() - t0
            if r.returncode:
                sys.exit(f"{configfile}: dry run failed:\n{r.stderr[-2000:]}")
            c = slurm_submissions(r.stdout)
            sup, launch = cfg.get("support", {}), cfg.get("launch", {})
            tasks = -(-sup.get("n_test", 30) * sup.get("replicates", 1) // launch.get("images_per_task", 1))
            arrays = c["rules"].get("support", 0)
            print(f"| {configfile.name} | {sum(c['rules'].values())} | {c['sbatch']} | "
                  f"{sum(c['groups'].values())} {c['groups'] or ''} | {arrays} | {arrays * tasks} | {took:.0f} |",
                  flush=True)
            print(f"<!-- {configfile.name}: {dict(sorted(c['rules'].items()))} -->", flush=True)


if __name__ == "__main__":
    main()
