r"""Drifting :math:`1/f` environments and their Bayes-optimal predictor.

The motivating task of Jones, `Learning at Multiple Timescales
<https://arxiv.org/abs/2211.10311>`_, NeurIPS 2022 (§1 and §6, after Jones et
al. 2022): online prediction where the environment's latent parameters drift
as a sum of independent processes at many timescales. Every coordinate of
:math:`\theta_t \in \mathbb R^d` is a sum of :math:`m` AR(1) processes with
log-spaced timescales and equal stationary variances, whose spectrum
:math:`\sum_j v\,(1-\rho_j^2)/|1 - \rho_j e^{-i\omega}|^2` is
:math:`\approx 1/f` between :math:`1/\tau_{max}` and :math:`1/\tau_{min}`.
The learner sees :math:`x_t` and must predict :math:`y_t = x_t\cdot\theta_t +
v_t` before seeing it. The exact Kalman filter on the joint latent state is
the physical limit of this task.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt
from jax.typing import DTypeLike

from multiscale_optax._src import ar1_prior
from multiscale_optax._src import checks


@dataclasses.dataclass(frozen=True)
class OneOverFEnvironment:
  r"""A drifting linear-regression environment (hashable, static under jit).

  Each of the :math:`d` coordinates of :math:`\theta_t` is
  :math:`\theta_{i,t} = \sum_j z_{ij,t}` with independent components

  .. math::

    z_{ij,t+1} = \rho_j z_{ij,t} + \epsilon_{ij,t}, \quad
    \epsilon_{ij,t} \sim \mathcal N(0, q_j), \quad
    z_{ij,0} \sim \mathcal N(0, s_j),

  and the observations are :math:`y_t = x_t\cdot\theta_t + v_t`,
  :math:`v_t \sim \mathcal N(0, r)`, with :math:`x_t = 1` for :math:`d = 1`
  and :math:`x_t \sim \mathcal N(0, I_d)` for :math:`d \ge 2`.

  Attributes:
    decays: :math:`\rho_j \in (0, 1]`, distinct (1 is a random walk).
    process_variances: :math:`q_j \ge 0`, innovation variances.
    noise_variance: :math:`r > 0`.
    input_dim: :math:`d \ge 1`.
    initial_variances: :math:`s_j \ge 0`, the prior variance of each
      component at :math:`t = 0`; ``None`` means stationary,
      :math:`q_j/(1-\rho_j^2)`, and 0 for a random walk, which starts at
      its mean: the one rule of :class:`multiscale_optax.AR1Prior` (build an
      environment from one with :meth:`from_prior`).

  Raises:
    TypeError, ValueError: on construction, for malformed values (as
      :func:`multiscale_optax.kalman_learning_rates`, plus negative
      ``initial_variances``).

  Examples:
    >>> import multiscale_optax as mso
    >>> env = mso.OneOverFEnvironment.from_timescales([1.0, 10.0])
    >>> print(round(env.decays[1], 4), round(env.process_variances[1], 4))
    0.9048 0.1813

  References:
    Jones, `Learning at Multiple Timescales
    <https://arxiv.org/abs/2211.10311>`_, NeurIPS 2022, §1 and §6.
  """

  decays: tuple[float, ...]
  process_variances: tuple[float, ...]
  noise_variance: float = 1.0
  input_dim: int = 1
  initial_variances: tuple[float, ...] | None = None

  def __post_init__(self) -> None:
    # The same rules as for the learner's rates, so that every environment
    # has a steady-state filter; initial variances by the one AR(1) rule
    # (AR1Prior: stationary, and 0 for a random walk).
    prior = ar1_prior.AR1Prior(
        self.decays, self.process_variances, self.initial_variances)
    ar1_prior.check_filterable(prior, self.noise_variance)
    checks.check_integer(self.input_dim, 'input_dim', low=1)
    if any(checks.is_traced(value) for value in (
        *prior.decays, *prior.process_variances)) or (
            checks.is_traced(self.noise_variance)):
      raise TypeError('An environment must be built from concrete values.')
    object.__setattr__(self, 'decays', prior.decays)
    object.__setattr__(self, 'process_variances', prior.process_variances)
    object.__setattr__(self, 'noise_variance', float(self.noise_variance))
    object.__setattr__(self, 'input_dim', int(self.input_dim))
    object.__setattr__(self, 'initial_variances', prior.initial_variances)

  @classmethod
  def from_prior(
      cls,
      prior: ar1_prior.AR1Prior,
      *,
      noise_variance: float = 1.0,
      input_dim: int = 1,
  ) -> OneOverFEnvironment:
    r"""The environment whose components follow ``prior``.

    Args:
      prior: an :class:`multiscale_optax.AR1Prior` with decays in
        :math:`(0, 1]`, distinct, and concrete values.
      noise_variance: :math:`r > 0`.
      input_dim: :math:`d \ge 1`.

    Returns:
      The environment with the prior's decays, process and initial
      variances.

    Raises:
      TypeError: ``prior`` is not an :class:`multiscale_optax.AR1Prior`.
      ValueError: as the constructor.

    Examples:
      >>> import multiscale_optax as mso
      >>> prior = mso.AR1Prior([0.5, 1.0], [0.75, 0.01], [1.0, 0.0])
      >>> env = mso.OneOverFEnvironment.from_prior(prior, noise_variance=0.5)
      >>> print(env.initial_variances, env.prior == prior)
      (1.0, 0.0) True

    References:
      Jones, `Learning at Multiple Timescales
      <https://arxiv.org/abs/2211.10311>`_, NeurIPS 2022, §1 and §6.
    """
    if not isinstance(prior, ar1_prior.AR1Prior):
      raise TypeError(
          f'`prior` must be an AR1Prior, got {type(prior).__name__}.')
    return cls(
        decays=prior.decays, process_variances=prior.process_variances,
        noise_variance=noise_variance, input_dim=input_dim,
        initial_variances=prior.initial_variances)

  @classmethod
  def from_timescales(
      cls,
      timescales: npt.ArrayLike,
      *,
      component_variance: float = 1.0,
      noise_variance: float = 1.0,
      input_dim: int = 1,
  ) -> OneOverFEnvironment:
    r"""Components with timescales :math:`\tau_j` and equal variances.

    .. math::

      \rho_j = e^{-1/\tau_j}, \qquad q_j = v\,(1 - \rho_j^2),

    so that every component has stationary variance :math:`v`
    (``component_variance``) and starts from it.

    Args:
      timescales: :math:`\tau_j > 0`, finite and distinct.
      component_variance: :math:`v > 0`.
      noise_variance: :math:`r > 0`.
      input_dim: :math:`d \ge 1`.

    Returns:
      The environment.

    Raises:
      TypeError, ValueError: for malformed values.

    Examples:
      >>> import multiscale_optax as mso
      >>> env = mso.OneOverFEnvironment.from_timescales(
      ...     mso.log_spaced_timescales(1.0, 256.0, 5), input_dim=10)
      >>> print(env.input_dim, [round(tau) for tau in env.timescales])
      10 [1, 4, 16, 64, 256]

    References:
      Jones, `Learning at Multiple Timescales
      <https://arxiv.org/abs/2211.10311>`_, NeurIPS 2022, §2.
    """
    checks.check_scalar(
        component_variance, 'component_variance', low=0.0, high=np.inf,
        low_inclusive=False, high_inclusive=False)
    return cls.from_prior(
        ar1_prior.AR1Prior.from_timescales(timescales, component_variance),
        noise_variance=noise_variance, input_dim=input_dim)

  @property
  def prior(self) -> ar1_prior.AR1Prior:
    """The components' :class:`multiscale_optax.AR1Prior`."""
    return ar1_prior.AR1Prior(
        self.decays, self.process_variances, self.initial_variances)

  @property
  def num_components(self) -> int:
    """:math:`m`, the number of AR(1) components per coordinate."""
    return len(self.decays)

  @property
  def timescales(self) -> tuple[float, ...]:
    r""":math:`\tau_j = -1/\log\rho_j` (``inf`` for a random walk)."""
    return tuple(
        float('inf') if decay == 1.0 else -1.0 / float(np.log(decay))
        for decay in self.decays)


class EnvironmentSample(NamedTuple):
  """One sampled run of an :class:`OneOverFEnvironment`.

  Attributes:
    inputs: :math:`x_t`, shape ``(num_steps, input_dim)``.
    targets: :math:`y_t`, shape ``(num_steps,)``.
    parameters: :math:`\\theta_t`, shape ``(num_steps, input_dim)``.
  """

  inputs: jax.Array
  targets: jax.Array
  parameters: jax.Array


class KalmanFilterPredictions(NamedTuple):
  """Output of :func:`kalman_filter_predictions`.

  Attributes:
    predictions: :math:`\\hat y_t = x_t\\cdot E[\\theta_t \\mid y_{<t}]`,
      shape ``(num_steps,)``.
    prediction_variances: :math:`x_t^\\top \\mathrm{Cov}[\\theta_t \\mid
      y_{<t}]\\, x_t`, the expected excess loss
      :math:`E[(x_t\\cdot\\theta_t - \\hat y_t)^2]` at each step.
  """

  predictions: jax.Array
  prediction_variances: jax.Array


def _canonical_dtype(dtype: DTypeLike) -> str:
  checks.check_float_dtype(dtype, 'dtype')
  return np.dtype(dtype).name


@functools.partial(jax.jit, static_argnums=(0, 2, 3))
def _sample(
    environment: OneOverFEnvironment, key: jax.Array, num_steps: int,
    dtype: str,
) -> EnvironmentSample:
  dim, num = environment.input_dim, environment.num_components
  decays = jnp.asarray(environment.decays, dtype)
  innovation_scales = jnp.sqrt(jnp.asarray(environment.process_variances,
                                           dtype))
  initial_scales = jnp.sqrt(jnp.asarray(environment.initial_variances, dtype))
  init_key, innovation_key, input_key, noise_key = jax.random.split(key, 4)
  initial = initial_scales * jax.random.normal(init_key, (dim, num), dtype)
  innovations = innovation_scales * jax.random.normal(
      innovation_key, (num_steps, dim, num), dtype)

  def step(
      components: jax.Array, innovation: jax.Array
  ) -> tuple[jax.Array, jax.Array]:
    return decays * components + innovation, jnp.sum(components, axis=-1)

  _, parameters = jax.lax.scan(step, initial, innovations)
  if dim == 1:
    inputs = jnp.ones((num_steps, 1), dtype)
  else:
    inputs = jax.random.normal(input_key, (num_steps, dim), dtype)
  noise = jnp.sqrt(jnp.asarray(environment.noise_variance, dtype)) * (
      jax.random.normal(noise_key, (num_steps,), dtype))
  targets = jnp.sum(inputs * parameters, axis=-1) + noise
  return EnvironmentSample(
      inputs=inputs, targets=targets, parameters=parameters)


def sample_environment(
    environment: OneOverFEnvironment,
    key: jax.Array,
    num_steps: int,
    *,
    dtype: DTypeLike = jnp.float32,
) -> EnvironmentSample:
  r"""Samples inputs, targets and latent parameters of an environment.

  Runs the components' AR(1) recursion with ``jax.lax.scan`` (jit-compiled;
  the environment is a static argument). Deterministic given ``key``; wrap in
  ``jax.vmap`` over keys for many seeds.

  .. math::

    \theta_t = \sum_j z_{\cdot j,t}, \qquad
    y_t = x_t\cdot\theta_t + v_t, \qquad t = 0, \dots, T-1,

  where :math:`T` is ``num_steps``.

  Args:
    environment: the :class:`OneOverFEnvironment`.
    key: a JAX PRNG key.
    num_steps: :math:`T \ge 1`.
    dtype: float dtype of the outputs (float64 needs ``jax.enable_x64``).

  Returns:
    An :class:`EnvironmentSample`.

  Raises:
    TypeError: ``environment`` is not an :class:`OneOverFEnvironment`,
      ``num_steps`` is not an int or ``dtype`` is not a float dtype.
    ValueError: ``num_steps < 1``.

  Examples:
    >>> import jax
    >>> import multiscale_optax as mso
    >>> env = mso.OneOverFEnvironment.from_timescales([1.0, 16.0],
    ...                                               input_dim=3)
    >>> sample = mso.sample_environment(env, jax.random.key(0), 100)
    >>> print(sample.inputs.shape, sample.targets.shape,
    ...       sample.parameters.shape)
    (100, 3) (100,) (100, 3)

  References:
    Jones, `Learning at Multiple Timescales
    <https://arxiv.org/abs/2211.10311>`_, NeurIPS 2022, §1 and §6.
  """
  if not isinstance(environment, OneOverFEnvironment):
    raise TypeError(
        '`environment` must be a OneOverFEnvironment, got '
        f'{type(environment).__name__}.')
  num_steps = checks.check_integer(num_steps, 'num_steps', low=1)
  return _sample(environment, key, num_steps, _canonical_dtype(dtype))


@functools.partial(jax.jit, static_argnums=0)
def _filter(
    environment: OneOverFEnvironment,
    inputs: jax.Array,
    targets: jax.Array,
    initial_covariance: jax.Array,
) -> KalmanFilterPredictions:
  dtype = targets.dtype
  dim, num = environment.input_dim, environment.num_components
  # Joint state: coordinate-major, z[i * num + j] = z_ij.
  decays = jnp.tile(jnp.asarray(environment.decays, dtype), dim)
  process = jnp.tile(jnp.asarray(environment.process_variances, dtype), dim)
  transition = jnp.outer(decays, decays)
  noise = jnp.asarray(environment.noise_variance, dtype)
  covariance = jnp.kron(jnp.eye(dim, dtype=dtype), initial_covariance)
  mean = jnp.zeros((dim * num,), dtype)

  def step(
      carry: tuple[jax.Array, jax.Array],
      observation: tuple[jax.Array, jax.Array],
  ) -> tuple[tuple[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]:
    mean, covariance = carry
    inputs_t, target = observation
    # Observation row h_t = x_t (kron) 1_m: y_t = h_t . z_t + v_t.
    row = jnp.repeat(inputs_t, num)
    prediction = row @ mean
    cross = covariance @ row
    variance = row @ cross
    gain = cross / (variance + noise)
    mean = decays * (mean + gain * (target - prediction))
    covariance = covariance - jnp.outer(gain, cross)
    covariance = 0.5 * (covariance + covariance.T)
    covariance = transition * covariance + jnp.diag(process)
    return (mean, covariance), (prediction, variance)

  _, (predictions, variances) = jax.lax.scan(
      step, (mean, covariance), (inputs.astype(dtype), targets))
  return KalmanFilterPredictions(
      predictions=predictions, prediction_variances=variances)


def kalman_filter_predictions(
    environment: OneOverFEnvironment,
    inputs: jax.Array,
    targets: jax.Array,
    *,
    initial_covariance: jax.Array | None = None,
) -> KalmanFilterPredictions:
  r"""The exact (time-varying) Kalman filter's online predictions.

  The Bayes-optimal predictor of :math:`y_t` from :math:`x_{\le t}` and
  :math:`y_{<t}`. The filter tracks the joint latent state :math:`z_t \in
  \mathbb R^{d m}` (all components of all coordinates), observed through
  :math:`h_t = x_t \otimes \mathbf 1_m`:

  .. math::

    \hat y_t = h_t^\top \hat z_t, \quad
    K_t = \frac{P_t h_t}{h_t^\top P_t h_t + r}, \quad
    \hat z_{t+1} = A(\hat z_t + K_t (y_t - \hat y_t)), \quad
    P_{t+1} = A(P_t - K_t h_t^\top P_t)A + Q,

  with :math:`A = I_d \otimes \mathrm{diag}(\rho)` and :math:`Q = I_d
  \otimes \mathrm{diag}(q)`. It starts from the prior mean :math:`\hat z_0 =
  0` and covariance :math:`P_0 = I_d \otimes` ``initial_covariance``, by
  default the environment's ``diag(initial_variances)`` (the stationary
  covariance for :meth:`OneOverFEnvironment.from_timescales`), which makes it
  exactly Bayes-optimal. Passing the steady-state covariance
  (``steady_state_kalman(...).prior_covariance``) instead gives the
  steady-state filter for :math:`d = 1`. Jit-compiled (``jax.lax.scan``);
  cost :math:`O((dm)^2)` per step. Computes in the dtype of ``targets``.

  Args:
    environment: the :class:`OneOverFEnvironment` (its dynamics and noise).
    inputs: :math:`x_t`, shape ``(num_steps, input_dim)``.
    targets: :math:`y_t`, shape ``(num_steps,)``.
    initial_covariance: optional per-coordinate prior covariance of the
      components, shape ``(m, m)``.

  Returns:
    A :class:`KalmanFilterPredictions`.

  Raises:
    TypeError: ``environment`` is not an :class:`OneOverFEnvironment`.
    ValueError: the shapes do not match the environment.

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import multiscale_optax as mso
    >>> env = mso.OneOverFEnvironment.from_timescales([1.0, 16.0])
    >>> sample = mso.sample_environment(env, jax.random.key(0), 2000)
    >>> kalman = mso.kalman_filter_predictions(env, sample.inputs,
    ...                                        sample.targets)
    >>> excess = jnp.mean((sample.parameters[:, 0] - kalman.predictions)**2)
    >>> print(bool(abs(excess / kalman.prediction_variances.mean() - 1) < 0.2))
    True

  References:
    Jones, `Learning at Multiple Timescales
    <https://arxiv.org/abs/2211.10311>`_, NeurIPS 2022, §6.
  """
  if not isinstance(environment, OneOverFEnvironment):
    raise TypeError(
        '`environment` must be a OneOverFEnvironment, got '
        f'{type(environment).__name__}.')
  targets = jnp.asarray(targets)
  if not jnp.issubdtype(targets.dtype, jnp.floating):
    targets = targets.astype(jnp.result_type(float))
  inputs = jnp.asarray(inputs)
  if targets.ndim != 1 or inputs.shape != (
      targets.shape[0], environment.input_dim):
    raise ValueError(
        '`inputs` and `targets` must have shapes (num_steps, input_dim) and '
        f'(num_steps,) with input_dim={environment.input_dim}, got '
        f'{tuple(inputs.shape)} and {tuple(targets.shape)}.')
  num = environment.num_components
  if initial_covariance is None:
    initial_covariance = jnp.diag(
        jnp.asarray(environment.initial_variances, targets.dtype))
  initial_covariance = jnp.asarray(initial_covariance, targets.dtype)
  if initial_covariance.shape != (num, num):
    raise ValueError(
        f'`initial_covariance` must have shape ({num}, {num}), got '
        f'{tuple(initial_covariance.shape)}.')
  return _filter(environment, inputs, targets, initial_covariance)
