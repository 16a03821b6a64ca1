"""Sample a trained run or an exact field.

``python sample.py run=<run dir> [solver=...] [n=...]``; see README.
"""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from unified_ode.app.resolvers import register_resolvers
from unified_ode.errors import friendly_errors

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="sample")
def main(cfg: DictConfig) -> None:
    # torch and Lightning are imported here, so that --help and --cfg job answer at once
    from unified_ode.app.sample import run_task

    hc = HydraConfig.get()
    with friendly_errors("sample.py"):
        run_task(cfg, list(hc.overrides.task), hc.runtime.output_dir)


if __name__ == "__main__":
    main()
