"""Teacher (prior, sample) pairs on disk, keyed and resumable (k-rectified flow's coupling).

A cache directory ``<root>/<key>/`` holds ``meta.json`` and chunk files
``chunk_00000.pt``, ... of ``chunk`` pairs each: ``{"key", "index", "z" (chunk, *shape), "x"
(chunk, *shape), "nfe"}``. The key is a hash of the teacher's key (its checkpoint's sha256),
the solver's description, its NFE and the seed, so pairs of another teacher, solver, NFE or
seed live in another directory and are never mixed in; every chunk also carries its key and
index, and a chunk whose key or index does not match is an error, not data.

Chunk ``i`` is drawn from its own generator (seed ``(seed, i)``), written to a temporary file
and renamed into place (atomic), so an interrupted generation resumes at the first missing
chunk and produces exactly the pairs an uninterrupted one would: none lost, none duplicated.
Asking for more pairs later appends chunks; asking for fewer uses a prefix.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path

import torch

from unified_ode.errors import UserError

META = "meta.json"


def pair_key(teacher_key: str, solver_desc: dict, nfe: int | None, seed: int, chunk: int,
             shape) -> str:
    """The cache key (16 hex digits) of a pair set."""
    blob = json.dumps({"teacher": teacher_key, "solver": solver_desc, "nfe": nfe,
                       "seed": int(seed), "chunk": int(chunk), "shape": list(shape)},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class PairCache:
    """The pairs of one teacher + solver + NFE + seed under ``root`` (see the module
    docstring). ``shape``: one sample's shape; ``chunk``: pairs per file."""

    def __init__(self, root: str | Path, *, teacher_key: str, solver_desc: dict,
                 nfe: int | None, seed: int, chunk: int, shape):
        if int(chunk) < 1:
            raise UserError(f"distill.chunk must be >= 1, got {chunk}")
        self.shape = tuple(int(s) for s in shape)
        self.chunk = int(chunk)
        self.seed = int(seed)
        self.meta = {"teacher_key": teacher_key, "solver": solver_desc, "nfe": nfe,
                     "seed": self.seed, "chunk": self.chunk, "shape": list(self.shape)}
        self.key = pair_key(teacher_key, solver_desc, nfe, seed, chunk, self.shape)
        self.dir = Path(root) / self.key

    def chunk_path(self, i: int) -> Path:
        return self.dir / f"chunk_{i:05d}.pt"

    def _check_meta(self) -> None:
        path = self.dir / META
        if path.is_file():
            saved = json.loads(path.read_text())
            if {k: saved.get(k) for k in self.meta} != json.loads(json.dumps(self.meta,
                                                                             default=str)):
                raise UserError(f"{path} describes other pairs than this teacher/solver/NFE/"
                                "seed; the cache directory is corrupt. Move it away and rerun.")
        else:
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.meta, indent=2, default=str))
            os.replace(tmp, path)

    def read_chunk(self, i: int) -> dict:
        path = self.chunk_path(i)
        data = torch.load(path, map_location="cpu", weights_only=True)
        if data.get("key") != self.key or int(data.get("index", -1)) != i:
            raise UserError(f"{path} holds pairs of another teacher/solver/NFE/seed (key "
                            f"{data.get('key')}, index {data.get('index')}; expected {self.key}, "
                            f"{i}); refusing to mix them in. Remove the file and rerun.")
        if tuple(data["z"].shape[1:]) != self.shape or data["z"].shape != data["x"].shape:
            raise UserError(f"{path} has pairs of shape {tuple(data['z'].shape)}, expected "
                            f"(n, {', '.join(map(str, self.shape))})")
        return data

    def missing(self, n: int) -> list[int]:
        """Indices of the chunks still to generate for ``n`` pairs."""
        return [i for i in range(math.ceil(n / self.chunk)) if not self.chunk_path(i).is_file()]

    def generate(self, n: int, sample_pair_chunk, *, log=print) -> dict:
        """Make sure the first ``n`` pairs exist. ``sample_pair_chunk(i, m, generator)`` returns
        ``(z, x, nfe)`` for chunk ``i`` of ``m`` pairs drawn with ``generator``. Returns
        ``{"generated": chunks made now, "reused": chunks found, "seconds": wall time}``."""
        if int(n) < 1:
            raise UserError(f"distill.pairs must be >= 1, got {n}")
        self._check_meta()
        todo = self.missing(n)
        total = math.ceil(n / self.chunk)
        start = time.perf_counter()
        for done, i in enumerate(todo):
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
            z, x, nfe = sample_pair_chunk(i, self.chunk, g)
            payload = {"key": self.key, "index": i, "z": z.detach().cpu().contiguous(),
                       "x": x.detach().cpu().contiguous(), "nfe": int(nfe)}
            tmp = self.chunk_path(i).with_suffix(".tmp")
            torch.save(payload, tmp)
            os.replace(tmp, self.chunk_path(i))
            log(f"reflow pairs: chunk {i + 1}/{total} ({done + 1} of {len(todo)} to make) "
                f"in {self.dir}")
        return {"generated": len(todo), "reused": total - len(todo),
                "seconds": time.perf_counter() - start}

    def load(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``n`` pairs ``(z, x)``, each ``(n, *shape)``."""
        chunks = [self.read_chunk(i) for i in range(math.ceil(n / self.chunk))]
        z = torch.cat([c["z"] for c in chunks])[:n]
        x = torch.cat([c["x"] for c in chunks])[:n]
        return z, x
