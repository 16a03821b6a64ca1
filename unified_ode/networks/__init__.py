"""Networks (torch only): raw function approximators and the preconditioning wrapper."""

from unified_ode.networks.mlp import MLP
from unified_ode.networks.precond import Preconditioned

__all__ = ["MLP", "Preconditioned"]
