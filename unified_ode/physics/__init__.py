"""Force fields (torch only): the physics of every generative ODE in unified_ode."""

from unified_ode.physics.base import AffineField, Field
from unified_ode.physics.exact import ExactPosterior
from unified_ode.physics.gaussian import VEField
from unified_ode.physics.noise import GaussianNoise, NoiseLaw, StudentTNoise
from unified_ode.physics.poisson import PoissonField

__all__ = ["AffineField", "ExactPosterior", "Field", "GaussianNoise", "NoiseLaw",
           "PoissonField", "StudentTNoise", "VEField"]
