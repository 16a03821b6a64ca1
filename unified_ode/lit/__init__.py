"""The Lightning layer: the module and its callbacks (EMA, metrics, figures, checkpoints)."""

from unified_ode.lit.callbacks import PeriodicSampling, SampleMetrics
from unified_ode.lit.checkpoint import AtomicCheckpointIO, RNGState, RunCheckpoint
from unified_ode.lit.ema import EMA
from unified_ode.lit.guards import NanGuard
from unified_ode.lit.module import GenerativeODE
from unified_ode.lit.progress import StepProgressBar, quiet_lightning_logs

quiet_lightning_logs()

__all__ = ["EMA", "AtomicCheckpointIO", "GenerativeODE", "NanGuard", "PeriodicSampling",
           "RNGState", "RunCheckpoint", "SampleMetrics", "StepProgressBar"]
