"""No host sync in the hot path (issue 15 §1): a training step and a fixed-step solver step read
no value of a device tensor on the host, for the Poisson (both objectives), PFGM++, VE and
linear fields.

The check runs on the CPU machine with the ``meta`` device standing in for an accelerator: the
built module and the data are moved there, and a ``TorchFunctionMode`` records every call that
would make a GPU wait for its result (``.item()``, ``float()``, ``bool()``, ``int()``,
``.tolist()``, ``.cpu()``, ``nonzero``, boolean-mask indexing, ...) on a tensor off the CPU.
Meta tensors carry no data, so such a call also fails outright (a rejection loop's
``x[mask]`` raises). CPU-side bookkeeping stays allowed, as it is on a GPU: Adam's step count is
a CPU tensor, and the solvers' step sizes come from the float64 CPU grid.

Nothing is patched: the real modules run, as ``train.py`` composes them.
"""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

from tests.conftest import compose_config

#: Tensor calls that make the host wait for a device value (or a data-dependent shape).
HOST_READS = {"item", "__bool__", "__float__", "__int__", "__index__", "__format__", "tolist",
              "numpy", "cpu", "nonzero", "argwhere", "masked_select", "unique",
              "unique_consecutive", "repeat_interleave"}
INDEXING = {"__getitem__", "__setitem__", "index_put_", "index_put"}


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item)


class HostReads(TorchFunctionMode):
    """Records ``(call, devices)`` for every host read of a tensor off the CPU."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[str, set[str]]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        devices = {t.device.type for t in _tensors(args)} - {"cpu"}
        if devices and (name in HOST_READS or (
                name in INDEXING and len(args) > 1
                and any(t.dtype == torch.bool for t in _tensors(args[1])))):
            self.calls.append((name, devices))
        return func(*args, **(kwargs or {}))


def test_the_counter_sees_host_reads_of_device_tensors():
    x = torch.ones(3, device="meta")
    with HostReads() as reads:
        torch.ones(3).sum().item()  # CPU: allowed
        for read in (lambda: x.sum().item(), lambda: bool(x.sum() > 0),
                     lambda: float(x.sum()), lambda: x[x > 0]):
            with pytest.raises((RuntimeError, NotImplementedError)):
                read()
    assert [name for name, _ in reads.calls] == ["item", "__bool__", "__float__",
                                                   "__getitem__"]


SETUPS = {
    "poisson-pfgm": ["physics=poisson", "objective=pfgm_normalised"],
    "poisson": ["physics=poisson"],
    "pfgmpp": ["physics=pfgmpp"],
    "ve": ["physics=ve"],
    "linear": ["physics=linear"],
}


def _meta_module(overrides):
    """The module ``train.py`` builds for ``overrides`` (default MLP, toy data), on meta."""
    import lightning as L

    from unified_ode.app.build import build_module

    cfg = compose_config("train", overrides + ["trainer.log_every_n_steps=50"])
    module, _ = build_module(cfg)
    # a real Trainer, attached but not fitted: training_step reads global_step (0) and
    # log_every_n_steps from it, so this is a step whose scalars are not logged
    module.trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False,
                               enable_progress_bar=False, enable_model_summary=False,
                               log_every_n_steps=50)
    return module.to("meta")


@pytest.mark.parametrize("setup", list(SETUPS))
def test_a_training_step_reads_no_device_value(setup):
    from unified_ode.lit.ema import EMA

    module = _meta_module(SETUPS[setup])
    conf = module.configure_optimizers()
    opt = conf["optimizer"] if isinstance(conf, dict) else conf
    sched = conf["lr_scheduler"]["scheduler"] if isinstance(conf, dict) else None
    ema = EMA()
    y = torch.randn(512, *module.data_shape, device="meta")
    for batch_idx in range(2):  # the second step: optimiser state and EMA shadow exist
        with HostReads() as reads:
            loss = module.training_step([y], batch_idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(module.model.parameters(), 1.0)
            opt.step()
            if sched is not None:
                sched.step()
            ema.update(module.model, y.shape[0])
        assert reads.calls == [], f"{setup}: host reads in a training step: {reads.calls}"


@pytest.mark.parametrize("setup", ["poisson-pfgm", "pfgmpp", "ve", "linear"])
def test_a_fixed_step_solver_step_reads_no_device_value(setup):
    from unified_ode.solvers import RK4, CountingFlow, Euler, Heun

    module = _meta_module(SETUPS[setup])
    for solver in (Euler(steps=4), Heun(steps=4), RK4(steps=4)):
        times = solver.time_grid(module.field)
        flow = CountingFlow(module.flow())
        x = torch.randn(64, *module.data_shape, device="meta")
        state = {"t": times.to(device="meta", dtype=x.dtype)}  # as the shared loop holds it
        with torch.no_grad(), HostReads() as reads:
            for i in range(len(times) - 1):
                x = (solver.step(flow, x, times, i, state) if times[i + 1] != 0
                     else flow.last_step(x, state["t"][i]))
        assert flow.calls == solver.nfe_for_steps(4)
        assert reads.calls == [], f"{setup}/{solver.name}: host reads in a step: {reads.calls}"
