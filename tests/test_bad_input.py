"""Bad input (issue 14): a bad command line is one clear error, before anything runs.

Bad inputs go through ``train.py`` / ``sample.py`` as a user would: exit status 2, one message
naming the key and what is allowed, no traceback, nothing left on disk. Also: every shipped
default passes the schema, and interpolated values are checked after resolution.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import CONF, run_script
from unified_ode.errors import UserError

TRAIN_BAD = [  # (override(s), words the message must contain)
    (["trainer.max_steps=abc"], ["trainer.max_steps='abc'", "integer"]),
    (["trainer.max_steps=0"], ["trainer.max_steps=0", ">= 1"]),
    (["trainer.max_steps=-1"], ["trainer.max_steps=-1", "never end"]),
    (["dataset.batch_size=0"], ["dataset.batch_size=0", ">= 1"]),
    (["optim.lr=-1"], ["optim.lr=-1", "> 0"]),
    (["optim.lr=abc"], ["optim.lr='abc'", "number"]),
    (["physics.t_min=80"], ["physics.t_min=80", "physics.t_max=80", "smaller"]),
    (["physics.t_min=100", "physics.t_max=1"], ["physics.t_min=100", "smaller"]),
    (["physics.t_min=-1"], ["physics.t_min=-1", "> 0"]),
    (["solver.steps=0"], ["solver.steps=0", ">= 1"]),
    (["callbacks.checkpoint.every_n_train_steps=-3"], ["every_n_train_steps=-3", ">= 0"]),
    (["resume=maybe"], ["resume='maybe'", "true or false"]),
    (["seed=1.5"], ["seed=1.5", "integer"]),
    (["foo=1"], ["unknown key 'foo'", "+foo=1"]),
    (["trainer.max_step=10"], ["unknown key 'trainer.max_step'", "+trainer.max_step=10"]),
    (["dataset.batch_size=[1,"], ["dataset.batch_size=[1,", "cannot parse"]),
    (["-m", "optim.lr=1e-3,-2"], ["optim.lr=-2", "> 0"]),  # every value of a sweep
    (["-m", "physics=ve,nope"], ["physics=nope", "no such option", "ve"]),
    (["resume=true"], ["resume=true", "does not exist"]),
    (["ckpt_path=/nonexistent/x.ckpt"], ["ckpt_path='/nonexistent/x.ckpt'", "does not exist"]),
]
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name != "hydra") + [
    "hydra/launcher"]
SAMPLE_BAD = [
    (["n=0"], ["n=0", ">= 1"]),
    (["n=-5"], ["n=-5", ">= 1"]),
    (["batch_size=0"], ["batch_size=0", ">= 1"]),
    (["temperature=0"], ["temperature=0", "> 0"]),
    (["record_every=x"], ["record_every='x'", "integer"]),
    (["physics.t_min=81"], ["physics.t_min=81", "smaller"]),
    (["nn=3"], ["unknown key 'nn'"]),
    (["solver=nope"], ["solver=nope", "no such option", "heun"]),
]


def check_refused(script: str, args: list[str], words: list[str], cwd: Path) -> None:
    """``script args`` exits 2 with one message holding ``words``, and writes nothing."""
    run_dir = cwd / "explicit_run"
    extra = [] if any(a.startswith("hydra.") for a in args) else (
        [f"hydra.run.dir={run_dir}"] if script == "train.py" and "-m" not in args else [])
    proc = run_script(script, *args, *extra, cwd=cwd, check=False, timeout=120)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr and "HYDRA_FULL_ERROR" not in proc.stderr
    message = proc.stderr.strip().splitlines()
    assert len(message) == 1 and message[0].startswith(f"{script}: error: "), proc.stderr
    for word in words:
        assert word in message[0], (word, message[0])
    assert list(cwd.iterdir()) == [], list(cwd.rglob("*"))  # no half-made directory


@pytest.mark.parametrize("args,words", TRAIN_BAD, ids=lambda x: "_".join(x)[:40]
                         if isinstance(x, list) and x and "=" in "".join(x) else None)
def test_train_bad_input_is_one_clear_error(args, words, tmp_path):
    check_refused("train.py", args, words, tmp_path)


@pytest.mark.parametrize("group", GROUPS)
def test_every_config_group_names_its_options(group, tmp_path):
    """An unknown option of any group names the group and lists its real options."""
    options = sorted(p.stem for p in (CONF / group).glob("*.yaml"))
    words = [f"{group}=no_such_option", "no such option"] + options[:2]
    check_refused("train.py", [f"{group}=no_such_option"], words, tmp_path)


@pytest.mark.parametrize("args,words", SAMPLE_BAD, ids=lambda x: "_".join(x)[:40]
                         if isinstance(x, list) and x and "=" in "".join(x) else None)
def test_sample_bad_input_is_one_clear_error(args, words, tmp_path):
    check_refused("sample.py", [*args, "network=exact", "dataset.n_train=64"], words, tmp_path)


def test_schema_checks_composed_defaults_and_resolves_interpolations():
    """Every shipped default passes; interpolated values are checked after resolution."""
    from tests.conftest import compose_config
    from unified_ode.app.schema import validate_sample, validate_train

    assert validate_train(compose_config("train"))["optim.lr"] > 0
    assert validate_sample(compose_config("sample"))["n"] >= 1
    with pytest.raises(UserError, match=r"optim\.lr=-0\.5 is not allowed"):
        validate_train(compose_config("train", ["+neg=-0.5", "optim.lr=${neg}"]))
    for experiment in sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")):
        validate_train(compose_config("train", [f"experiment={experiment}"]))
