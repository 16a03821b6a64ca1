"""Check a ``train.py`` / ``sample.py`` command line before Hydra creates or writes anything.

:func:`preflight` composes the command's config with Hydra's compose API (once per value of
each sweep, ``-m a=1,2``), turns composition errors (an unknown key without ``+``, an unknown
option of a config group, a malformed override) into one-line messages, and checks the values
(:mod:`unified_ode.app.schema`). For ``train.py`` it then claims the run directory
(:mod:`unified_ode.app.claims`): the default time-stamped directory (``hydra.run.dir``, or
``hydra.sweep.dir`` with ``-m``) is replaced by a freshly created one passed on to Hydra as an
explicit override, and an explicit directory is locked for this process and checked with
:func:`~unified_ode.app.runs.resume_checkpoint`. Every problem is a
:class:`~unified_ode.errors.UserError`; the scripts print it and exit with status 2, and
nothing has been written (a directory the check itself created is removed again).

Commands that only print (``--help``, ``--hydra-help``, ``--info``, ``--cfg``, shell
completion) and commands with another config search path (``-cp``, ``-cd``) are passed on
unchecked.
"""

from __future__ import annotations

import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from unified_ode.errors import UserError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
#: Hydra flags after which nothing runs, or which change where configs come from.
PASS_FLAGS = ("--help", "-h", "--hydra-help", "--info", "-i", "--version", "--cfg", "-c",
              "--shell-completion", "-sc", "--config-path", "-cp", "--config-dir", "-cd",
              "--experimental-rerun")
#: Hydra flags that take a value (as the next argument or after ``=``).
VALUE_FLAGS = ("--package", "-p", "--config-name", "-cn")


def split_command_line(argv: list[str]) -> tuple[list[str], dict] | None:
    """``(overrides, flags)`` of a Hydra command line (without the program name), or ``None``
    when it should pass unchecked (see the module docstring)."""
    overrides, flags, i = [], {}, 0
    while i < len(argv):
        arg = argv[i]
        name = arg.split("=", 1)[0]
        if name in PASS_FLAGS or (name.startswith("-") and name not in (
                "-m", "--multirun", "--resolve", *VALUE_FLAGS)):
            return None
        if name in VALUE_FLAGS:
            if "=" in arg:
                flags[name] = arg.split("=", 1)[1]
            else:
                flags[name] = argv[i + 1] if i + 1 < len(argv) else ""
                i += 1
        elif arg.startswith("-"):
            flags[name] = True
        else:
            overrides.append(arg)
        i += 1
    return overrides, flags


def sweep_variants(overrides: list[str]) -> list[list[str]]:
    """The override lists to check for a sweep: the first value of every sweep, then each
    other value of each sweep in turn (linear in the number of values, not their product).
    Sweeps Hydra cannot enumerate (``interval(...)``, for Optuna) are left out."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser, parsed = OverridesParser.create(), []
    for line in overrides:
        try:
            parsed += parser.parse_overrides([line])
        except HydraException as exc:
            raise UserError(f"cannot parse the override {line!r}: {_first_lines(exc)}") \
                from None
    fixed, sweeps = [], []
    for o in parsed:
        if not o.is_sweep_override():
            fixed.append(o.input_line)
            continue
        try:
            values = list(o.sweep_string_iterator())
        except HydraException:
            continue
        sweeps.append([f"{o.get_key_element()}={v}" for v in values])
    if not sweeps:
        return [fixed]
    base = [s[0] for s in sweeps]
    variants = [fixed + base]
    for i, values in enumerate(sweeps):
        for v in values[1:]:
            variants.append(fixed + base[:i] + [v] + base[i + 1:])
    return variants


def _first_lines(exc: BaseException, stop: str = "Config search path") -> str:
    text = str(exc).split(stop, 1)[0].strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(lines).replace("Available options in", "available options in")


def compose_checked(config_name: str, overrides: list[str]) -> DictConfig:
    """The composed config (with the hydra node), or a :class:`UserError` that names the
    offending override."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException, MissingConfigException

    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name=config_name, overrides=overrides,
                           return_hydra_config=True)
    except MissingConfigException as exc:
        text = _first_lines(exc)
        match = re.search(r"Could not find '([^']+)/([^'/]+)'", text)
        what = f"{match[1]}={match[2]}: no such option" if match else "unknown config option"
        options = text.split("available options in", 1)[-1] if match else text
        raise UserError(f"{what}. Available options in{options} (the files of conf/"
                        f"{match[1] if match else '<group>'}/).") from None
    except (HydraException, OmegaConfBaseException) as exc:
        text = _first_lines(exc)
        if "Could not override" in text or "not in struct" in text:
            key = text.split("'")[1] if "'" in text else "?"
            line = next((o for o in overrides if o.split("=", 1)[0].lstrip("+~") == key), key)
            raise UserError(f"unknown key {key!r} (in {line!r}): the config has no such key. "
                            f"Check its spelling (python {config_name}.py --cfg job lists every "
                            f"key), or add a new key on purpose with +{line.lstrip('+')}.") \
                from None
        raise UserError(f"cannot compose the config: {text}") from None


def preflight(config_name: str, argv: list[str], validate) -> list[str]:
    """Check ``argv`` (``sys.argv``) for ``conf/<config_name>.yaml`` with ``validate(cfg)``;
    for ``train`` also claim the run directory. Returns the command line to hand to Hydra (the
    same, or with the claimed directory as an explicit ``hydra.*.dir`` override)."""
    split = split_command_line(argv[1:])
    if split is None:
        return argv
    overrides, flags = split
    config_name = str(flags.get("--config-name", flags.get("-cn", config_name)))
    cfg = None
    for variant in sweep_variants(overrides):
        composed = compose_checked(config_name, variant)
        validate(composed)
        cfg = cfg if cfg is not None else composed
    if config_name == "sample" and cfg is not None and cfg.get("out_dir"):
        existing = Path(str(cfg.out_dir)) / "samples.npz"
        if existing.exists():
            raise UserError(f"{existing} already exists; refusing to overwrite it. Pass "
                            "out_dir=<a new directory>.")
    if config_name != "train" or cfg is None:
        return argv
    mode = OmegaConf.select(cfg, "hydra.mode")  # a config may ask for a multirun itself
    multirun = bool(flags.get("-m") or flags.get("--multirun")) or (
        mode is not None and str(getattr(mode, "name", mode)) == "MULTIRUN")
    return claim_for_command(cfg, argv, overrides, multirun)


def _given(overrides: list[str], key: str) -> bool:
    return any(o.lstrip("+").split("=", 1)[0] == key for o in overrides)


def claim_for_command(cfg: DictConfig, argv: list[str], overrides: list[str],
                      multirun: bool) -> list[str]:
    """Claim the directory ``train.py`` will write (see the module docstring)."""
    from unified_ode.app.claims import (
        claim_new_dir,
        claim_run_dir,
        discard_unused_run_dir,
        release_run_dir,
    )
    from unified_ode.app.runs import resume_checkpoint

    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    try:
        target = Path(str(OmegaConf.select(cfg, key)))
    except OmegaConfBaseException:
        return argv  # a pattern only Hydra's run can resolve: the job claims its directory
    if not _given(overrides, key):
        new = claim_new_dir(target)
        return [*argv, f"{key}={new}"]
    existed = target.exists()
    claim_run_dir(target)  # held until this process ends
    if multirun:
        return argv  # each job checks its own directory (<sweep dir>/<job num>)
    try:
        with open_dict(cfg):
            cfg.run_dir = str(target)
        resume_checkpoint(target, cfg)
    except OmegaConfBaseException:
        pass  # an interpolation only Hydra's run resolves: the job checks again
    except UserError:
        release_run_dir(target)
        if not existed:
            discard_unused_run_dir(target)
        raise
    return argv


def run_preflight(prog: str, config_name: str, argv: list[str], validate) -> list[str]:
    """:func:`preflight` with its errors printed as ``prog: error: ...`` (exit status 2)."""
    from unified_ode.errors import friendly_errors

    with friendly_errors(prog):
        return preflight(config_name, argv, validate)
