"""Claims on run directories: at most one process writes into a run directory at any time.

* :func:`claim_new_dir` creates a *new* directory atomically: ``path``, or when that name is
  taken ``path_1``, ``path_2``, ... (``os.mkdir`` fails for all but one of any number of
  concurrent callers, so two sweeps started in the same second get different directories).
* :func:`claim_run_dir` locks an existing (or new) directory for this process: an exclusive
  ``fcntl.flock`` on ``<dir>/.run.lock``. The kernel drops the lock when its process ends,
  ``kill -9`` included, so a crashed run never leaves a stale claim, and a live one is never
  taken over. A second process is refused with the holder's pid, host and command line.
  Claims are re-entrant within a process (counted) and end with :func:`release_run_dir` or the
  process. Where ``fcntl`` does not exist (Windows) the lock file is created with ``O_EXCL``
  instead, and a crash leaves it behind (the refusal says to delete it).
* :func:`discard_unused_run_dir` removes a directory that holds only what a failed start
  leaves (Hydra's ``.hydra/`` and job log, the lock), so a refused command leaves nothing.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import sys
from pathlib import Path

from unified_ode.errors import UserError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

LOCK_FILE = ".run.lock"
#: What a start writes before any work: Hydra's config copies and job log, and the lock.
START_FILES = (".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml",
               "train.log", "sample.log", LOCK_FILE)
_HELD: dict[str, list] = {}  # resolved dir -> [fd, count]


def claim_new_dir(path: str | Path, max_tries: int = 1000) -> Path:
    """Create and return a directory that did not exist: ``path`` or ``path_<k>``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for k in range(max_tries):
        candidate = path if k == 0 else path.with_name(f"{path.name}_{k}")
        try:
            os.mkdir(candidate)
            return candidate
        except FileExistsError:
            continue
    raise UserError(f"cannot create a new run directory: {path} and {max_tries - 1} suffixed "
                    "names exist. Pass hydra.run.dir=<a new directory>.")


def _holder(lock: Path) -> str:
    try:
        info = json.loads(lock.read_text() or "{}")
    except (OSError, ValueError):
        return "another process"
    return (f"process {info.get('pid')} on {info.get('host')} (started {info.get('started')}: "
            f"{info.get('command')})")


def distributed_worker() -> bool:
    """True in the rank > 0 processes that a multi-process launch (Lightning's DDP launcher,
    ``torchrun``, SLURM) starts with the same command line: they share rank 0's run directory
    and claim."""
    return any(os.environ.get(k, "0") not in ("", "0") for k in ("LOCAL_RANK", "RANK",
                                                               "NODE_RANK"))


def claim_run_dir(path: str | Path) -> Path:
    """Lock ``path`` (created if needed) for this process; :class:`UserError` if another
    process holds it. Returns ``path``."""
    path = Path(path)
    if distributed_worker():  # rank 0 of this launch holds the claim for all its ranks
        return path
    key = str(path.resolve())
    if key in _HELD:
        _HELD[key][1] += 1
        return path
    path.mkdir(parents=True, exist_ok=True)
    lock = path / LOCK_FILE
    if fcntl is not None:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise UserError(f"run directory {path} is in use by {_holder(lock)}. Wait for it "
                            "to finish, or pass hydra.run.dir=<another directory> (the default "
                            "directory is new for every run).") from None
    else:  # pragma: no cover - Windows
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            raise UserError(f"run directory {path} is in use by {_holder(lock)}; if that "
                            f"process has ended, delete {lock}.") from None
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    _HELD[key] = [fd, 1]
    return path


def release_run_dir(path: str | Path) -> None:
    """Undo one :func:`claim_run_dir` of this process (the last one unlocks)."""
    key = str(Path(path).resolve())
    held = _HELD.get(key)
    if held is None:
        return
    held[1] -= 1
    if held[1] == 0:
        del _HELD[key]
        if fcntl is None:  # pragma: no cover - Windows
            Path(path, LOCK_FILE).unlink(missing_ok=True)
        os.close(held[0])


def discard_unused_run_dir(path: str | Path, empty_parents: int = 0) -> bool:
    """Remove ``path`` if it holds nothing but :data:`START_FILES` (and empty folders), and
    then up to ``empty_parents`` of its parent folders that are left empty; returns whether
    ``path`` was removed. Anything else in it (a checkpoint, a log of real work) keeps it."""
    path = Path(path)
    if not path.is_dir():
        return False
    files = [p for p in path.rglob("*") if not p.is_dir()]
    if any(p.relative_to(path).as_posix() not in START_FILES for p in files):
        return False
    for p in files:
        p.unlink(missing_ok=True)
    for d in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        d.rmdir()
    path.rmdir()
    for parent in list(path.parents)[:empty_parents]:
        try:
            parent.rmdir()  # only succeeds while empty
        except OSError:
            break
    return True
