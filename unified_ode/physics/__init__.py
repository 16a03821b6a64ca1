"""Force fields (torch only): the physics of every generative ODE in unified_ode."""

from unified_ode.physics.base import AffineField, Field
from unified_ode.physics.exact import ExactPosterior
from unified_ode.physics.exppower import ExpPowerField, ExpPowerNoise
from unified_ode.physics.gaussian import VEField
from unified_ode.physics.linear import LinearField
from unified_ode.physics.noise import GaussianNoise, NoiseLaw, StudentTNoise, UniformCubeNoise
from unified_ode.physics.pfgmpp import PFGMPPField
from unified_ode.physics.poisson import PoissonField
from unified_ode.physics.radial import RadialProfileField
from unified_ode.physics.radial_general import RadialGeneralField
from unified_ode.physics.radial_noise import RadialProfile, RadialProfileNoise
from unified_ode.physics.vp import VPField

__all__ = ["AffineField", "ExactPosterior", "ExpPowerField", "ExpPowerNoise", "Field",
           "GaussianNoise", "LinearField", "NoiseLaw",
           "PFGMPPField", "PoissonField", "RadialGeneralField", "RadialProfile",
           "RadialProfileField", "RadialProfileNoise", "StudentTNoise", "UniformCubeNoise",
           "VEField", "VPField"]
