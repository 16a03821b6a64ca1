"""Sharing the runs among worker processes: a ``concurrent.futures.ProcessPoolExecutor``
(spawned processes), each item handed to exactly one worker.

Each worker gets ``OMP_NUM_THREADS = cores // jobs`` (unless the environment sets it) before
its first task, in its environment (inherited by the ``train.py`` subprocesses it starts) and
as torch's thread count.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed


def worker_threads(jobs: int) -> int:
    """Threads per worker: the environment's OMP_NUM_THREADS, else cores // jobs (≥ 1)."""
    env = os.environ.get("OMP_NUM_THREADS")
    if env:
        return int(env)
    return max(1, (os.cpu_count() or 1) // max(1, jobs))


def _init_worker(threads: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["PYTHONUNBUFFERED"] = "1"
    import torch

    torch.set_num_threads(threads)


def run_each(fn: Callable, items: Iterable, jobs: int, *, on_error: Callable | None = None
             ) -> list:
    """``[fn(item) for item in items]`` with ``jobs`` worker processes (in this process when
    ``jobs`` ≤ 1); results in the items' order. ``fn`` and the items must be picklable
    (``fn`` a module-level function). When ``fn`` raises, ``on_error(item, exc)`` gives the
    item's result (without ``on_error`` the exception propagates)."""
    items = list(items)

    def failed(item, exc):
        if on_error is None:
            raise exc
        return on_error(item, exc)

    if jobs <= 1 or len(items) <= 1:
        out = []
        for item in items:
            try:
                out.append(fn(item))
            except Exception as exc:
                out.append(failed(item, exc))
        return out
    results: list = [None] * len(items)
    ctx = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
    with ProcessPoolExecutor(max_workers=min(jobs, len(items)), mp_context=ctx,
                             initializer=_init_worker,
                             initargs=(worker_threads(jobs),)) as pool:
        futures = {pool.submit(fn, item): i for i, item in enumerate(items)}
        try:
            for fut in as_completed(futures):
                i = futures[fut]
                try:
                    results[i] = fut.result()
                except Exception as exc:
                    results[i] = failed(items[i], exc)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return results
