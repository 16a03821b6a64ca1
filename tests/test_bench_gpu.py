"""bench/gpu.py --dry-run runs on the CPU (issue 12 §6): the real model builders, the
framework's training step and the bare EDM loop, and sampling at NFE 10 and 35."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_gpu_benchmark_dry_run(tmp_path):
    from bench.gpu import main

    rows = main(["--dry-run", "--out", str(tmp_path / "gpu.md")])
    names = [r[0] for r in rows]
    assert any("bare EDM" in n for n in names) and any("NFE 35" in n for n in names)
    text = (tmp_path / "gpu.md").read_text()
    assert "images/s" in text and "ours / bare" in text
