r"""Empirical Bayes online: the prior's scale follows the predictive likelihood.

:func:`multiscale_optax.bayesian_multiscale` with ``learn_prior`` scales the
process variances :math:`q_i` of its AR(1) prior by :math:`c` (one global
:math:`c`, or one per weight) and moves :math:`\log c` along the gradient of
the log predictive likelihood of the recent observations (Jones, Scott, Ren,
ElSayed, Hermann, Mayo & Mozer, "Learning in temporally structured
environments", ICLR 2023, learn the prior's hyperparameters the same way; the
sensitivity recursion is that of recursive-prediction-error methods, Ljung
& Söderström, *Theory and Practice of Recursive Identification*, 1983, and of
IDBD, Sutton, "Adapting bias by gradient descent", AAAI 1992).

The observation :math:`t` has residual :math:`e_t` (:math:`N_t` outputs)
and innovation covariance :math:`S_t = R_t + X_t`, :math:`X_t = H_t
\Sigma_t H_t^\top`. A wider prior (larger :math:`c`) widens :math:`S` *and*
makes the filter track faster, which makes :math:`e` smaller: both enter
the gradient. The means' sensitivity :math:`T_i = \partial\mu_i/\partial
\log c` (one params-shaped array per subweight) is carried forward with the
filter, with :math:`\partial\Sigma/\partial\log c \approx \Sigma` (exact at
the first observation; the covariance's own sensitivity is not carried):

.. math::

  T_i \leftarrow \gamma_i\big(T_i + (\Sigma H^\top S^{-1}(R a - H T))_i
  \big), \qquad a = S^{-1} e,

so :math:`\partial e/\partial \log c = -HT` and
:math:`\partial S/\partial\log c \approx X`. With
:math:`z = e^\top S^{-1} e`, the log-likelihood gradient of one
observation is

.. math::

  g = \tfrac12\big(a^\top X a - \mathrm{tr}(S^{-1}X)\big) + a^\top H T,
  \qquad \frac{\partial z}{\partial\log c} = -2 a^\top H T - a^\top X a.

**A profiled noise** (``learn_noise_variance=True``). Scaling the process,
initial and noise variances together by :math:`\rho` changes no mean, so
the noise scale is profiled out: over a window with forgetting
:math:`\lambda` (``prior_window`` :math:`= 1/(1 - \lambda)` observations),
:math:`\rho_t = \sum \lambda^{t-s} z_s / \sum \lambda^{t-s} N_s` maximises
the window's likelihood, and the profile log-likelihood is
:math:`-\tfrac12(\sum\lambda^{t-s}\log\det S_s + n_t \log \rho_t + n_t)`.
Its gradient :math:`G_t` changes at each observation by

.. math::

  G_t - \lambda G_{t-1} = \tfrac12\Big(\frac{a^\top X a}{\rho_t}
  - \mathrm{tr}(S^{-1}X)\Big) + \frac{a^\top H T}{\rho_t}
  - \tfrac{\lambda}{2} A_{t-1}\Big(\frac{1}{\rho_t}
  - \frac{1}{\rho_{t-1}}\Big),
  \qquad A_t = \lambda A_{t-1} + \frac{\partial z_t}{\partial\log c},

and that increment is the step's gradient (the per-observation gradient with
:math:`\rho_t` in place of the window's would follow a noise estimate that
lags the data by the window's length, and can point the wrong way for
hundreds of observations). Without a learned noise, :math:`\rho = 1` and the
increment is :math:`g` itself.

**Per weight** (``learn_prior='per_weight'``). Weight :math:`p` has its own
:math:`c_p`. Its own subweights' sensitivities (a diagonal approximation:
the effect of :math:`c_p` on the other weights' means is dropped) give, with
:math:`\beta_p = J_p^\top a` (the weight's share of the residual),
:math:`b_p = J_p^\top S^{-1} J_p`, :math:`m_p` the weight's own variance
(over its subweights) and :math:`\tau_p = \sum_i T_{i,p}`,

.. math::

  g_p = \tfrac12 m_p(\beta_p^2 - b_p) + \beta_p \tau_p, \qquad
  T_{i,p} \leftarrow \gamma_i\big(T_{i,p} + \Delta\mu_{i,p}(1 - m_p b_p)
  - D_{i,p}\, b_p\, \tau_p\big),

(with :math:`\rho` as above); summed over the weights of a diagonal belief,
:math:`\sum_p m_p b_p = \mathrm{tr}(S^{-1}X)`, the global step's trace.

**The step.** Each log scale takes a normalised step (Adam's moments of
its gradient, Kingma & Ba, ICLR 2015): :math:`\log c \leftarrow \log c +
\eta\,\mathrm{clip}(\hat m/\sqrt{\hat v}, -1, 1)`, so one step moves
:math:`\log c` by at most :math:`\eta` (``prior_learning_rate``) whatever
the scale of its gradient (the likelihood is nearly flat far above the
truth, where plain gradient steps stall), and stays within
:math:`e^{\pm 30}` (:math:`10^{\pm 13}`: on a noise-free stream the
likelihood rises without end as :math:`c` grows, and :math:`cq` must stay
finite in float32). An outlier's gradient enters the
moments once: with Adam's decays its share of :math:`\hat m/\sqrt{\hat v}`
at lag :math:`k` is at most :math:`\min(1, 0.1 \cdot 0.9^k/\sqrt{0.001
\cdot 0.999^k})`, so it moves :math:`\log c` by at most about
:math:`20\eta` in all, however large it is; it also inflates
:math:`\hat v`, which slows the learning that follows. With
``outlier_threshold`` the scale learns from the clipped residual, which
bounds both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp

# Adam's moment decays for the log scales' normalised steps.
FIRST_MOMENT_DECAY = 0.9
SECOND_MOMENT_DECAY = 0.999

# Every learned log scale stays within +-LOG_SCALE_BOUND (a factor of
# 1e13 either way): on a noise-free stream the likelihood keeps rising as
# c grows, and c q must stay finite in float32.
LOG_SCALE_BOUND = 30.0

# The values of `learn_prior`.
GLOBAL = 'global'
PER_WEIGHT = 'per_weight'


class PriorLearningState(NamedTuple):
  r"""What :func:`multiscale_optax.bayesian_multiscale` keeps to learn its
  prior's scale (``learn_prior``); scalars (and zeros) otherwise.

  Attributes:
    window: :math:`n_t = \sum_s \lambda^{t-s} N_s`, the window's weighted
      count of outputs.
    squared_residuals: :math:`\sum_s \lambda^{t-s} z_s`, the window's
      whitened squared residuals :math:`z = e^\top S^{-1} e`
      (:math:`\rho_t` is their ratio to ``window``).
    sensitivities: :math:`A_t = \sum_s \lambda^{t-s}\partial z_s/\partial
      \log c`: a scalar, or params-shaped for ``learn_prior='per_weight'``.
    gradients: :math:`G_t`, the window's log-likelihood gradient in
      :math:`\log c` (shaped as ``sensitivities``).
    first_moments: the normalised step's running mean of the gradient
      (shaped as ``sensitivities``).
    second_moments: its running mean of the squared gradient.
    steps: how many steps the log scales have taken (``int32``).
  """

  window: jax.Array
  squared_residuals: jax.Array
  sensitivities: Any
  gradients: Any
  first_moments: Any
  second_moments: Any
  steps: jax.Array


class Terms(NamedTuple):
  r"""One observation's terms of the log-likelihood gradient in a log scale.

  For the global scale, scalars; per weight, one array per leaf.

  Attributes:
    explained: :math:`a^\top X a` (per weight :math:`m_p\beta_p^2`).
    trace: :math:`\mathrm{tr}(S^{-1}X)` (per weight :math:`m_p b_p`).
    tracking: :math:`a^\top H T` (per weight :math:`\beta_p\tau_p`), the
      part through the residual's own dependence on the scale.
  """

  explained: Any
  trace: Any
  tracking: Any


def _tree_zip(function: Any, *trees: Any) -> Any:
  """``function`` over scalars, or over the aligned leaves of lists."""
  if isinstance(trees[0], list):
    return [function(*leaves) for leaves in zip(*trees)]
  return function(*trees)


def initial_state(
    scale_like: Callable[[], Any], dtype: Any) -> PriorLearningState:
  """The state before any observation.

  Args:
    scale_like: makes a fresh zero log scale (a scalar, or params-shaped);
      each field gets its own arrays, so that a donated state has no
      buffer twice.
    dtype: the dtype of the scalar window statistics.

  Returns:
    The :class:`PriorLearningState`.
  """
  return PriorLearningState(
      window=jnp.zeros([], dtype), squared_residuals=jnp.zeros([], dtype),
      sensitivities=scale_like(), gradients=scale_like(),
      first_moments=scale_like(), second_moments=scale_like(),
      steps=jnp.zeros([], jnp.int32))


def map_scale_fields(
    function: Callable[..., Any], *states: PriorLearningState,
) -> PriorLearningState:
  """The first state with ``function`` applied to its fields shaped like
  the log scales (``sensitivities``, ``gradients`` and the moments), each
  called with that field of every state."""
  return states[0]._replace(
      sensitivities=function(*(state.sensitivities for state in states)),
      gradients=function(*(state.gradients for state in states)),
      first_moments=function(*(state.first_moments for state in states)),
      second_moments=function(*(state.second_moments for state in states)))


def noise_scale(state: PriorLearningState) -> jax.Array:
  r""":math:`\rho_t`, the window's mean whitened squared residual per
  output (1 before any observation)."""
  return jnp.where(
      state.window > 0.0,
      state.squared_residuals / jnp.maximum(
          state.window, jnp.finfo(state.window.dtype).tiny), 1.0)


def gradients(
    state: PriorLearningState,
    terms: Terms,
    squared_residual: jax.Array,
    outputs: int,
    forget: jax.Array,
    profile: bool,
    valid: jax.Array,
) -> tuple[Any, PriorLearningState]:
  r"""The step's gradients of the window's log-likelihood, and the window.

  Args:
    state: the statistics before the observation.
    terms: the observation's :class:`Terms`.
    squared_residual: :math:`z = e^\top S^{-1} e`.
    outputs: :math:`N`.
    forget: :math:`\lambda`.
    profile: whether the noise scale is profiled
      (``learn_noise_variance``).
    valid: whether the observation counts; else nothing changes.

  Returns:
    The gradient increment (module docstring) and the statistics with the
    window advanced (moments and steps unchanged).
  """
  dtype = state.window.dtype
  window = forget * state.window + outputs
  squared_residuals = forget * state.squared_residuals + squared_residual
  if profile:
    tiny = jnp.finfo(dtype).tiny
    noise = jnp.maximum(squared_residuals / window, tiny)
    previous = jnp.where(
        state.window > 0.0,
        jnp.maximum(state.squared_residuals / jnp.maximum(state.window, tiny),
                    tiny), noise)
    change = 1.0 / noise - 1.0 / previous

    def gradient(explained: Any, trace: Any, tracking: Any,
                 sensitivity: Any) -> Any:
      return (0.5 * (explained / noise - trace) + tracking / noise
              - 0.5 * forget * sensitivity * change)
  else:

    def gradient(explained: Any, trace: Any, tracking: Any,
                 sensitivity: Any) -> Any:
      del sensitivity
      return 0.5 * (explained - trace) + tracking

  increments = _tree_zip(
      gradient, terms.explained, terms.trace, terms.tracking,
      state.sensitivities)
  sensitivities = _tree_zip(
      lambda old, explained, tracking: forget * old - 2.0 * tracking
      - explained, state.sensitivities, terms.explained, terms.tracking)

  def keep(new: Any, old: Any) -> Any:
    return jnp.where(valid, new, old).astype(old.dtype)

  increments = _tree_zip(
      lambda increment: jnp.where(valid, increment, 0.0), increments)
  window_gradients = _tree_zip(
      lambda old, increment: forget * old + increment, state.gradients,
      increments)
  return increments, state._replace(
      window=keep(window, state.window),
      squared_residuals=keep(squared_residuals, state.squared_residuals),
      sensitivities=_tree_zip(keep, sensitivities, state.sensitivities),
      gradients=_tree_zip(keep, window_gradients, state.gradients))


def normalised_steps(
    log_scales: Any,
    increments: Any,
    state: PriorLearningState,
    rate: jax.Array,
    valid: jax.Array,
) -> tuple[Any, PriorLearningState]:
  r"""Each log scale's step :math:`\eta\,\mathrm{clip}(\hat m/\sqrt{\hat v},
  -1, 1)` (module docstring).

  Args:
    log_scales: :math:`\log c`: a scalar, or a list of leaves.
    increments: their gradients (from :func:`gradients`).
    state: the statistics (moments before this step).
    rate: :math:`\eta`.
    valid: whether to step; else nothing changes.

  Returns:
    The new log scales and statistics.
  """
  steps = state.steps + valid.astype(jnp.int32)
  count = jnp.maximum(steps, 1).astype(rate.dtype)
  first_correction = 1.0 - FIRST_MOMENT_DECAY ** count
  second_correction = 1.0 - SECOND_MOMENT_DECAY ** count

  def moments(first: Any, second: Any, gradient: Any) -> tuple[Any, Any]:
    gradient = gradient.astype(first.dtype)
    new_first = FIRST_MOMENT_DECAY * first + (1.0 - FIRST_MOMENT_DECAY) * (
        gradient)
    new_second = SECOND_MOMENT_DECAY * second + (
        1.0 - SECOND_MOMENT_DECAY) * jnp.square(gradient)
    return (jnp.where(valid, new_first, first),
            jnp.where(valid, new_second, second))

  pairs = _tree_zip(moments, state.first_moments, state.second_moments,
                    increments)
  if isinstance(pairs, list):
    first_moments = [first for first, _ in pairs]
    second_moments = [second for _, second in pairs]
  else:
    first_moments, second_moments = pairs

  def step(log_scale: Any, first: Any, second: Any) -> Any:
    # A zero second moment has a zero gradient history: no step.
    positive = second > 0.0
    ratio = jnp.where(positive, (first / first_correction) * jax.lax.rsqrt(
        jnp.where(positive, second, 1.0) / second_correction), 0.0)
    change = rate * jnp.clip(ratio, -1.0, 1.0)
    return jnp.clip(log_scale + jnp.where(valid, change, 0.0),
                    -LOG_SCALE_BOUND, LOG_SCALE_BOUND).astype(log_scale.dtype)

  new_log_scales = _tree_zip(step, log_scales, first_moments, second_moments)
  return new_log_scales, state._replace(
      first_moments=first_moments, second_moments=second_moments,
      steps=steps)
