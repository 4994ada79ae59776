"""multiscale_optax: learning at multiple timescales as optax optimizers.

Jones, `Learning at Multiple Timescales <https://arxiv.org/abs/2211.10311>`_,
NeurIPS 2022.
"""

from multiscale_optax._src.ar1_prior import AR1Prior
from multiscale_optax._src.bayesian import BayesianMultiscaleState
from multiscale_optax._src.bayesian import BayesianSubweights
from multiscale_optax._src.bayesian import bayesian_multiscale
from multiscale_optax._src.bayesian import get_bayesian_subweights
from multiscale_optax._src.bayesian_observations import ObservationInfo
from multiscale_optax._src.bayesian_observations import categorical_observation
from multiscale_optax._src.bayesian_observations import gaussian_observation
from multiscale_optax._src.benna_fusi import BennaFusiModes
from multiscale_optax._src.benna_fusi import BennaFusiState
from multiscale_optax._src.benna_fusi import benna_fusi
from multiscale_optax._src.benna_fusi import benna_fusi_defaults
from multiscale_optax._src.benna_fusi import benna_fusi_modes
from multiscale_optax._src.converters import MultiscaleSpec
from multiscale_optax._src.converters import from_aggmo
from multiscale_optax._src.converters import from_l2_init
from multiscale_optax._src.converters import from_linear_dynamics
from multiscale_optax._src.converters import from_momentum
from multiscale_optax._src.converters import from_qhm
from multiscale_optax._src.converters import state_to_subweights
from multiscale_optax._src.converters import subweights_to_state
from multiscale_optax._src.environments import EnvironmentSample
from multiscale_optax._src.environments import KalmanFilterPredictions
from multiscale_optax._src.environments import OneOverFEnvironment
from multiscale_optax._src.environments import kalman_filter_predictions
from multiscale_optax._src.environments import sample_environment
from multiscale_optax._src.fit_prior import PriorFit
from multiscale_optax._src.fit_prior import fit_prior
from multiscale_optax._src.input_norm import ScaleByInputNormState
from multiscale_optax._src.input_norm import scale_by_input_norm
from multiscale_optax._src.kalman import SteadyStateKalman
from multiscale_optax._src.kalman import kalman_learning_rates
from multiscale_optax._src.kalman import steady_state_kalman
from multiscale_optax._src.memory_kernel import fit_learning_rates
from multiscale_optax._src.memory_kernel import memory_kernel
from multiscale_optax._src.memory_kernel import power_law_kernel
from multiscale_optax._src.multiscale import MultiscaleState
from multiscale_optax._src.multiscale import MultiscaleSubweights
from multiscale_optax._src.multiscale import SubweightLayout
from multiscale_optax._src.multiscale import fast_weights
from multiscale_optax._src.multiscale import get_subweights
from multiscale_optax._src.multiscale import multiscale
from multiscale_optax._src.prior_learning import PriorLearningState
from multiscale_optax._src.timescales import decays_from_timescales
from multiscale_optax._src.timescales import log_spaced_timescales
from multiscale_optax._src.timescales import timescales_from_decays

__version__ = "0.1.0"

__all__ = (
    "AR1Prior",
    "BayesianMultiscaleState",
    "BayesianSubweights",
    "BennaFusiModes",
    "BennaFusiState",
    "EnvironmentSample",
    "KalmanFilterPredictions",
    "MultiscaleSpec",
    "MultiscaleState",
    "MultiscaleSubweights",
    "ObservationInfo",
    "OneOverFEnvironment",
    "PriorFit",
    "PriorLearningState",
    "ScaleByInputNormState",
    "SteadyStateKalman",
    "SubweightLayout",
    "bayesian_multiscale",
    "benna_fusi",
    "benna_fusi_defaults",
    "benna_fusi_modes",
    "categorical_observation",
    "decays_from_timescales",
    "fast_weights",
    "fit_learning_rates",
    "fit_prior",
    "from_aggmo",
    "from_l2_init",
    "from_linear_dynamics",
    "from_momentum",
    "from_qhm",
    "gaussian_observation",
    "get_bayesian_subweights",
    "get_subweights",
    "kalman_filter_predictions",
    "kalman_learning_rates",
    "log_spaced_timescales",
    "memory_kernel",
    "multiscale",
    "power_law_kernel",
    "sample_environment",
    "scale_by_input_norm",
    "state_to_subweights",
    "steady_state_kalman",
    "subweights_to_state",
    "timescales_from_decays",
)
