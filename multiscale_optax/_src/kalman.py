r"""Bayes-optimal learning rates: the multiscale learner as a Kalman filter.

An environment whose latent parameter is a sum of independent AR(1)
processes (the generative model of :math:`1/f` noise that motivates
multiscale learning, Jones, `Learning at Multiple Timescales
<https://arxiv.org/abs/2211.10311>`_, NeurIPS 2022, §1 and §6),

.. math::

  z_{j,t+1} = \rho_j z_{j,t} + \epsilon_{j,t}, \quad
  \epsilon_{j,t} \sim \mathcal N(0, q_j), \qquad
  \theta_t = \sum_j z_{j,t}, \qquad y_t = x_t \theta_t + v_t, \quad
  v_t \sim \mathcal N(0, r),

is tracked optimally by a Kalman filter on the joint latent state
:math:`z = (z_1, \dots, z_m)`. With the constant input :math:`x_t = 1`, write
:math:`\hat z_t` for the filter's prediction of :math:`z_t` from
:math:`y_{<t}`, :math:`P` for its steady-state prediction covariance and

.. math::

  K = \frac{P \mathbf 1}{\mathbf 1^\top P \mathbf 1 + r}

for the steady-state (measurement-update) Kalman gain. The predictor form of
the filter is

.. math::

  \hat y_t = \mathbf 1^\top \hat z_t, \qquad
  \hat z_{j,t+1} = \rho_j \hat z_{j,t} + \rho_j K_j (y_t - \hat y_t).

The gradient of the squared loss :math:`\tfrac12(\hat y_t - y_t)^2` with
respect to the weight :math:`w = \sum_j \omega_j` is :math:`u_t = \hat y_t -
y_t`, so this *is* the multiscale learner of eq. (1),
:math:`\omega_{j,t+1} = \gamma_j \omega_{j,t} - \alpha_j u_t`, with subweights
:math:`\omega_j = \hat z_j`, decays :math:`\gamma_j = \rho_j` and learning
rates :math:`\alpha_j = \rho_j K_j`. Started from the filter's prior mean
(all subweights zero) and the filter's steady-state covariance, the two
produce identical predictions at every step.

Regression inputs (:math:`x_t \sim \mathcal N(0, I_d)`, :math:`d \ge 2`): each
coordinate of :math:`\theta \in \mathbb R^d` is an independent copy of the
process above and the multiscale learner runs least-mean-squares updates
with the gradient :math:`x_t (\hat y_t - y_t)`. Let :math:`\delta_{i} = z_i -
\omega_i \in \mathbb R^m` be coordinate :math:`i`'s error, :math:`S` its
steady-state covariance (the same for every coordinate; different coordinates
stay uncorrelated) and :math:`p = \mathbf 1^\top S \mathbf 1`. Because
:math:`x_t` is independent of the past, Isserlis' theorem gives the exact
second-moment recursion of LMS with gains :math:`K`:

.. math::

  S \leftarrow A\big(S - K\mathbf 1^\top S - S\mathbf 1 K^\top
    + K K^\top\, \mathbb E[x_i^2 e^2]\big)A + Q, \qquad
  \mathbb E[x_i^2 e^2] = \mathbb E[x_i^4]\,p + (d-1)\,p + r = p + r_{eff},

with :math:`A = \mathrm{diag}(\rho)`, :math:`Q = \mathrm{diag}(q)` and the
*effective observation noise* :math:`r_{eff} = r + (d+1)\,p`. This is exactly
the Joseph-form covariance recursion of a scalar Kalman filter with noise
:math:`r_{eff}`. Choosing :math:`K` as that filter's gain therefore makes
:math:`S` the Riccati solution :math:`P(r_{eff})`, which is consistent when
:math:`r_{eff} = r + (d+1)\,\mathbf 1^\top P(r_{eff})\mathbf 1`; this
fixed point is found by monotone iteration from :math:`r_{eff} = r`.
These gains are the best of all LMS gains: any gains :math:`K'` reach some
:math:`p'`, and the Joseph recursion with noise :math:`r + (d+1)p'` is
minimised by the Kalman gain, so :math:`p' \ge \phi(p')` with
:math:`\phi(p) = \mathbf 1^\top P(r + (d+1)p)\mathbf 1`; since
:math:`\phi(p) > p` below the smallest fixed point :math:`p^*`, this forces
:math:`p' \ge p^*`. The excess loss :math:`E[(x\cdot(\theta - w))^2] = d\,p`
is therefore minimal among LMS multiscale learners with these decays.

Normalised LMS divides the gradient by :math:`\|x_t\|^2/d`
(:func:`scale_by_input_norm`). With :math:`u = x^2/\|x\|^2 \sim
\mathrm{Dirichlet}(\tfrac12, \dots)` independent of :math:`\|x\|^2 \sim
\chi^2_d`, the mean gain is unchanged and the noise terms become
:math:`d^2\,\mathbb E[x_i^2 e^2/\|x\|^4] = d\,p + r\,d/(d-2)`, i.e.
:math:`r_{eff} = r\,d/(d-2) + (d-1)\,p` (finite for :math:`d \ge 3`). The
own-coordinate fluctuation and cross-coordinate noise shrink from
:math:`(d+1)p` to :math:`(d-1)p` at the cost of inflating the observation
noise by :math:`d/(d-2)`, which pays off unless :math:`p \ll r/d`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any
from typing import NamedTuple
from typing import SupportsFloat
from typing import cast
from typing import overload

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike
from jax.typing import DTypeLike

from multiscale_optax._src import ar1_prior
from multiscale_optax._src import checks

# Doubling steps of the Riccati solver: the error after k steps scales as
# lambda^(2^k) for the slowest closed-loop eigenvalue lambda < 1, so 64 steps
# reach machine precision for any timescale below 2^60 steps.
_RICCATI_DOUBLING_STEPS = 64
# Newton-Hewer refinement steps after the doubling: quadratic convergence
# from the doubling's answer, whose noise differs from r by a factor of up to
# 1e3 eps max(q) / r (a few steps per decade of that factor at first).
_HEWER_STEPS = 8
_MAX_NOISE_ITERATIONS = 10_000
# The solve has converged when the Riccati residual (relative to max |P|) is
# below this many eps times the number of components: each entry of the
# Riccati map is a sum of O(m) products, each rounded to eps.
_RESIDUAL_EPS_PER_COMPONENT = 100


class SteadyStateKalman(NamedTuple):
  """The steady-state Kalman filter of a sum of AR(1) processes.

  Attributes:
    gains: :math:`K`, the measurement-update gain per component, shape
      ``(m,)``; the multiscale learning rates are ``decays * gains``.
    prior_covariance: :math:`P`, the steady-state covariance of the
      prediction error of the components before each observation, shape
      ``(m, m)`` (per coordinate of :math:`\\theta`).
    effective_noise_variance: :math:`r_{eff}`, the observation noise the
      gains were solved for (``noise_variance`` itself for ``input_dim=1``).
    converged: whether the solver converged (a bool scalar). Always true for
      concrete inputs, which raise instead; check it for traced inputs.
    residual: the relative Riccati residual
      :math:`\\max|R(P) - P| / \\max|P|` of the returned :math:`P`.
  """

  gains: jax.Array
  prior_covariance: jax.Array
  effective_noise_variance: jax.Array
  converged: jax.Array
  residual: jax.Array


def _check_inputs(input_dim: Any, input_normalization: Any) -> None:
  """Checks the inputs' dimension and the normalisation flag."""
  input_dim = checks.check_integer(input_dim, 'input_dim', low=1)
  input_normalization = checks.check_bool(
      input_normalization, 'input_normalization')
  if input_normalization and input_dim == 2:
    raise ValueError(
        '`input_normalization=True` needs `input_dim` of 1 or at least 3: for '
        'x ~ N(0, I_2) the normalised update has infinite variance '
        '(E[1/|x|^2] diverges).')


def _solve_riccati(
    decays: jax.Array, process_variances: jax.Array, noise_variance: jax.Array
) -> tuple[jax.Array, jax.Array]:
  r"""Prediction covariance :math:`P` of the steady-state filter.

  Solves :math:`P = A(P - P\mathbf 1\mathbf 1^\top P/(\mathbf 1^\top P
  \mathbf 1 + r))A + Q` with the structure-preserving doubling algorithm
  (Chu, Fan, Lin & Wang 2004), which converges quadratically, then refines
  it with Newton–Hewer steps. Doubling works with :math:`\mathbf 1\mathbf
  1^\top / r`, whose size makes its linear solves lose about
  :math:`\epsilon\, q / r` at high signal-to-noise ratios (in float32 a
  64% error at :math:`r = 10^{-6}`); a Hewer step solves the Joseph-form
  Stein equation :math:`P = F P F^\top + r A K K^\top A + Q` of the
  current gain :math:`K` (:math:`F = A(I - K\mathbf 1^\top)`), which has no
  :math:`1/r` in it, so a few steps bring the residual down to rounding.

  Returns:
    ``(P, residual)``: the residual is :math:`\max|R(P) - P| / \max|P|`
    for the Riccati map :math:`R`, the solver's own convergence measure.
  """
  num = decays.shape[0]
  dtype = decays.dtype
  identity = jnp.eye(num, dtype=dtype)
  ones = jnp.ones((num,), dtype)

  def doubling_step(
      _: Any, carry: tuple[jax.Array, jax.Array, jax.Array]
  ) -> tuple[jax.Array, jax.Array, jax.Array]:
    transition, gramian, covariance = carry
    solved = jnp.linalg.solve(
        identity + gramian @ covariance,
        jnp.concatenate([transition, gramian], axis=1))
    solved_transition, solved_gramian = solved[:, :num], solved[:, num:]
    return (
        transition @ solved_transition,
        gramian + transition @ solved_gramian @ transition.T,
        covariance + transition.T @ covariance @ solved_transition,
    )

  # Doubling runs at a noise no smaller than 1e3 eps max(q), where its
  # 1/r-sized solves keep about three digits; the Hewer steps then move the
  # answer to the true r (their equation has no 1/r) with the stabilising
  # gain of that nearby problem as the start.
  doubling_noise = jnp.maximum(
      noise_variance,
      1e3 * jnp.finfo(dtype).eps * jnp.max(process_variances))
  initial = (
      jnp.diag(decays),
      jnp.ones((num, num), dtype) / doubling_noise,
      jnp.diag(process_variances),
  )
  _, _, covariance = jax.lax.fori_loop(
      0, _RICCATI_DOUBLING_STEPS, doubling_step, initial)
  covariance = 0.5 * (covariance + covariance.T)

  def gain_of(covariance: jax.Array) -> jax.Array:
    return covariance @ ones / (ones @ covariance @ ones + noise_variance)

  def hewer_step(_: Any, covariance: jax.Array) -> jax.Array:
    gain = gain_of(covariance)
    # F = A (I - K 1^T); vec_r(F X F^T) = (F kron F) vec_r(X), row-major.
    closed_loop = decays[:, None] * (identity - gain[:, None] * ones[None, :])
    scaled_gain = decays * gain
    drive = (noise_variance * scaled_gain[:, None] * scaled_gain[None, :]
             + jnp.diag(process_variances))
    solved = jnp.linalg.solve(
        jnp.eye(num * num, dtype=dtype) - jnp.kron(closed_loop, closed_loop),
        drive.reshape(-1)).reshape(num, num)
    return 0.5 * (solved + solved.T)

  covariance = jax.lax.fori_loop(
      0, _HEWER_STEPS, hewer_step, covariance)
  gain = gain_of(covariance)
  mapped = decays[:, None] * (
      covariance - gain[:, None] * (ones @ covariance)[None, :]
  ) * decays[None, :] + jnp.diag(process_variances)
  residual = jnp.max(jnp.abs(mapped - covariance)) / jnp.max(
      jnp.abs(covariance))
  return covariance, residual


def _noise_map(
    noise_variance: jax.Array, prior_error: jax.Array, input_dim: int,
    input_normalization: bool,
) -> jax.Array:
  """The effective observation noise for a prior error variance p."""
  if input_dim == 1:
    return noise_variance
  if input_normalization:
    return (noise_variance * input_dim / (input_dim - 2)
            + (input_dim - 1) * prior_error)
  return noise_variance + (input_dim + 1) * prior_error


@overload
def steady_state_kalman(
    decays: Sequence[float] | ArrayLike,
    process_variances: Sequence[float] | ArrayLike,
    noise_variance: ArrayLike,
    *,
    input_dim: int = ...,
    input_normalization: bool = ...,
    prior: None = ...,
) -> SteadyStateKalman:
  ...


@overload
def steady_state_kalman(
    decays: None = ...,
    process_variances: None = ...,
    *,
    noise_variance: ArrayLike,
    input_dim: int = ...,
    input_normalization: bool = ...,
    prior: ar1_prior.AR1Prior,
) -> SteadyStateKalman:
  ...


def steady_state_kalman(
    decays: Sequence[float] | ArrayLike | None = None,
    process_variances: Sequence[float] | ArrayLike | None = None,
    noise_variance: ArrayLike | None = None,
    *,
    input_dim: int = 1,
    input_normalization: bool = False,
    prior: ar1_prior.AR1Prior | None = None,
) -> SteadyStateKalman:
  r"""The steady-state Kalman filter for a sum of AR(1) processes.

  Let :math:`\rho_j` be ``decays[j]``, :math:`q_j` be
  ``process_variances[j]``, :math:`r` be ``noise_variance`` and :math:`d` be
  ``input_dim``. Solves the discrete algebraic Riccati equation

  .. math::

    P = A\Big(P - \frac{P\mathbf 1\mathbf 1^\top P}{\mathbf 1^\top P
      \mathbf 1 + r_{eff}}\Big)A + Q, \qquad
    K = \frac{P\mathbf 1}{\mathbf 1^\top P\mathbf 1 + r_{eff}},

  with :math:`A = \mathrm{diag}(\rho)` and :math:`Q = \mathrm{diag}(q)`.
  For ``input_dim=1`` (constant input :math:`x = 1`) :math:`r_{eff} = r` and
  this is the exact steady-state filter. For ``input_dim >= 2`` (inputs
  :math:`x \sim \mathcal N(0, I_d)`) :math:`r_{eff}` is the self-consistent
  effective noise of least-mean-squares learning,
  :math:`r_{eff} = r + (d+1)\,\mathbf 1^\top P \mathbf 1`, or with
  ``input_normalization`` :math:`r_{eff} = r\,d/(d-2) + (d-1)\,\mathbf 1^\top
  P\mathbf 1` (derivation in the module docstring); :math:`P` is then the
  exact steady-state error covariance of each coordinate of the LMS learner.

  The solver is pure JAX (a fixed number of doubling steps inside
  ``jax.lax.fori_loop``, then a monotone fixed-point iteration on
  :math:`r_{eff}` inside ``jax.lax.while_loop``), so it can be ``jax.jit``-ed
  with traced ``decays``, ``process_variances`` and ``noise_variance``.
  Concrete inputs are always solved in float64 (also when ``jax.enable_x64``
  is off; the result is then rounded to float32), and a solve that does not
  converge (relative Riccati residual above :math:`100\, m\, \epsilon`)
  raises. Traced inputs are solved in the default dtype; check
  ``converged`` (float32 is accurate to about :math:`\epsilon` times the
  slowest timescale).

  Args:
    decays: :math:`\rho_j \in (0, 1]`, distinct, one per component; a decay
      of 1 is a random-walk component.
    process_variances: :math:`q_j \ge 0`, the variance of each component's
      innovation (positive where :math:`\rho_j = 1`). A component with
      stationary variance :math:`v` has :math:`q_j = v(1 - \rho_j^2)`.
    noise_variance: :math:`r > 0`, the observation noise variance.
    input_dim: :math:`d`; 1 means the constant input :math:`x_t = 1`,
      :math:`d \ge 2` means :math:`x_t \sim \mathcal N(0, I_d)`.
    input_normalization: whether the learner divides its gradient by
      :math:`\|x_t\|^2/d` (:func:`scale_by_input_norm`); needs
      :math:`d \ne 2`, and changes nothing for :math:`d = 1`.
    prior: an :class:`AR1Prior` in place of ``decays`` and
      ``process_variances`` (its initial variances are not used); pass
      ``noise_variance`` by name then.

  Returns:
    A :class:`SteadyStateKalman` with ``gains`` :math:`K`,
    ``prior_covariance`` :math:`P` and ``effective_noise_variance``
    :math:`r_{eff}`.

  Raises:
    TypeError: an argument has the wrong type, or ``prior`` is given with
      ``decays`` or ``process_variances`` (or neither is given).
    ValueError: lengths differ, a decay lies outside :math:`(0, 1]` or is
      repeated, a variance is negative (or zero where it must be positive),
      ``input_dim < 1``, ``input_normalization`` with ``input_dim == 2``,
      or (concrete inputs) the float64 solve did not converge.

  Examples:
    >>> import numpy as np
    >>> import multiscale_optax as mso
    >>> decays = np.exp(-1.0 / 4.0 ** np.arange(5))
    >>> kalman = mso.steady_state_kalman(decays, 1 - decays**2, 1.0)
    >>> print(np.round(kalman.gains, 4))
    [0.2861 0.1784 0.0985 0.0545 0.0339]

  References:
    Jones, `Learning at Multiple Timescales
    <https://arxiv.org/abs/2211.10311>`_, NeurIPS 2022, eq. (1) and §6.
  """
  ar1, noise_variance = ar1_prior.arguments(
      prior, decays, process_variances, noise_variance)
  ar1_prior.check_filterable(ar1, noise_variance)
  _check_inputs(input_dim, input_normalization)
  decay_entries, variance_entries = ar1.decays, ar1.process_variances
  dtype = jnp.result_type(float)
  concrete = not any(checks.is_traced(entry) for entry in (
      *decay_entries, *variance_entries, noise_variance))
  if not concrete:
    return _steady_state(
        jnp.asarray(decay_entries, dtype),
        jnp.asarray(variance_entries, dtype),
        jnp.asarray(noise_variance, dtype), int(input_dim),
        bool(input_normalization))
  # check_filterable() refused complex and boolean values (ArrayLike
  # admits them).
  real_noise_variance = cast(SupportsFloat, noise_variance)
  # Concrete inputs are solved in float64 whatever the default dtype, so
  # that float32 users get the float64 answer rounded once (a float32
  # solve is off by about eps * q / r: 64% at r = 1e-6). Evaluated now even
  # inside a caller's jax.jit trace, where the inputs are still constants.
  with jax.enable_x64(True), jax.ensure_compile_time_eval():
    solved = jax.tree.map(np.asarray, _steady_state(
        jnp.asarray(decay_entries, jnp.float64),
        jnp.asarray(variance_entries, jnp.float64),
        jnp.asarray(float(real_noise_variance), jnp.float64),
        int(input_dim),
        bool(input_normalization)))
  if not bool(solved.converged):
    raise ValueError(
        'steady_state_kalman did not converge in float64: the relative '
        f'Riccati residual is {float(solved.residual):.3g} (needs <= '
        f'{_tolerance(np.float64, len(decay_entries)):.3g})'
        + (f' after {_MAX_NOISE_ITERATIONS} effective-noise iterations'
           if int(input_dim) > 1 else '')
        + '. The problem is too ill-conditioned: the signal-to-noise ratio '
        f'max(process_variances) / noise_variance = '
        f'{max(variance_entries) / float(real_noise_variance):.3g} is too '
        'high for the slowest timescale 1 / (1 - max(decays)) (solves '
        'succeed for ratios up to 1e8 with timescales up to 1e8 steps). Use '
        'a larger `noise_variance` or fewer, faster components.')
  return SteadyStateKalman(
      gains=jnp.asarray(solved.gains, dtype),
      prior_covariance=jnp.asarray(solved.prior_covariance, dtype),
      effective_noise_variance=jnp.asarray(
          solved.effective_noise_variance, dtype),
      converged=jnp.asarray(True),
      residual=jnp.asarray(solved.residual, dtype))


def _tolerance(dtype: DTypeLike, num_components: int) -> float:
  """The largest relative Riccati residual of a converged solve."""
  return _RESIDUAL_EPS_PER_COMPONENT * num_components * float(
      jnp.finfo(dtype).eps)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _steady_state(
    decays: jax.Array, process_variances: jax.Array,
    noise_variance: jax.Array, input_dim: int, input_normalization: bool,
) -> SteadyStateKalman:
  dtype = decays.dtype

  def prior_error(noise: jax.Array) -> tuple[jax.Array, jax.Array]:
    covariance, _ = _solve_riccati(decays, process_variances, noise)
    return covariance, jnp.sum(covariance)

  noise_converged = jnp.asarray(True)
  if input_dim > 1:
    tolerance = 8 * jnp.finfo(dtype).eps

    def not_converged(carry: tuple[jax.Array, jax.Array, jax.Array]
                      ) -> jax.Array:
      iteration, old, new = carry
      return (iteration < _MAX_NOISE_ITERATIONS) & (
          jnp.abs(new - old) > tolerance * new)

    def iterate(carry: tuple[jax.Array, jax.Array, jax.Array]
                ) -> tuple[jax.Array, jax.Array, jax.Array]:
      iteration, _, noise = carry
      updated = _noise_map(
          noise_variance, prior_error(noise)[1], input_dim,
          input_normalization)
      return iteration + 1, noise, updated

    start = _noise_map(noise_variance, jnp.zeros((), dtype), input_dim,
                       input_normalization)
    final = jax.lax.while_loop(
        not_converged, iterate,
        (jnp.zeros((), jnp.int32), jnp.zeros((), dtype), start))
    effective = final[2]
    # Stopped by the tolerance, not by the iteration cap.
    noise_converged = ~not_converged(final)
  else:
    effective = noise_variance
  covariance, residual = _solve_riccati(decays, process_variances, effective)
  gains = jnp.sum(covariance, axis=1) / (jnp.sum(covariance) + effective)
  converged = noise_converged & (
      residual <= _tolerance(dtype, decays.shape[0])) & jnp.all(
          jnp.isfinite(gains))
  return SteadyStateKalman(
      gains=gains, prior_covariance=covariance,
      effective_noise_variance=effective, converged=converged,
      residual=residual)


@overload
def kalman_learning_rates(
    decays: Sequence[float] | ArrayLike,
    process_variances: Sequence[float] | ArrayLike,
    noise_variance: ArrayLike,
    *,
    input_dim: int = ...,
    input_normalization: bool = ...,
    prior: None = ...,
) -> jax.Array:
  ...


@overload
def kalman_learning_rates(
    decays: None = ...,
    process_variances: None = ...,
    *,
    noise_variance: ArrayLike,
    input_dim: int = ...,
    input_normalization: bool = ...,
    prior: ar1_prior.AR1Prior,
) -> jax.Array:
  ...


def kalman_learning_rates(
    decays: Sequence[float] | ArrayLike | None = None,
    process_variances: Sequence[float] | ArrayLike | None = None,
    noise_variance: ArrayLike | None = None,
    *,
    input_dim: int = 1,
    input_normalization: bool = False,
    prior: ar1_prior.AR1Prior | None = None,
) -> jax.Array:
  r"""Multiscale learning rates that make the learner a Kalman filter.

  For an environment whose parameter is a sum of AR(1) components with decays
  :math:`\rho_j` (``decays``) and innovation variances :math:`q_j`
  (``process_variances``), observed through :math:`y = x\cdot\theta + v`
  with noise variance :math:`r` (``noise_variance``), returns

  .. math::

    \alpha_j = \rho_j K_j,

  where :math:`K` is the steady-state Kalman gain of
  :func:`steady_state_kalman`. Then ``multiscale(alpha, decays)`` on the
  squared loss :math:`\tfrac12(\hat y - y)^2`, with all subweights starting
  at zero (the prior mean), is the steady-state Kalman filter in predictor
  form for ``input_dim=1`` (identical predictions), and the best LMS
  multiscale learner for ``input_dim >= 2`` with :math:`x \sim \mathcal
  N(0, I_d)` (module docstring). With ``input_normalization=True`` chain
  :func:`scale_by_input_norm` before the multiscale transformation.

  Args:
    decays: :math:`\rho_j \in (0, 1]`, distinct; also the multiscale decays.
    process_variances: :math:`q_j \ge 0`, each component's innovation
      variance.
    noise_variance: :math:`r > 0`.
    input_dim: :math:`d`; 1 means the constant input :math:`x = 1`,
      :math:`d \ge 2` means :math:`x \sim \mathcal N(0, I_d)`.
    input_normalization: whether updates are divided by :math:`\|x\|^2/d`.
    prior: an :class:`AR1Prior` in place of ``decays`` and
      ``process_variances`` (its initial variances are not used); pass
      ``noise_variance`` by name then. The results are the same.

  Returns:
    The learning rates :math:`\alpha_j`, a JAX array of shape ``(m,)`` in
    the default float dtype. Concrete inputs give the float64 solution
    rounded once; traced inputs give NaN where the solve did not converge.

  Raises:
    TypeError: an argument has the wrong type, or ``prior`` is given with
      ``decays`` or ``process_variances`` (or neither is given).
    ValueError: as :func:`steady_state_kalman`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> import optax
    >>> import multiscale_optax as mso
    >>> decays = np.asarray([0.9, 0.99, 1.0])
    >>> rates = mso.kalman_learning_rates(decays, [0.1, 0.01, 0.001], 1.0)
    >>> opt = mso.multiscale(rates, decays)
    >>> weight = jnp.zeros(())
    >>> state = opt.init(weight)
    >>> for target in [1.0, 1.2, 0.8]:
    ...   grad = weight - target  # gradient of (weight - target)**2 / 2
    ...   updates, state = opt.update(grad, state)
    ...   weight = optax.apply_updates(weight, updates)
    >>> print(np.asarray(rates).round(4).tolist(), round(float(weight), 3))
    [0.1508, 0.0497, 0.0275] 0.488

    The same rates from an :class:`AR1Prior` (its initial variances, here
    0 for the random walk, are not used):

    >>> prior = mso.AR1Prior(decays, [0.1, 0.01, 0.001], [0.5, 0.5, 0.0])
    >>> same = mso.kalman_learning_rates(prior=prior, noise_variance=1.0)
    >>> print(bool(jnp.all(same == rates)))
    True

  References:
    Jones, `Learning at Multiple Timescales
    <https://arxiv.org/abs/2211.10311>`_, NeurIPS 2022, eq. (1) and §6.
  """
  dtype = jnp.result_type(float)
  ar1, noise_variance = ar1_prior.arguments(
      prior, decays, process_variances, noise_variance)
  ar1_prior.check_filterable(ar1, noise_variance)
  _check_inputs(input_dim, input_normalization)
  decay_entries, variance_entries = ar1.decays, ar1.process_variances
  if not any(checks.is_traced(entry) for entry in (
      *decay_entries, *variance_entries, noise_variance)):
    # Concrete: the float64 rates, rounded once to the default dtype.
    # check_filterable() refused complex and boolean values (ArrayLike
  # admits them).
    real_noise_variance = cast(SupportsFloat, noise_variance)
    with jax.enable_x64(True), jax.ensure_compile_time_eval():
      kalman = steady_state_kalman(
          decay_entries, variance_entries, float(real_noise_variance),
          input_dim=input_dim, input_normalization=input_normalization)
      rates = np.asarray(decay_entries) * np.asarray(kalman.gains)
    return jnp.asarray(rates, dtype)
  kalman = steady_state_kalman(
      prior=ar1, noise_variance=noise_variance, input_dim=input_dim,
      input_normalization=input_normalization)
  rates = jnp.asarray(decay_entries, kalman.gains.dtype) * kalman.gains
  # Traced inputs cannot raise: a solve that did not converge gives NaN
  # rates rather than quietly wrong ones.
  return jnp.where(kalman.converged, rates, jnp.nan)
