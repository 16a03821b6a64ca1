"""Sample a trained run or an exact field.

``python sample.py run=<run dir> [solver=...] [n=...]``; see README. The command line is
checked before Hydra starts (a bad key or value: exit status 2, nothing written); a run that
fails leaves no empty output directory behind (one with partial results is marked ``FAILED``).
"""

import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from unified_ode.app.resolvers import register_resolvers
from unified_ode.errors import friendly_errors

register_resolvers()  # cheap (OmegaConf only): --help and --cfg job need no torch


@hydra.main(version_base="1.3", config_path="conf", config_name="sample")
def main(cfg: DictConfig) -> None:
    # torch and Lightning are imported here, so that --help and --cfg job answer at once
    from unified_ode.app.claims import discard_unused_run_dir
    from unified_ode.app.sample import run_task

    hc = HydraConfig.get()
    out_dir, start = Path(hc.runtime.output_dir), time.time()
    with friendly_errors("sample.py"):
        try:
            run_task(cfg, list(hc.overrides.task), out_dir)
        except BaseException as exc:
            # the default out_dir is samples/<date>/<time> or <run>/samples/<time>
            parents = 0 if cfg.get("out_dir") else 2
            if not discard_unused_run_dir(out_dir, parents) and written_since(out_dir, start):
                (out_dir / "FAILED").write_text(f"sample.py did not finish: "
                                                f"{type(exc).__name__}: {exc}\n")
            raise


def written_since(folder: Path, start: float) -> bool:
    """Whether this job wrote results into ``folder`` (files other than Hydra's own)."""
    return any(p.is_file() and p.stat().st_mtime >= start - 1 and ".hydra" not in p.parts
               and p.suffix != ".log" for p in folder.rglob("*"))


if __name__ == "__main__":
    from unified_ode.app.preflight import run_preflight
    from unified_ode.app.schema import validate_sample

    sys.argv = run_preflight("sample.py", "sample", sys.argv, validate_sample)
    main()
