"""Networks (torch only): raw function approximators and the preconditioning wrapper."""

from unified_ode.networks.mlp import MLP
from unified_ode.networks.precond import Preconditioned
from unified_ode.networks.unet import UNet, count_parameters

__all__ = ["MLP", "Preconditioned", "UNet", "count_parameters"]
