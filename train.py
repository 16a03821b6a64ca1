"""Train a generative ODE. ``python train.py [group=option ...] [key=value ...]``; see README.

The command line is checked (and the run directory claimed) before Hydra starts: a bad key or
value exits with status 2 and one message, having written nothing."""

import sys

import hydra
from omegaconf import DictConfig

from unified_ode.app.resolvers import register_resolvers
from unified_ode.errors import friendly_errors

register_resolvers()  # cheap (OmegaConf only): --help and --cfg job need no torch


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Returns the primary sample metric (lower is better) for sweepers."""
    # torch and Lightning are imported here, so that --help and --cfg job answer at once
    from unified_ode.app.train import run_training

    with friendly_errors("train.py"):
        summary = run_training(cfg)
    return summary["objective"]


if __name__ == "__main__":
    from unified_ode.app.preflight import run_preflight
    from unified_ode.app.schema import validate_train

    sys.argv = run_preflight("train.py", "train", sys.argv, validate_train)
    main()
