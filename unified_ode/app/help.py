"""``train.py --help`` / ``sample.py --help``: the config groups, their options and the
top-level settings, one line each, read from ``conf/`` itself (no second copy to keep in step).

Each option's line is the first comment line of its YAML file (after ``# @package``); each
top-level setting's line is its inline comment or the first line of the comment above it.
Standard library only: ``--help`` must answer without importing torch (``conf/hydra/help/``
calls :func:`groups_help` and :func:`settings_help` through OmegaConf resolvers).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"

#: One line per config group: what choosing an option of it changes.
GROUP_LINES = {
    "physics": "the force field (kernel, prior, time range)",
    "objective": "the training target (parametrisation of the network's output)",
    "network": "the network, or the exact field of the data (network=exact, sampling only)",
    "solver": "the ODE integrator used for sampling and the sample metrics",
    "dataset": "the training data",
    "trainer": "Lightning Trainer: device, steps, precision, DDP",
    "logger": "where metrics go (CSV, TensorBoard, Weights & Biases)",
    "callbacks": "EMA, sample metrics, figures, checkpoints, progress bar",
    "optim": "optimiser and learning-rate schedule",
    "experiment": "a bundle of overrides for one recipe (applied on top of the rest)",
    "hparams_search": "hyper-parameter search with Optuna (use with -m)",
}


def _first_comment(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line.startswith("#"):
            if line:
                break
            continue
        text = line.lstrip("#").strip()
        if text and not text.startswith("@package"):
            return text
    return ""


def _defaults(config_name: str) -> dict[str, str | None]:
    """``group -> default option`` from the ``defaults`` list of ``conf/<config_name>.yaml``
    (parsed by OmegaConf, so comments and layout do not matter)."""
    from omegaconf import OmegaConf

    out: dict[str, str | None] = {}
    for entry in OmegaConf.load(CONF_DIR / f"{config_name}.yaml").get("defaults") or []:
        if isinstance(entry, str):  # _self_
            continue
        for key, value in entry.items():
            group = str(key).removeprefix("override").strip().lstrip("/")
            if not group.startswith("hydra"):
                out[group] = None if value is None else str(value)
    return out


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def groups_help(config_name: str) -> str:
    """The config groups of ``conf/<config_name>.yaml``'s defaults list: one line per group,
    then one line per option (``*`` marks the default)."""
    width = shutil.get_terminal_size((100, 24)).columns
    lines = []
    for group, default in _defaults(config_name).items():
        options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        if not options:
            continue
        head = f"{group}=<option>   {GROUP_LINES.get(group, '')}"
        lines.append(head + (f" (default: {default})" if default else " (default: none)"))
        pad = max(len(o) for o in options) + 2
        for option in options:
            mark = "*" if option == default else " "
            desc = _first_comment(CONF_DIR / group / f"{option}.yaml")
            lines.append(_clip(f"  {mark} {option.ljust(pad)}{desc}", width))
    return _escape("\n".join(lines))


def settings_help(config_name: str) -> str:
    """The top-level settings of ``conf/<config_name>.yaml`` (not groups, not ``hydra``), one
    line each: ``key=<default>  what it does``."""
    width = shutil.get_terminal_size((100, 24)).columns
    text = (CONF_DIR / f"{config_name}.yaml").read_text(encoding="utf-8").splitlines()
    rows, comment, after_key = [], [], False
    for line in text:
        if line.startswith("#"):
            if after_key:  # a new comment block
                comment, after_key = [], False
            comment.append(line.lstrip("#").strip())
            continue
        m = re.match(r"^(\w+)\s*:\s*(.*?)\s*(?:#\s*(.*))?$", line)
        if not m:
            if not line.strip():
                comment, after_key = [], False
            continue
        key, value, inline = m.group(1), m.group(2), m.group(3)
        if key not in ("defaults", "hydra"):
            desc = inline or (comment[0] if comment else "")
            shown = f"{key}={value}" if value else f"{key}.<key>=..."
            rows.append((shown, desc))
        after_key = True  # the comment block above also describes the keys right below it
    pad = min(max((len(r[0]) for r in rows), default=0), 22) + 2
    return _escape("\n".join(_clip(f"  {(shown + '  ').ljust(pad)}{desc}", width)
                            for shown, desc in rows))


def _escape(text: str) -> str:
    """Hydra fills the help template with ``string.Template``: a literal ``$`` is ``$$``."""
    return text.replace("$", "$$")
