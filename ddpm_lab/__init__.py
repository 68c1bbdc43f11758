"""ddpm_lab: the package behind the DDPM Lab book (Ho, Jain & Abbeel 2020, derived and checked).

Modules: ``schedules`` (betas and every per-timestep coefficient), ``diffusion`` (forward process,
posterior, parameterization conversions), ``gaussians`` (log-density, KL), ``checks`` (numerical
checks with derived tolerances), ``plotting`` (figures and sliders), ``sde`` and ``flows``
(continuous time), and the rest listed in the README.
"""

from .schedules import NoiseSchedule, extract

__version__ = "0.1.0"
__all__ = ["NoiseSchedule", "extract", "__version__"]
