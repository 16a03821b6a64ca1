"""``python -m unified_ode.app.validate physics=<name> [dim=<d>] [seed=<s>]``: is a field valid?

Composes ``conf/validate.yaml`` with Hydra (so ``physics=<name>`` picks
``conf/physics/<name>.yaml`` and ``physics.<key>=<value>`` changes an argument), instantiates
the field and runs every check of :mod:`unified_ode.physics.validator`, printing one row per
check with its residual, tolerance and PASS/FAIL (SKIP for a check that does not apply,
e.g. the denoiser drift of a velocity-only field).

Exit status: 0 when every check passes, 1 when any fails, 2 for bad input (an unknown field,
a malformed override, a ``_target_`` that cannot be imported or built).

A field of your own needs no edit here: write ``mypkg/fields.py`` with your class and
``myconf/physics/my_field.yaml`` with ``_target_: mypkg.fields.MyField`` (and its arguments),
then run, from the directory that holds ``mypkg``::

    python -m unified_ode.app.validate hydra.searchpath=[file://$PWD/myconf] physics=my_field
"""

from __future__ import annotations

import sys
from pathlib import Path

CONF = Path(__file__).resolve().parents[2] / "conf"
PROG = "python -m unified_ode.app.validate"
USAGE = f"""usage: {PROG} physics=<name> [dim=<d>] [seed=<s>] [physics.<key>=<value> ...]

Checks numerically that a force field is a valid Green's field (THEORY.md §2), that its
samplers match its log-densities, and that the drift sampling integrates (from the exact
denoiser of a small data set) is the exact velocity. Exit status 0 if every check passes,
1 if any fails, 2 for bad input. Fields: {{fields}}.
Your own: hydra.searchpath=[file:///abs/conf] physics=<yours>
"""
REQUIRED = ("sample_kernel", "kernel_log_prob", "pairwise_kernel_log_prob",
            "conditional_velocity", "sample_prior", "prior_log_prob", "t_min", "t_max")


class BadInput(Exception):
    """Input the validator cannot work with (exit status 2)."""


def builtin_fields() -> list[str]:
    return sorted(p.stem for p in (CONF / "physics").glob("*.yaml"))


def compose(overrides: list[str]):
    """The composed ``validate`` config, or :class:`BadInput` with what to type instead."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return hydra_compose(config_name="validate", overrides=overrides)
    except MissingConfigException as exc:
        raise BadInput(f"{exc}\nknown fields: {', '.join(builtin_fields())}; for your own, "
                       "add hydra.searchpath=[file:///abs/path/to/conf] with "
                       "physics/<name>.yaml inside") from None
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        raise BadInput(f"cannot compose the config from {overrides}: {exc}") from None


def build_field(cfg):
    """Instantiate ``cfg.physics``; a field that cannot be built is bad input."""
    from hydra.utils import instantiate

    if "_target_" not in cfg.physics:
        raise BadInput("the physics config has no _target_: name the field class, e.g. "
                       "_target_: mypkg.fields.MyField")
    try:
        field = instantiate(cfg.physics)
    except Exception as exc:  # noqa: BLE001 - reported to the user as bad input
        cause = exc.__cause__ or exc
        raise BadInput(f"cannot build physics={cfg.physics._target_}: "
                       f"{type(cause).__name__}: {cause}") from None
    missing = [m for m in REQUIRED if not hasattr(field, m)]
    if missing:
        raise BadInput(f"{cfg.physics._target_} is not a force field: it lacks "
                       f"{', '.join(missing)} (subclass unified_ode.physics.Field)")
    return field


def run(overrides: list[str]) -> int:
    """Validate as the overrides say; prints the table and returns the exit status."""
    from unified_ode.physics.validator import format_table, validate_field

    cfg = compose(overrides)
    try:
        dim, seed = int(cfg.dim), int(cfg.seed)
    except (TypeError, ValueError):
        raise BadInput(f"dim and seed must be integers, got dim={cfg.dim} "
                       f"seed={cfg.seed}") from None
    if dim < 1:
        raise BadInput(f"dim must be >= 1, got {dim}")
    field = build_field(cfg)
    name = getattr(field, "name", type(field).__name__)
    describe = field.describe() if hasattr(field, "describe") else {}
    print(f"validating physics={name} ({cfg.physics._target_}) in d={dim}, seed={seed}")
    if describe:
        print("  " + ", ".join(f"{k}={v}" for k, v in describe.items()))
    tolerances = {k: v for k, v in (cfg.get("tolerances") or {}).items() if v is not None}
    try:
        results = validate_field(field, dim, seed=seed, tolerances=tolerances)
    except ValueError as exc:  # an unknown tolerance name
        raise BadInput(str(exc)) from None
    print(format_table(results))
    failed = [r.name for r in results if not r.passed]
    if failed:
        print(f"INVALID: {len(failed)} of {len(results)} checks failed ({', '.join(failed)})")
        return 1
    skipped = [r.name for r in results if r.skipped]
    ran = len(results) - len(skipped)
    print(f"VALID: all {ran} checks passed"
          + (f" ({len(skipped)} not applicable: {', '.join(skipped)})" if skipped else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE.format(fields=", ".join(builtin_fields())))
        return 0
    bad = [a for a in argv if a.startswith("-")]
    if bad:
        print(f"{PROG}: error: unknown option {bad[0]}; arguments are Hydra overrides like "
              "physics=ve dim=3", file=sys.stderr)
        return 2
    try:
        return run(argv)
    except BadInput as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
