"""Training objectives, one per ``objective=`` option (conf/objective/): each trains one
:class:`~unified_ode.parametrisation.Parametrisation` of a field.

* ``denoiser`` (:class:`DenoiserObjective`): EDM's weighted denoising loss; fields with a
  denoiser form.
* ``velocity`` (:class:`VelocityObjective`): conditional flow matching; any field.
* ``pfgm_normalised`` (:class:`PFGMNormalisedObjective`): PFGM's normalised empirical field;
  the Poisson field.

Couplings (``coupling=independent|ot|sinkhorn``, :mod:`.couplings`) pair the data with the
kernel's noise draws in the denoiser and velocity objectives.
"""

from unified_ode.objectives.base import Objective, per_sample_mse
from unified_ode.objectives.couplings import Coupling, ExactOT, Independent, SinkhornOT
from unified_ode.objectives.pfgm import PFGMNormalisedObjective, empirical_poisson_field
from unified_ode.objectives.regression import DenoiserObjective, VelocityObjective

__all__ = ["Coupling", "DenoiserObjective", "ExactOT", "Independent", "Objective",
           "PFGMNormalisedObjective", "SinkhornOT", "VelocityObjective",
           "empirical_poisson_field", "per_sample_mse"]
