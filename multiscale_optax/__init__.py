"""multiscale_optax: learning at multiple timescales as optax optimizers.

Jones, `Learning at Multiple Timescales <https://arxiv.org/abs/2211.10311>`_,
NeurIPS 2022.
"""

from multiscale_optax._src.multiscale import MultiscaleState
from multiscale_optax._src.multiscale import MultiscaleSubweights
from multiscale_optax._src.multiscale import SubweightLayout
from multiscale_optax._src.multiscale import fast_weights
from multiscale_optax._src.multiscale import get_subweights
from multiscale_optax._src.multiscale import multiscale
from multiscale_optax._src.timescales import decays_from_timescales
from multiscale_optax._src.timescales import log_spaced_timescales
from multiscale_optax._src.timescales import timescales_from_decays

__version__ = "0.1.0"

__all__ = (
    "MultiscaleState",
    "MultiscaleSubweights",
    "SubweightLayout",
    "decays_from_timescales",
    "fast_weights",
    "get_subweights",
    "log_spaced_timescales",
    "multiscale",
    "timescales_from_decays",
)
