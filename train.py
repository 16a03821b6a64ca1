"""Train a generative ODE. ``python train.py [group=option ...] [key=value ...]``; see README."""

import hydra
from omegaconf import DictConfig

from unified_ode.app.resolvers import register_resolvers
from unified_ode.errors import friendly_errors

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Returns the primary sample metric (sw@<n> or fid@<n>; lower is better) for sweepers."""
    # torch and Lightning are imported here, so that --help and --cfg job answer at once
    from unified_ode.app.train import run_training

    with friendly_errors("train.py"):
        summary = run_training(cfg)
    return summary["objective"]


if __name__ == "__main__":
    main()
