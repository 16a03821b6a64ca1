"""Small helpers shared by the case study's modules: paths, logging, number formatting, files."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
STUDY_CONFIG = CONF / "case_study.yaml"


def log(msg: str) -> None:
    """Prints ``msg`` as one line in one write: worker processes share stdout unbuffered,
    where ``print`` writes the text and its newline separately and two workers' lines could
    splice into one."""
    sys.stdout.write(msg + "\n")
    sys.stdout.flush()


def fmt(x: float | None, digits: int = 4) -> str:
    if x is None:
        return "—"
    if not math.isfinite(x):
        return str(x)
    return f"{x:.{digits}g}"


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), (float(arr.std(ddof=1)) if len(arr) > 1 else None)


def fmt_ms(values: list[float]) -> str:
    m, s = mean_std(values)
    return fmt(m) if s is None else f"{fmt(m)} ± {fmt(s, 2)}"


def write_json(path: Path, obj) -> None:
    """Atomic: a temporary file renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    tmp.replace(path)


def override_root(o: str) -> str:
    """``group`` of an override ``[+~]group[.key]=value``."""
    return o.lstrip("+~").split("=", 1)[0]
