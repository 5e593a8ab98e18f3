"""Benchmark: one class's score job at ImageNet scale, reading every shard (the old path) against reading only the
rows it uses (scoring.score_class).

    python benchmarks/scale.py                           # full size: 1,281,167 x 2,048 float16 train, ~5.3 GB
    python benchmarks/scale.py --scale 0.125             # 1/8 of every split (quick)
    python benchmarks/scale.py --old-scale 0.25          # the old path on a 1/4-size copy (its peak is ~2x the
                                                         # train split in float32: ~21 GB at full size)

Writes ImageNet-shaped synthetic embeddings (train: 1,281,167 images in shards of 50,000; test: 50,000; 1,000
classes of 1,300 or fewer training images, 50 test images each; dim 2,048) through store.write_shard / write_index
under --dir, once (reused while their settings match). The features are seeded and clustered: each class has its
own centre, with a power-law spectrum (`clustered`), or the same made non-negative and sparse like pooled ReLU
features (`relu`). Labels are shuffled (a class's rows are spread over every shard: the most runs to read).

Each (path, ranker) runs in a fresh subprocess that reports its own peak RSS (VmHWM), its wall, and how much of
the wall went to reading (manifests, labels and features: old, read_embeddings; new, store.open_embeddings and
EmbeddingRows.read). Before each run the shards are dropped from the page cache (posix_fadvise DONTNEED on our own
files), so reads are cold unless --warm. scoring.peak_bytes's estimate is printed beside the measured peak.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

N_TRAIN, N_TEST, CLASSES, DIM, SHARD = 1_281_167, 50_000, 1000, 2048, 50_000


def class_sizes(n: int, classes: int, rng) -> np.ndarray:
    """ImageNet-like uneven classes: most have n // classes (+ a few), some fewer (ImageNet: 732..1,300)."""
    sizes = np.full(classes, n // classes)
    short = rng.choice(classes, classes // 10, replace=False)
    sizes[short] -= rng.integers(0, max(1, sizes[0] // 2), len(short))
    others = np.setdiff1d(np.arange(classes), short)
    rest = n - sizes.sum()                                      # >= 0: given back to the other classes
    sizes[others] += rest // len(others)
    sizes[others[:rest % len(others)]] += 1
    assert sizes.sum() == n and sizes.min() > 0
    return sizes


def write_split(out: Path, split: str, n: int, dim: int, classes: int, shard: int, dist: str, seed: int) -> None:
    from simattr import store

    rng = np.random.default_rng([seed, 0])                      # the same class centres for both splits
    spectrum = (np.arange(1, dim + 1) ** -0.5).astype(np.float32)
    centres = rng.standard_normal((classes, dim), dtype=np.float32) * spectrum * 1.5
    rng = np.random.default_rng([seed, 1 if split == "train" else 2])
    labels = rng.permutation(np.repeat(np.arange(classes), class_sizes(n, classes, rng)))
    files = []
    for s, (a, b) in enumerate(store.shard_ranges(n, shard)):
        x = rng.standard_normal((b - a, dim), dtype=np.float32)
        x *= spectrum
        x += centres[labels[a:b]]
        if dist == "relu":
            np.maximum(x - 0.3 * spectrum, 0, out=x)
        files.append(out / split / store.SHARD_NAME.format(shard=s))
        store.write_shard(files[-1], x, labels[a:b], np.arange(a, b), dataset="imagenet", split=split,
                          encoder="resnet", config_hash=f"scale-{dist}-{seed}", float16=True)
        print(f"  {files[-1]} ({b - a} rows)", flush=True)
        del x
    store.write_index(out / split, files, n=n, expect={"dataset": "imagenet", "split": split, "encoder": "resnet",
                                                       "config_hash": f"scale-{dist}-{seed}"})


def make_data(root: Path, scale: float, dim: int, classes: int, dist: str, seed: int) -> Path:
    n_train, n_test = int(round(N_TRAIN * scale)), int(round(N_TEST * scale))
    classes = min(classes, n_test)
    out = root / f"{dist}-{scale:g}-{dim}-{classes}-{seed}"
    stamp = out / "made.json"
    if stamp.exists():
        return out
    t = time.perf_counter()
    print(f"writing {n_train} + {n_test} x {dim} float16 ({dist}) under {out}", flush=True)
    write_split(out, "train", n_train, dim, classes, SHARD, dist, seed)
    write_split(out, "test", n_test, dim, classes, SHARD, dist, seed)
    stamp.write_text(json.dumps({"seconds": time.perf_counter() - t}) + "\n")
    return out


def drop_cache(folder: Path) -> None:
    for f in folder.rglob("*.h5"):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def peak_rss() -> int:
    """This process's peak resident memory in bytes: VmHWM, the high-water mark of its own address space (getrusage's
    ru_maxrss would also count the parent's memory at the fork before exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def proc_io() -> dict:
    """Bytes this process asked to read (rchar) and that the storage layer fetched for it (read_bytes: with a cold page
    cache, what the disk delivered, readahead included), from /proc/self/io."""
    try:
        fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    except OSError:
        return {}
    return {"io_rchar": int(fields["rchar"]), "io_read_bytes": int(fields["read_bytes"])}


def child(args) -> None:
    """One score job in this process; prints its figures as one JSON line."""
    t0 = time.perf_counter()
    from simattr import config, rankers, scoring  # noqa: F401 (torch: what score_class imports before its clock starts)
    from simattr.datasets import Spec

    imports = time.perf_counter() - t0
    rss_start = peak_rss()
    settings = {**config.ranker_settings(config.defaults(), args.ranker), "device": "cpu"}   # the schema's, on the CPU
    fn = scoring.score_class if args.path == "new" else scoring.score_class_full_read
    stats = fn(data=Spec.of(name="imagenet", root="/nowhere"), encoder="resnet", ranker=args.ranker, cls=args.cls,
               train_index=str(Path(args.data) / "train" / "index.json"),
               test_index=str(Path(args.data) / "test" / "index.json"), class_conditioned=True, topk=64,
               ranker_settings=settings, out=args.out, progress=False)
    print(json.dumps({**stats, "imports_s": imports, "rss_after_imports": rss_start,
                      "peak_rss": peak_rss(), **proc_io(),
                      "process_s": time.perf_counter() - t0}))


def run(path: str, ranker: str, data: Path, cls: int, warm: bool) -> dict:
    if not warm:
        drop_cache(data)
    out = data / f"scores-{path}-{ranker}-{cls}.h5"
    cmd = [sys.executable, __file__, "--child", "--path", path, "--ranker", ranker, "--data", str(data),
           "--cls", str(cls), "--out", str(out)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    got["subprocess_s"] = time.perf_counter() - t
    return got


def estimate(data: Path, ranker: str, cls: int) -> tuple[int, int]:
    from simattr import config, scoring, store

    tr, te = store.read_json(data / "train" / "index.json"), store.read_json(data / "test" / "index.json")
    shapes = dict(n_queries=te["class_counts"].get(str(cls), 0), n_candidates=tr["class_counts"][str(cls)],
                  n_train=tr["n"], n_test=te["n"], dim=tr["feature_dim"],
                  chunk_size=config.defaults()["esvm"]["chunk_size"])
    return scoring.peak_bytes(ranker, **shapes), scoring.runtime_minutes(ranker, **shapes)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dir", default="/tmp/simattr-scale", help="where the synthetic embeddings go (reused)")
    p.add_argument("--scale", type=float, default=1.0, help="fraction of ImageNet's splits for the new path")
    p.add_argument("--old-scale", type=float, default=None, help="the old path's fraction (default: --scale)")
    p.add_argument("--dim", type=int, default=DIM)
    p.add_argument("--classes", type=int, default=CLASSES)
    p.add_argument("--dist", nargs="+", default=["clustered"], choices=["clustered", "relu"])
    p.add_argument("--rankers", nargs="+", default=["esvm", "knn_l2"], choices=["esvm", "knn_l2"])
    p.add_argument("--cls", type=int, default=-1, help="the class scored (default: the largest training class)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warm", action="store_true", help="leave the shards in the page cache")
    p.add_argument("--skip-old", action="store_true")
    p.add_argument("--json", help="also write the rows here")
    # the child's arguments
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    p.add_argument("--ranker", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    root = Path(args.dir)
    old_scale = args.scale if args.old_scale is None else args.old_scale
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{'warm' if args.warm else 'cold'} page cache", flush=True)
    rows = []
    for dist in args.dist:
        new_data = make_data(root, args.scale, args.dim, args.classes, dist, args.seed)
        old_data = make_data(root, old_scale, args.dim, args.classes, dist, args.seed)
        if args.cls < 0:
            counts = json.loads((new_data / "train" / "index.json").read_text())["class_counts"]
            args.cls = int(max(counts, key=lambda c: (counts[c], -int(c))))
            print(f"class {args.cls}: {counts[str(args.cls)]} training images", flush=True)
        for ranker in args.rankers:
            plan = [("new", args.scale, new_data)]
            if old_scale != args.scale:
                plan.append(("new", old_scale, old_data))
            if not args.skip_old:
                plan.append(("old", old_scale, old_data))
            for path, scale, data in plan:
                got = run(path, ranker, data, args.cls, args.warm)
                est, minutes = estimate(data, ranker, args.cls)
                row = {"dist": dist, "scale": scale, "ranker": ranker, "path": path, **got,
                       "peak_bytes_estimate": est, "runtime_minutes_estimate": minutes}
                rows.append(row)
                print(f"{dist:9s} scale {scale:<6g} {ranker:6s} {path}: peak RSS {got['peak_rss'] / 2**30:6.2f} GiB "
                      + (f"(scoring.peak_bytes {est / 2**30:.2f}, runtime_minutes {minutes}; " if path == "new" else "(")
                      + f"after imports {got['rss_after_imports'] / 2**30:.2f}), "
                      f"job wall {got['wall_s']:7.2f} s = reading {got['read_s']:7.2f} s + scoring and writing "
                      f"{got['wall_s'] - got['read_s']:6.2f} s; rows read {got['rows_read']}"
                      + (f", feature bytes read {got['bytes_read'] / 1e6:.1f} MB, labels "
                         f"{got['label_bytes'] / 1e6:.1f} MB" if "bytes_read" in got else "")
                      + (f"; disk read {got['io_read_bytes'] / 1e6:.1f} MB" if "io_read_bytes" in got else "")
                      + f"; process {got['process_s']:.1f} s (imports {got['imports_s']:.1f} s)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
