"""The field validator: every built-in field passes in d = 2, 3, 8; invalid or buggy fields
fail the check that should catch them; the command line works for built-in and user fields."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from hydra.utils import instantiate

from tests.conftest import CONF, ROOT, compose_config
from unified_ode.physics import VEField
from unified_ode.physics.examples import PowerLawField
from unified_ode.physics.validator import (
    check_divergence_free,
    check_samplers,
    format_table,
    validate_field,
)
from unified_ode.validate import main as validate_main

INVALID = {"invalid_power_law"}
BUILTIN = sorted(p.stem for p in (CONF / "physics").glob("*.yaml") if p.stem not in INVALID)
# extra variants that take other code paths (the uniform prior is not isotropic)
VARIANTS = [(name, []) for name in BUILTIN] + [("linear", ["physics.prior=uniform"])]


def build(name: str, overrides: list[str] | None = None):
    cfg = compose_config("validate", [f"physics={name}", *(overrides or [])])
    return instantiate(cfg.physics)


def run_validate(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "unified_ode.validate", *args], cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=300, env=env)


def test_builtin_fields_are_listed():
    for name in ("poisson", "ve"):
        assert name in BUILTIN


@pytest.mark.parametrize("d", [2, pytest.param(3, marks=pytest.mark.slow),
                               pytest.param(8, marks=pytest.mark.slow)])
@pytest.mark.parametrize(("name", "overrides"), VARIANTS,
                         ids=[" ".join([n, *o]) for n, o in VARIANTS])
def test_builtin_field_is_valid(name, overrides, d):
    results = validate_field(build(name, overrides), d, seed=0)
    assert all(r.passed for r in results), format_table(results)


def test_valid_field_in_d8_fast():
    """One d = 8 case stays in the fast suite (the isotropic quadrature path)."""
    results = validate_field(build("poisson"), 8, seed=0)
    assert all(r.passed for r in results), format_table(results)


def test_power_law_is_rejected_on_divergence_and_flux():
    """G ∝ (t, x−y)/R^k: invalid for k = d + 2, PFGM's valid Coulomb field for k = d + 1."""
    for d in (2, 8):
        bad = {r.name: r for r in validate_field(PowerLawField(exponent_offset=1.0), d)}
        assert not bad["divergence-free"].passed and bad["divergence-free"].residual > 0.1
        assert not bad["unit flux"].passed
        good = validate_field(PowerLawField(exponent_offset=0.0), d)
        assert all(r.passed for r in good), format_table(good)


class _WrongVelocity(VEField):
    def conditional_velocity(self, x, y, t):
        return 1.05 * super().conditional_velocity(x, y, t)


class _WrongSamplerScale(VEField):
    def sample_kernel(self, y, t, *, generator=None):
        return super().sample_kernel(y, t * 1.1, generator=generator)


def test_divergence_check_catches_a_wrong_velocity():
    assert check_divergence_free(VEField(), 3).passed
    res = check_divergence_free(_WrongVelocity(), 3)
    assert not res.passed and res.residual > 1e-3, res


def test_sampler_check_catches_a_wrong_scale():
    assert check_samplers(VEField(), 3).passed
    res = check_samplers(_WrongSamplerScale(), 3)
    assert not res.passed, res


def test_sampler_check_catches_a_wrong_centre():
    """A VP sampler that forgets the factor a(t) on y: radii about the density's centre still
    match at y = 0, so only the centred tests at y != 0 can see it."""
    vp = build("vp")
    base = type(vp)

    class ForgetsA(base):
        def sample_kernel(self, y, t, *, generator=None):
            eps = torch.randn(y.shape, generator=generator, dtype=y.dtype)
            return y + self.s(torch.as_tensor(t, dtype=y.dtype))[:, None] * eps

    cfg = compose_config("validate", ["physics=vp"]).physics
    wrong = ForgetsA(**{k: v for k, v in cfg.items() if k != "_target_"})
    assert check_samplers(vp, 2).passed
    res = check_samplers(wrong, 2)
    assert not res.passed and "y!=0" in res.detail, res


def test_cli_valid_field_exits_0(capsys):
    assert validate_main(["physics=ve", "dim=3"]) == 0
    out = capsys.readouterr().out
    assert "VALID" in out and out.count("PASS") == 5


def test_cli_invalid_example_exits_1():
    proc = run_validate("physics=invalid_power_law")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    row = next(line for line in proc.stdout.splitlines() if line.startswith("divergence-free"))
    assert "FAIL" in row
    assert "INVALID" in proc.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["physics=no_such_field"], "known fields: "),
    (["physics=ve", "physics._target_=nowhere.Field"], "cannot build"),
    (["physics=ve", "physics.t_min=-1"], "t_min"),
    (["physics=ve", "tolerances.nonsense=1"], "nonsense"),
    (["physics=ve", "dim=0"], "dim"),
    (["--dim", "3"], "unknown option"),
])
def test_cli_bad_input_exits_2(args, message, capsys):
    assert validate_main(args) == 2
    assert message in capsys.readouterr().err


USER_FIELD = '''
"""A user's field, written outside unified_ode: Gaussian noise with schedule s(t) = t^power."""
import torch

from unified_ode.physics import AffineField, GaussianNoise


class SquaredVE(AffineField):
    name = "squared_ve"

    def __init__(self, t_min=0.05, t_max=9.0, power=2.0, **kwargs):
        self.power = float(power)
        super().__init__(noise=GaussianNoise(), t_min=t_min, t_max=t_max, **kwargs)

    def s(self, t):
        return t ** self.power

    def ds(self, t):
        return self.power * t ** (self.power - 1)

    def t_from_sigma(self, sigma):
        return sigma ** (1 / self.power)
'''


def test_cli_user_field_named_in_yaml(tmp_path, monkeypatch, capsys):
    """A user's class and YAML outside the repository, found through hydra.searchpath; run
    from the directory that holds the user's package, as a user would."""
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "fields.py").write_text(USER_FIELD)
    # the same class with a wrong derivative of the schedule (so a wrong velocity)
    (tmp_path / "mypkg" / "wrong.py").write_text(
        USER_FIELD.replace("self.power * t ** (self.power - 1)", "t ** (self.power - 1)"))
    (tmp_path / "myconf" / "physics").mkdir(parents=True)
    yaml = textwrap.dedent("""\
        _target_: mypkg.{module}.SquaredVE
        t_min: 0.05
        t_max: 9.0
        power: 2.0
        """)
    (tmp_path / "myconf" / "physics" / "squared_ve.yaml").write_text(yaml.format(module="fields"))
    (tmp_path / "myconf" / "physics" / "wrong_ve.yaml").write_text(yaml.format(module="wrong"))
    search = f"hydra.searchpath=[file://{tmp_path / 'myconf'}]"
    proc = run_validate(search, "physics=squared_ve", "dim=3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "mypkg.fields.SquaredVE" in proc.stdout
    # in-process from here on (faster): arguments override like a built-in field's, and the
    # wrong velocity is caught
    monkeypatch.syspath_prepend(str(tmp_path))
    assert validate_main([search, "physics=squared_ve", "physics.power=1.5"]) == 0
    assert validate_main([search, "physics=wrong_ve"]) == 1
    assert "divergence-free" in capsys.readouterr().out
