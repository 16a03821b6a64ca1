"""bench/overhead.py end to end at a tiny size (not timed: the figures are the benchmark's):
both tables, the sampling cross-check (the bare Heun loop must reproduce ``sample()``) and
every Lightning variant training the same steps."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_overhead_benchmark_runs_every_side():
    from bench.overhead import VARIANTS, main

    tiny = ["--setups", "loop", "--steps", "12", "--warmup", "2", "--rounds", "1"]
    (row,) = main([*tiny, "--samples", "16", "--sample-repeats", "1"])
    assert row["train_ours_ms"] > 0 and row["train_bare_ms"] > 0 and row["nfe"] == 35
    (var,) = main([*tiny, "--variants"])
    assert set(var["ms"]) == {"bare", *VARIANTS} and min(var["ms"].values()) > 0
