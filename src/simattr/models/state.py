"""Training states (docs/data-contract.md, "Training states"): where a CNN training saves its state, what the state
must match to be resumed from, and how often it is saved."""
from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from ..config import defaults
from ..errors import SimattrError
from ..store import CONTRACT_VERSION, atomic_path, config_hash
from .recipe import Recipe

log = logging.getLogger("simattr")


# ------------------------------------------------------------------------------------ training states
STATE_FORMAT = 1                            # the layout of a state file (part of every state's identity)
STATE_EVERY_ENV = "SIMATTR_STATE_EVERY_S"   # how launch.state_every_s reaches a training (launch.Task sets it)


@dataclass
class TrainingState:
    """Where one CNN training keeps its state, and what it must match to be resumed from.

    path: the state file ({...}.state.pt beside the journal or output of the job that trains the model). data: the
    caller's identity of the training images (which images, from which inputs: e.g. an answer's hash and k, a
    subset shard's hash and model id); the state's identity adds the recipe, seed, n_classes, the training labels,
    the device type and the versions. name: the model in log lines ("model k=3 seed=1"). every_s: the least
    seconds between two saves (None: state_every_s()). After training, resumed_at holds the epoch each resume of
    this model started at (empty when it trained in one go)."""
    path: Path
    data: str
    name: str
    every_s: float | None = None
    resumed_at: list[int] = field(default_factory=list)


def state_every_s() -> float:
    """The least seconds between two saves of a training state: SIMATTR_STATE_EVERY_S when set (launch.Task sets
    it from launch.state_every_s), else the schema's launch.state_every_s."""
    v = os.environ.get(STATE_EVERY_ENV, "").strip()
    if not v:
        return float(defaults()["launch"]["state_every_s"])
    try:
        every = float(v)
    except ValueError:
        every = -1.0
    if not every >= 0:
        raise SimattrError(f"{STATE_EVERY_ENV}={v!r}: expected a number of seconds >= 0")
    return every


def state_identity(recipe: Recipe, seed: int, n_classes: int, y_train, data: str, device_type: str) -> str:
    """The identity of one training's state: what must match for a state to be resumed from."""
    y = np.ascontiguousarray(np.asarray(y_train, dtype=np.int64))
    return config_hash({"recipe": recipe.identity(), "seed": int(seed), "n_classes": int(n_classes),
                        "n_train": len(y), "y_train": hashlib.sha256(y.tobytes()).hexdigest(), "data": str(data),
                        "device": device_type, "format": STATE_FORMAT, "simattr_version": __version__,
                        "contract_version": CONTRACT_VERSION})


def load_state(state: TrainingState, identity: str) -> dict | None:
    """The saved state at state.path if it is this training's (else None, with a log line saying why)."""
    import torch

    path = Path(state.path)
    if not path.exists():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is ignored, named in the log
        log.warning("%s: unreadable training state (%s: %s); ignored, %s starts afresh", path, type(e).__name__,
                    str(e).strip().splitlines()[0] if str(e).strip() else "", state.name)
        return None
    if not isinstance(saved, dict) or saved.get("identity") != identity:
        made = saved.get("identity") if isinstance(saved, dict) else None
        log.warning("%s: training state of another training (identity %s, expected %s: another recipe, seed or "
                    "training set); ignored and overwritten, %s starts afresh", path, made, identity, state.name)
        return None
    return saved


def save_state(state: TrainingState, identity: str, *, epoch: int, step: int, net, opt, gen, dgen,
                resumed_at: list[int]) -> None:
    """Write the training's state atomically (a complete file or none: store.atomic_path)."""
    import torch


    blob = {"identity": identity, "format": STATE_FORMAT, "name": state.name, "epoch": int(epoch),
            "step": int(step), "net": net.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(),
            "dgen": None if dgen is gen else dgen.get_state(), "resumed_at": list(resumed_at),
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    with atomic_path(state.path) as tmp:
        torch.save(blob, tmp)


def drop_state(state: TrainingState | None) -> None:
    """The model is done: its state file goes, and any temporary file a killed save left beside it."""
    if state is None:
        return
    path = Path(state.path)
    path.unlink(missing_ok=True)
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        tmp.unlink(missing_ok=True)
