"""Value checks of a composed config, before any object is built or any file is written.

Each checked section has a dataclass schema here: the field's type is enforced by OmegaConf's
structured-config validation (``OmegaConf.structured``: ``'abc'`` is not an ``int``), and its
range by the ``check`` in the field's metadata. Only the keys a schema names are checked, and
only where the composed config has them (groups differ in their keys); everything else a
config group defines (Trainer arguments, network sizes, ...) is passed on unchecked. Cross-key
rules (``physics.t_min < physics.t_max``) follow the per-key ones.

A problem is a :class:`~unified_ode.errors.UserError` naming the key, the bad value and what is
allowed, e.g. ``trainer.max_steps='abc' is not allowed: expected an integer >= 1, or -1 (no
limit)``. The schemas are not placed in the configs' defaults lists: a closed structured node
would refuse the extra keys (``+trainer.profiler=simple``) that the groups rightly accept.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from unified_ode.errors import UserError


def _rule(default: Any, check, allowed: str):
    """A schema field: ``check(value) -> bool`` on the converted value, ``allowed`` in words."""
    return field(default=default, metadata={"check": check, "allowed": allowed})


def _positive_int(default=1):
    return _rule(default, lambda v: v >= 1, "an integer >= 1")


def _count(default=0):
    return _rule(default, lambda v: v >= 0, "an integer >= 0")


def _positive(default=1.0):
    return _rule(default, lambda v: v > 0, "a number > 0")


def _optional(check):
    return lambda v: v is None or check(v)


@dataclass
class TrainerSchema:
    max_steps: int = _rule(-1, lambda v: v == -1 or v >= 1,
                           "an integer >= 1, or -1 (no limit: then trainer.max_epochs ends it)")
    max_epochs: int | None = _rule(None, _optional(lambda v: v == -1 or v >= 1),
                                      "an integer >= 1, -1 (no limit) or null")
    log_every_n_steps: int = _positive_int()
    accumulate_grad_batches: int = _positive_int()
    gradient_clip_val: float | None = _rule(None, _optional(lambda v: v >= 0),
                                               "a number >= 0, or null (no clipping)")


@dataclass
class DatasetSchema:
    batch_size: int = _positive_int()
    n_train: int | None = _rule(None, _optional(lambda v: v >= 1), "an integer >= 1")
    n_heldout: int | None = _rule(None, _optional(lambda v: v >= 1), "an integer >= 1")
    num_workers: int = _count()


@dataclass
class OptimSchema:
    lr: float = _positive(1e-3)
    eps: float = _positive(1e-8)
    weight_decay: float = _rule(0.0, lambda v: v >= 0, "a number >= 0")


@dataclass
class PhysicsSchema:
    t_min: float = _positive(1e-3)
    t_max: float = _positive(1.0)


@dataclass
class SolverSchema:
    steps: int | None = _rule(None, _optional(lambda v: v >= 1), "an integer >= 1")
    t_min: float | None = _rule(None, _optional(lambda v: v > 0), "a number > 0, or null")
    t_max: float | None = _rule(None, _optional(lambda v: v > 0), "a number > 0, or null")


@dataclass
class CheckpointSchema:
    every_n_train_steps: int | None = _rule(None, _optional(lambda v: v >= 0),
                                               "an integer >= 0 (0: only at the end)")


@dataclass
class MetricsSchema:
    n_samples: int = _positive_int()
    batch_size: int = _positive_int()


@dataclass
class TrainTopSchema:
    seed: int = 0
    resume: bool = False
    compile: bool = False
    lr_warmup_steps: int = _count()


@dataclass
class SampleTopSchema:
    n: int = _positive_int(2000)
    batch_size: int = _positive_int(2000)
    seed: int = 0
    ema: bool = True
    record_every: int = _count()
    temperature: float = _positive()
    grid_size: int = _positive_int(64)
    interpolate: bool = False
    interpolate_pairs: int = _positive_int(4)
    interpolate_steps: int = _rule(10, lambda v: v >= 2, "an integer >= 2")


#: (config path of the section, its schema); "" is the config's top level.
MODEL_SCHEMAS = (("physics", PhysicsSchema), ("solver", SolverSchema))
TRAIN_SCHEMAS = (("", TrainTopSchema), ("trainer", TrainerSchema), ("dataset", DatasetSchema),
                 ("optim", OptimSchema), ("callbacks.checkpoint", CheckpointSchema),
                 ("callbacks.metrics", MetricsSchema), *MODEL_SCHEMAS)
SAMPLE_SCHEMAS = (("", SampleTopSchema), ("dataset", DatasetSchema), *MODEL_SCHEMAS)

_UNSET = object()


def _value(cfg: DictConfig, key: str):
    """``cfg``'s value at ``key`` (interpolations resolved), or ``_UNSET`` when it is absent or
    cannot be resolved here (``${hydra:...}`` outside a Hydra run)."""
    try:
        return OmegaConf.select(cfg, key, default=_UNSET)
    except OmegaConfBaseException:
        return _UNSET


def _show(value) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def check_section(cfg: DictConfig, path: str, schema) -> dict:
    """Check the keys of ``schema`` that ``cfg`` has under ``path``; returns the converted
    values (by full key). Raises :class:`UserError` on the first bad value."""
    typed = OmegaConf.structured(schema)
    out = {}
    for f in dataclasses.fields(schema):
        key = f"{path}.{f.name}" if path else f.name
        value = _value(cfg, key)
        if value is _UNSET:
            continue
        allowed = f.metadata.get("allowed") or _type_words(f.type)
        try:
            typed[f.name] = value
            converted = typed[f.name]
        except OmegaConfBaseException:
            raise UserError(f"{key}={_show(value)} is not allowed: expected "
                            f"{allowed}.") from None
        check = f.metadata.get("check")
        if isinstance(converted, bool) and "bool" not in str(f.type) or (
                check is not None and not check(converted)):
            raise UserError(f"{key}={_show(value)} is not allowed: expected {allowed}.")
        out[key] = converted
    return out


def _type_words(tp) -> str:
    text = str(tp)
    for name, words in (("bool", "true or false"), ("int", "an integer"),
                        ("float", "a number")):
        if name in text:
            return words
    return text


def _check_range(values: dict, lo: str, hi: str) -> None:
    a, b = values.get(lo), values.get(hi)
    if a is not None and b is not None and not a < b:
        raise UserError(f"{lo}={a} must be smaller than {hi}={b}: time runs from t_max (the "
                        "prior) down to t_min (the data). Swap them, or change one.")


def validate(cfg: DictConfig, schemas) -> dict:
    """Check ``cfg`` against ``schemas`` ((path, dataclass) pairs) and the cross-key rules;
    returns the checked values by full key."""
    values = {}
    for path, schema in schemas:
        values.update(check_section(cfg, path, schema))
    _check_range(values, "physics.t_min", "physics.t_max")
    _check_range(values, "solver.t_min", "solver.t_max")
    if values.get("trainer.max_steps") == -1 and values.get("trainer.max_epochs", 0) == -1:
        raise UserError("trainer.max_steps=-1 and trainer.max_epochs=-1: training would never "
                        "end. Set trainer.max_steps=<steps> (or trainer.max_epochs=<epochs>).")
    return values


def validate_train(cfg: DictConfig) -> dict:
    """The checks of a ``train.py`` config (see the module docstring)."""
    return validate(cfg, TRAIN_SCHEMAS)


def validate_sample(cfg: DictConfig) -> dict:
    """The checks of a ``sample.py`` config (its own keys, and the model groups it composes)."""
    return validate(cfg, SAMPLE_SCHEMAS)
