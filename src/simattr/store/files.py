"""Files written atomically (a temporary file in the same folder, renamed into place when complete), JSON, and
the append-only journals of resumable work."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from ..errors import SimattrError

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)     # mkstemp makes 0600; outputs are shared like any file
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; if the block succeeds it replaces `path` whole (an old folder there is
    removed), else it is removed: a folder that exists is complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)     # mkdtemp makes 0700; outputs are shared like any folder
        old = path.with_name(f".{path.name}.old")
        if old.exists():
            shutil.rmtree(old)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.exists():
        raise SimattrError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SimattrError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


class Journal:
    """Units of work finished inside one job, one JSON line each, flushed and synced as each finishes.

    A job that dies (preempted, killed, out of time) and runs again reads its journal and redoes none of the
    units listed there. Lines written for other inputs (another `identity`) and lines cut by a crash are
    dropped when the journal is opened. `key` names the fields that identify a unit (e.g. ("k", "seed_index")).
    """

    def __init__(self, path: str | os.PathLike | None, identity: str, key: tuple[str, ...]):
        self.path = Path(path) if path else None
        self.identity = identity
        self.key = key
        self.entries: dict[tuple, dict] = {}
        if self.path is None:
            return
        lines = []
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:        # a line cut by a crash
                    continue
                if isinstance(entry, dict) and entry.get("identity") == identity:
                    self.entries[tuple(entry[k] for k in key)] = entry
                    lines.append(line)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path) as tmp:         # keep only this identity's complete lines
            tmp.write_text("".join(ln + "\n" for ln in lines))
        self._fh = self.path.open("a")

    def add(self, **entry: Any) -> dict:
        entry = {"identity": self.identity, **entry}
        self.entries[tuple(entry[k] for k in self.key)] = entry
        if self.path is not None:
            self._fh.write(json.dumps(entry) + "\n")
            self._fh.flush()
            os.fsync(self._fh.fileno())
        return entry

    def close(self) -> None:
        if self.path is not None:
            self._fh.close()


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
