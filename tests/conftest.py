"""Shared test helpers: the repository root, Hydra composition, subprocess runners."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


def compose_config(config_name: str = "train", overrides: list[str] | None = None):
    """Compose a config from ``conf/`` with Hydra's compose API (with the hydra node, so
    ``${hydra:...}`` interpolations resolve)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides or [],
                       return_hydra_config=True)


def compose_plain(config_name: str, overrides: list[str]):
    """A composed config without the ``hydra`` node (for in-process runs)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


def run_script(script: str, *args: str, cwd: Path | None = None, timeout: int = 600,
               check: bool = True) -> subprocess.CompletedProcess:
    """Run ``python <script> args...`` from the repository root; returns the completed process."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} {' '.join(args)} exited {proc.returncode}\n"
                             f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}")
    return proc
