r"""A teacher network whose weights drift as a sum of AR(1) processes.

The nonlinear counterpart of :class:`multiscale_optax.OneOverFEnvironment`:
every weight of a small MLP is

.. math::

  w_t = w_0 + \sum_{j=1}^{k} \omega_{j,t}, \qquad
  \omega_{j,t+1} = \rho_j \omega_{j,t} + \epsilon_{j,t}, \quad
  \epsilon_{j,t} \sim \mathcal N(0, q_j), \quad
  \omega_{j,0} \sim \mathcal N(0, q_j / (1 - \rho_j^2)),

with log-spaced timescales :math:`\tau_j = -1/\log\rho_j` and equal
stationary variances :math:`v` per component (an approximately :math:`1/f`
spectrum between :math:`1/\tau_{max}` and :math:`1/\tau_{min}`, as
:meth:`multiscale_optax.OneOverFEnvironment.from_timescales`). The mean
weights :math:`w_0` are a draw from the usual :math:`\mathcal N(0,
1/\mathrm{fan\_in})` initialisation, known to every learner: all learners
start from :math:`w_0`, which is also the prior mean of the Bayesian ones.
Inputs are :math:`x_t \sim \mathcal N(0, I)` and targets :math:`y_t =
f(x_t; w_t) + \mathcal N(0, r)`.

Also here: :func:`joint_ekf_predictions`, the extended Kalman filter with the
full covariance of the joint subweight state :math:`(\omega_1, \dots,
\omega_k) \in \mathbb R^{kP}` (:math:`P` weights), the near-optimal
reference; and :func:`run_online`, the predict-then-learn loop shared by all
learners. Used by ``benchmarks/online_teacher.py``, the notebook
``notebooks/bayesian_multiscale.ipynb`` and ``tests/test_online_teacher.py``.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Callable
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

import multiscale_optax as mso


@dataclasses.dataclass(frozen=True)
class TeacherConfig:
  """The drifting teacher (hashable, static under jit).

  Attributes:
    layer_sizes: widths from input to output, e.g. ``(8, 16, 1)``: a tanh MLP
      with a scalar linear output. ``(d, 1)`` is a linear teacher.
    timescales: :math:`\\tau_j` of the drift components.
    component_variance: :math:`v`, the stationary variance of every
      component of every weight.
    noise_variance: :math:`r`, the target noise variance.
  """

  layer_sizes: tuple[int, ...] = (8, 16, 1)
  timescales: tuple[float, ...] = tuple(4.0 ** np.arange(6))
  component_variance: float = 0.02
  noise_variance: float = 0.1

  @property
  def prior(self) -> mso.AR1Prior:
    """The drift's AR(1) prior per weight: these timescales, each with
    stationary variance :math:`v`, started stationary."""
    return mso.AR1Prior.from_timescales(self.timescales,
                                        self.component_variance)

  @property
  def decays(self) -> np.ndarray:
    return np.asarray(self.prior.decays)

  @property
  def process_variances(self) -> np.ndarray:
    return np.asarray(self.prior.process_variances)

  @property
  def stationary_variances(self) -> np.ndarray:
    return np.full(len(self.timescales), self.component_variance)

  @property
  def num_params(self) -> int:
    sizes = self.layer_sizes
    return sum((a + 1) * b for a, b in itertools.pairwise(sizes))


def mlp_apply(params: list[dict[str, jax.Array]], x: jax.Array) -> jax.Array:
  """A tanh MLP with a linear scalar output; ``x`` has shape ``(d,)``."""
  hidden = x
  for layer in params[:-1]:
    hidden = jnp.tanh(hidden @ layer['w'] + layer['b'])
  return (hidden @ params[-1]['w'] + params[-1]['b'])[0]


def init_params(config: TeacherConfig, key: jax.Array,
                dtype: Any = jnp.float64) -> list[dict[str, jax.Array]]:
  """:math:`w_0`: weights and biases :math:`\\sim \\mathcal N(0, 1/\\mathrm{fan\\_in})`."""
  sizes = config.layer_sizes
  keys = jax.random.split(key, len(sizes) - 1)
  params = []
  for layer_key, fan_in, fan_out in zip(keys, sizes[:-1], sizes[1:]):
    w_key, b_key = jax.random.split(layer_key)
    scale = 1.0 / np.sqrt(fan_in)
    params.append({
        'w': scale * jax.random.normal(w_key, (fan_in, fan_out), dtype),
        'b': scale * jax.random.normal(b_key, (fan_out,), dtype),
    })
  return params


class TeacherStream(NamedTuple):
  """One sampled run of the drifting teacher.

  Attributes:
    initial_params: :math:`w_0` (a pytree), the learners' starting point.
    inputs: :math:`x_t`, shape ``(T, d)``.
    targets: :math:`y_t`, shape ``(T,)``.
    outputs: the noiseless teacher output :math:`f(x_t; w_t)`, shape
      ``(T,)``.
    subweights: :math:`\\omega_{j,t}` flattened, shape ``(T, k, P)``, or
      ``None`` unless requested.
  """

  initial_params: Any
  inputs: jax.Array
  targets: jax.Array
  outputs: jax.Array
  subweights: jax.Array | None


@functools.partial(jax.jit, static_argnums=(0, 2, 3, 4))
def _sample(config, key, num_steps, dtype, keep_subweights):
  init_key, start_key, innovation_key, input_key, noise_key = (
      jax.random.split(key, 5))
  params = init_params(config, init_key, dtype)
  flat, unravel = ravel_pytree(params)
  num = len(config.timescales)
  decays = jnp.asarray(config.decays, dtype)[:, None]
  innovation_scale = jnp.sqrt(jnp.asarray(config.process_variances, dtype))
  start = jnp.sqrt(jnp.asarray(config.stationary_variances, dtype))[:, None]
  start = start * jax.random.normal(start_key, (num, flat.size), dtype)
  inputs = jax.random.normal(
      input_key, (num_steps, config.layer_sizes[0]), dtype)
  innovation_keys = jax.random.split(innovation_key, num_steps)

  def step(components, observation):
    x, step_key = observation
    output = mlp_apply(unravel(flat + components.sum(axis=0)), x)
    innovation = innovation_scale[:, None] * jax.random.normal(
        step_key, components.shape, dtype)
    saved = components if keep_subweights else None
    return decays * components + innovation, (output, saved)

  _, (outputs, subweights) = jax.lax.scan(
      step, start, (inputs, innovation_keys))
  noise = jnp.sqrt(jnp.asarray(config.noise_variance, dtype)) * (
      jax.random.normal(noise_key, (num_steps,), dtype))
  return TeacherStream(params, inputs, outputs + noise, outputs, subweights)


def sample_stream(config: TeacherConfig, key: jax.Array, num_steps: int, *,
                  dtype: Any = jnp.float64,
                  keep_subweights: bool = False) -> TeacherStream:
  """Samples one run (jit-compiled; vmap over keys for many seeds)."""
  return _sample(config, key, int(num_steps), np.dtype(dtype).name,
                 bool(keep_subweights))


# --------------------------------------------------------------------------
# The reference: an extended Kalman filter on the joint subweight state.


class EKFPredictions(NamedTuple):
  """Output of :func:`joint_ekf_predictions`.

  Attributes:
    predictions: :math:`\\hat y_t = f(x_t; w_0 + \\sum_j \\mu_{j,t})`.
    prediction_variances: :math:`h_t^\\top \\Sigma_t h_t`, the linearised
      predictive variance of the noiseless output.
    means: :math:`\\mu_{j,t}` if requested, shape ``(T, k, P)``.
  """

  predictions: jax.Array
  prediction_variances: jax.Array
  means: jax.Array | None


def joint_ekf_predictions(
    apply_fn: Callable[[Any, jax.Array], jax.Array],
    initial_params: Any,
    decays: Any,
    process_variances: Any,
    initial_variances: Any,
    noise_variance: float,
    inputs: jax.Array,
    targets: jax.Array,
    *,
    keep_means: bool = False,
) -> EKFPredictions:
  r"""Extended Kalman filter with full covariance over all subweights.

  The state is :math:`z = (\omega_1, \dots, \omega_k) \in \mathbb R^{n}`,
  :math:`n = kP`, with prior mean 0 and covariance
  :math:`\mathrm{diag}(s_j) \otimes I_P`; the weights are :math:`w = w_0 +
  \sum_j \omega_j`. Each step linearises the output around the predicted
  weights, :math:`h_t = \mathbf 1_k \otimes \partial f/\partial w`, and
  applies

  .. math::

    \hat y_t = f(x_t; w_0 + \textstyle\sum_j \mu_j), \quad
    S_t = h_t^\top \Sigma_t h_t + r, \quad
    \mu \leftarrow A\big(\mu + \Sigma_t h_t (y_t - \hat y_t)/S_t\big),
    \quad
    \Sigma_{t+1} = A\big(\Sigma_t - \Sigma_t h_t h_t^\top \Sigma_t /
      S_t\big)A + Q,

  :math:`A = \mathrm{diag}(\rho) \otimes I_P`, :math:`Q =
  \mathrm{diag}(q) \otimes I_P`. Cost :math:`O(n^2)` per step (no
  :math:`n^3`: the transition is diagonal), memory :math:`n^2`. For a linear
  model :math:`f(x; w) = x\cdot w` this is the exact Kalman filter.
  The update keeps :math:`\Sigma` exactly symmetric: the rank-one term is
  formed as :math:`(a_i a_j)/S` and the transition as :math:`(\rho_i
  \rho_j)\Sigma_{ij}`, both symmetric in floating point.
  """
  flat0, unravel = ravel_pytree(initial_params)
  dtype = flat0.dtype
  size = flat0.size
  decays = jnp.asarray(decays, dtype)
  num = decays.shape[0]
  state_decays = jnp.repeat(decays, size)
  transition = jnp.outer(state_decays, state_decays)
  process = jnp.repeat(jnp.asarray(process_variances, dtype), size)
  covariance = jnp.diag(jnp.repeat(jnp.asarray(initial_variances, dtype),
                                   size))
  noise = jnp.asarray(noise_variance, dtype)

  def output(flat, x):
    return apply_fn(unravel(flat), x)

  def step(carry, observation):
    mean, covariance = carry
    x, y = observation
    weights = flat0 + mean.reshape(num, size).sum(axis=0)
    prediction, jacobian = jax.value_and_grad(output)(weights, x)
    row = jnp.tile(jacobian, num)
    cross = covariance @ row
    variance = row @ cross
    innovation_variance = variance + noise
    mean = state_decays * (mean + cross * ((y - prediction)
                                           / innovation_variance))
    covariance = transition * (
        covariance - jnp.outer(cross, cross) / innovation_variance)
    covariance = covariance + jnp.diag(process)
    saved = mean.reshape(num, size) if keep_means else None
    return (mean, covariance), (prediction, variance, saved)

  mean = jnp.zeros((num * size,), dtype)
  _, (predictions, variances, means) = jax.lax.scan(
      step, (mean, covariance), (inputs.astype(dtype), targets.astype(dtype)))
  return EKFPredictions(predictions, variances, means)


def blockwise_ekf_predictions(
    apply_fn: Callable[[Any, jax.Array], jax.Array],
    initial_params: Any,
    decays: Any,
    process_variances: Any,
    initial_variances: Any,
    noise_variance: float,
    inputs: jax.Array,
    targets: jax.Array,
) -> EKFPredictions:
  r"""EKF whose covariance is block-diagonal: one :math:`k \times k` block per weight.

  Between the full EKF and the diagonal Bayesian multiscale learner: the
  belief keeps the correlations between the :math:`k` subweights of each
  weight and drops those between weights. The exact Gaussian update under
  this belief, projected back onto the blocks, is, with :math:`J_p` the
  Jacobian entry of weight :math:`p` and :math:`C_p` its block,

  .. math::

    S = r + \sum_p J_p^2\, \mathbf 1^\top C_p \mathbf 1, \quad
    \mu_p \leftarrow A\big(\mu_p + C_p \mathbf 1\, J_p e / S\big), \quad
    C_p \leftarrow A\big(C_p - J_p^2\, C_p \mathbf 1 \mathbf 1^\top C_p
      / S\big) A + Q,

  :math:`A = \mathrm{diag}(\rho)`, :math:`Q = \mathrm{diag}(q)`. Memory
  :math:`k^2` per weight, cost :math:`O(k^2 P)` per step. With one weight it
  is the joint EKF.
  """
  flat0, unravel = ravel_pytree(initial_params)
  dtype = flat0.dtype
  size = flat0.size
  decays = jnp.asarray(decays, dtype)
  num = decays.shape[0]
  transition = jnp.outer(decays, decays)
  process = jnp.diag(jnp.asarray(process_variances, dtype))
  blocks = jnp.broadcast_to(
      jnp.diag(jnp.asarray(initial_variances, dtype)), (size, num, num))
  noise = jnp.asarray(noise_variance, dtype)

  def output(flat, x):
    return apply_fn(unravel(flat), x)

  def step(carry, observation):
    mean, blocks = carry  # (size, num), (size, num, num)
    x, y = observation
    prediction, jacobian = jax.value_and_grad(output)(
        flat0 + mean.sum(axis=1), x)
    row_sums = blocks.sum(axis=2)  # C_p 1
    variance = jnp.sum(jnp.square(jacobian) * row_sums.sum(axis=1))
    innovation_variance = variance + noise
    mean = decays * (mean + row_sums * (
        jacobian * (y - prediction) / innovation_variance)[:, None])
    blocks = transition * (blocks - (
        jnp.square(jacobian) / innovation_variance)[:, None, None]
        * row_sums[:, :, None] * row_sums[:, None, :]) + process
    return (mean, blocks), (prediction, variance)

  mean = jnp.zeros((size, num), dtype)
  _, (predictions, variances) = jax.lax.scan(
      step, (mean, blocks), (inputs.astype(dtype), targets.astype(dtype)))
  return EKFPredictions(predictions, variances, None)


# --------------------------------------------------------------------------
# The predict-then-learn loop of every other learner.


def run_online(
    apply_fn: Callable[[Any, jax.Array], jax.Array],
    initial_params: Any,
    optimizer: optax.GradientTransformationExtraArgs,
    inputs: jax.Array,
    targets: jax.Array,
    *,
    noise_variance: float | jax.Array = 1.0,
    pass_jacobian: bool = False,
    keep_state: Callable[[Any, Any], Any] | None = None,
) -> tuple[jax.Array, Any]:
  r"""Online learning: predict :math:`\hat y_t`, then take one step on it.

  The gradient passed to ``optimizer`` is that of the negative
  log-likelihood :math:`(y_t - \hat y_t)^2 / (2r)` (``noise_variance`` =
  :math:`r`; :math:`r = 1` gives the plain squared loss over 2). With
  ``pass_jacobian`` the optimizer also gets ``jacobian`` =
  :math:`\partial\hat y/\partial w` (the Bayesian multiscale contract).
  With ``pass_jacobian`` the residual :math:`y_t - \hat y_t` is passed too
  (``residual``; :func:`multiscale_optax.bayesian_multiscale` needs it to
  learn its prior). ``keep_state(params, opt_state)`` selects what to record
  every step.

  Returns:
    The predictions, shape ``(T,)``, and the stacked records (or ``None``).
  """
  noise_variance = jnp.asarray(noise_variance, targets.dtype)

  def step(carry, observation):
    params, state = carry
    x, y = observation
    prediction, jacobian = jax.value_and_grad(apply_fn)(params, x)
    grads = jax.tree.map(
        lambda leaf: leaf * ((prediction - y) / noise_variance), jacobian)
    extra = ({'jacobian': jacobian, 'residual': y - prediction}
             if pass_jacobian else {})
    updates, state = optimizer.update(grads, state, params, **extra)
    params = optax.apply_updates(params, updates)
    record = None if keep_state is None else keep_state(params, state)
    return (params, state), (prediction, record)

  carry = (initial_params, optimizer.init(initial_params))
  _, (predictions, records) = jax.lax.scan(step, carry, (inputs, targets))
  return predictions, records


def add_run_arguments(parser: Any) -> None:
  """``--steps``, ``--tuning-seeds`` and ``--test-seeds`` (``--full`` comes
  from ``harness.parser``), ``None`` until :func:`fill_run_defaults`."""
  parser.add_argument('--steps', type=int, default=None)
  parser.add_argument('--tuning-seeds', type=int, default=None)
  parser.add_argument('--test-seeds', type=int, default=None)


def fill_run_defaults(args: Any, *, default: tuple[int, int, int],
                      full: tuple[int, int, int]) -> None:
  """Fills the steps and seed counts not given: ``(steps, tuning seeds,
  test seeds)`` of the default run, or of ``--full``."""
  steps, tuning_seeds, test_seeds = full if args.full else default
  if args.steps is None:
    args.steps = steps
  if args.tuning_seeds is None:
    args.tuning_seeds = tuning_seeds
  if args.test_seeds is None:
    args.test_seeds = test_seeds


def fit_and_run(prior: mso.AR1Prior, noise_variance: float, rank: int,
                streams: Any, warmup: int, scales: Any,
                ) -> tuple[np.ndarray, list[mso.PriorFit]]:
  """Per stream, ``mso.fit_prior`` on its first ``warmup`` steps, then the
  fitted prior run from the start (the MLP of :func:`mlp_apply`).

  ``streams`` is stacked on a leading axis (fields ``initial_params``,
  ``inputs``, ``targets``). Returns the predictions, shape ``(seeds, T)``,
  and the fits.
  """

  def observe(params, batch):
    _, grads, extra = mso.gaussian_observation(
        mlp_apply, params, batch[0], batch[1], noise_variance)
    return grads, extra

  fits = []
  for index in range(streams.inputs.shape[0]):
    stream = jax.tree.map(lambda leaf, index=index: leaf[index], streams)
    fits.append(mso.fit_prior(
        observe, stream.initial_params,
        (stream.inputs[:warmup], stream.targets[:warmup]), prior,
        noise_variance, rank=rank, scales=scales))

  def run(stream, process, initial, noise):
    # Each stream's fitted prior, traced: one compilation for all.
    optimizer = mso.bayesian_multiscale(
        prior=mso.AR1Prior(prior.decays, tuple(process), tuple(initial)),
        noise_variance=noise, rank=rank)
    return run_online(mlp_apply, stream.initial_params, optimizer,
                      stream.inputs, stream.targets, noise_variance=noise,
                      pass_jacobian=True)[0]

  predictions = jax.jit(jax.vmap(run))(
      streams,
      jnp.asarray([fit.prior.process_variances for fit in fits]),
      jnp.asarray([fit.prior.initial_variances for fit in fits]),
      jnp.asarray([fit.noise_variance for fit in fits]))
  return np.asarray(predictions), fits
