"""The embed stage: encoder states (train_encoder), embedding shards of a split (embed_shard), and each split's
manifest with every shard checked against the current settings (embed_index); `embed` does a whole split in one
process.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import config as sconfig
from . import datasets, encoders, store
from .errors import SimattrError

log = logging.getLogger("simattr")


def embed_settings(data: datasets.Spec, encoder: str, params: dict, seed: int) -> dict:
    return {**data.identity(), "encoder": encoder, "params": params, "seed": seed}


def train_encoder(*, data: datasets.Spec, encoder: str, params: dict, seed: int, out: str,
                  progress: bool = True) -> None:
    """Make encoder `encoder`'s state (fitted on the train split, or read from its checkpoint) and save it with the
    settings it was made with."""
    kind = encoders.get(encoder)
    if not kind.trainable:
        raise SimattrError(f"encoder '{encoder}' has no training step; trainable: {', '.join(sconfig.STATE_ENCODERS)}")
    t0 = time.perf_counter()
    if kind.pretrained:                           # the state is the checkpoint's backbone
        enc, n = kind.from_checkpoint(params, log=log), 0
    else:
        tr = datasets.load_split(data, "train")
        enc = kind.fit(tr.images, tr.labels, params, seed=seed, progress=progress, log=log)
        n = len(tr)
    enc.meta["settings"] = json.dumps(embed_settings(data, encoder, params, seed), sort_keys=True)
    enc.save(out)
    log.info("%s state from %d train images in %.1f s -> %s", encoder, n, time.perf_counter() - t0, out)


def load_encoder(data: datasets.Spec, encoder: str, state_path: str | None, build: bool = True):
    """(the encoder, ready on its device; the settings hashed into the shards' config_hash). Encoders with a state
    rule come from their file, checked to be made for this data; `pixels` is fitted on the train split here.
    Unless `build`, the encoder is None (its file is read for the settings, no network is built)."""
    kind = encoders.get(encoder)
    if not kind.trainable:
        settings = embed_settings(data, encoder, {}, 0)
        if not build:
            return None, settings
        tr = datasets.load_split(data, "train")
        return kind.fit(tr.images, tr.labels, {}, seed=0, progress=False), settings
    if not state_path:
        raise SimattrError(f"encoder '{encoder}' needs its state file (--state)")
    if build:
        enc = kind.from_state(state_path)                # the job's one network, on its device
        stored = enc.meta
    else:
        enc, stored = None, encoders.read_state(state_path, expect=encoder)
    if "settings" not in stored:
        raise SimattrError(f"{state_path}: no 'settings' entry (not written by train-encoder); rerun its rule")
    settings = json.loads(stored["settings"])
    trained_on = {k: settings.get(k) for k in data.identity()}
    if trained_on != data.identity():
        raise SimattrError(f"{state_path}: made for other data ({trained_on}, now {data.identity()}); "
                           "rerun its rule")
    return enc, settings


def _encode_range(encoder, part: datasets.Split, start: int, stop: int, batch_size: int, progress: bool,
                  what: str, workers: int = 0) -> np.ndarray:
    """Features of images start..stop-1 of a split by `encoder` (an encoders.Encoder), decoded and encoded batch by
    batch (progress bar, log)."""
    cuda = encoder.device is not None and encoder.device.type == "cuda"
    stream = part.stream(batch_size, workers, pin=cuda)  # uint8 batches from persistent decoders
    feats, t0, last, done = [], time.perf_counter(), time.perf_counter(), 0
    try:
        with tqdm(total=stop - start, desc=what, unit="img", disable=not progress, leave=False) as bar:
            for images in stream(np.arange(start, stop)):
                feats.append(encoder.encode(images, batch_size=batch_size))
                done += len(images)
                bar.update(len(images))
                if time.perf_counter() - last > 30:
                    last = time.perf_counter()
                    log.info("%s: %d of %d images, %.0f images/s", what, done, stop - start, done / (last - t0))
    finally:
        stream.close()
    return np.concatenate(feats) if feats else np.zeros((0, 0), np.float32)


def embed_shard(*, data: datasets.Spec, encoder: str, split: str, shard: int, shard_size: int, out: str,
                state_path: str | None, batch_size: int, float16: bool, workers: int, progress: bool = True) -> None:
    """Embed shard `shard` of one split (images shard*shard_size .. ; shard_size 0: the whole split)."""
    t0 = time.perf_counter()
    enc, settings = load_encoder(data, encoder, state_path)
    part = datasets.load_split(data, split)
    ranges = store.shard_ranges(len(part), shard_size)
    if not 0 <= shard < len(ranges):
        raise SimattrError(f"shard {shard} does not exist: the {split} split has {len(part)} images, "
                           f"{len(ranges)} shard(s) of {shard_size or len(part)}")
    start, stop = ranges[shard]
    feats = _encode_range(enc, part, start, stop, batch_size, progress, f"{encoder}/{split} shard {shard}",
                          workers)
    store.write_shard(out, feats, part.labels[start:stop], np.arange(start, stop), dataset=data.name, split=split,
                      encoder=encoder, config_hash=store.config_hash(settings), class_names=part.class_names,
                      float16=float16)
    log.info("embedded %s images %d..%d with %s (d=%d) in %.1f s -> %s", split, start, stop - 1, encoder,
             feats.shape[1], time.perf_counter() - t0, out)


def embed_index(*, data: datasets.Spec, encoder: str, split: str, shards: list[str], out: str,
                state_path: str | None = None) -> dict:
    """The split's manifest from its shards, each checked against the current settings (stale shards refused).
    Reads the shards' labels, indices and attributes, not their features (store.write_index: shapes and dtype from
    the files' metadata; NaN and inf were refused by write_shard when each shard was written), so its memory is
    16 bytes an image whatever feature_dim is."""
    _, settings = load_encoder(data, encoder, state_path, build=False)
    part = datasets.load_split(data, split)
    expect = {"dataset": data.name, "split": split, "encoder": encoder, "config_hash": store.config_hash(settings)}
    manifest = store.write_index(Path(out).parent, shards, n=len(part), expect=expect, skipped=part.skipped)
    log.info("%s/%s: %d images in %d shard(s), d=%d%s", encoder, split, manifest["n"], len(manifest["shards"]),
             manifest["feature_dim"], f", {len(part.skipped)} bad file(s) skipped" if part.skipped else "")
    return manifest


def embed(*, data: datasets.Spec, encoder: str, split: str, shard_size: int, out_dir: str,
          state_path: str | None, batch_size: int, float16: bool, workers: int, progress: bool = True) -> dict:
    """Embed one whole split in this process: every shard, then the manifest."""
    n = len(datasets.load_split(data, split))
    files = []
    for s in range(len(store.shard_ranges(n, shard_size))):
        files.append(str(Path(out_dir) / store.SHARD_NAME.format(shard=s)))
        embed_shard(data=data, encoder=encoder, split=split, shard=s, shard_size=shard_size, out=files[-1],
                    state_path=state_path, batch_size=batch_size, float16=float16, workers=workers,
                    progress=progress)
    return embed_index(data=data, encoder=encoder, split=split, shards=files,
                       out=str(Path(out_dir) / store.INDEX_NAME), state_path=state_path)
