r"""Memory kernels: how long a gradient keeps moving a multiscale weight.

A multiscale learner (Jones, `Learning at Multiple Timescales
<https://arxiv.org/abs/2211.10311>`_, NeurIPS 2022, eq. 1) is linear in its
updates, so its whole memory is one impulse response, the *memory kernel*
:math:`h_k = \sum_i \alpha_i \gamma_i^k`. A sum of exponentials with
log-spaced timescales can approximate a power law :math:`k^{-p}`, the
forgetting curve the paper's introduction attributes to natural learners;
:func:`fit_learning_rates` finds the learning rates that do so over given
decays.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt
from jax.typing import ArrayLike

from multiscale_optax._src import checks


def memory_kernel(
    learning_rates: Sequence[float] | ArrayLike,
    decays: Sequence[float] | ArrayLike,
    num_steps: int,
) -> jax.Array:
  r"""The impulse response :math:`h_k` of a multiscale learner.

  .. math::

    h_k = \sum_i \alpha_i\, \gamma_i^{\,k}, \qquad k = 0, \dots, K - 1,

  where :math:`\alpha_i` is ``learning_rates[i]``, :math:`\gamma_i` is
  ``decays[i]`` and :math:`K` is ``num_steps``. A unit update :math:`u_t = 1`
  at step :math:`t` (and none after it) changes the weight after step
  :math:`t + k` by :math:`-h_k`: :math:`h_0 = \sum_i \alpha_i` is the
  immediate learning rate and :math:`h_k` how much of the gradient is still
  remembered :math:`k` steps later. For SGD :math:`h_k = \eta`; for
  momentum ``(from_momentum)`` :math:`h_k = \eta(1 - \beta^{k+1})/(1-\beta)`.

  Jit-compatible (``num_steps`` static) and differentiable in both vectors.

  Args:
    learning_rates: :math:`\alpha_i`, one per subweight.
    decays: :math:`\gamma_i \in (-1, 1]`, one per subweight.
    num_steps: :math:`K \ge 1`, the number of lags.

  Returns:
    A ``jax.Array`` of shape ``(num_steps,)``.

  Raises:
    TypeError: an argument has the wrong type.
    ValueError: (concrete inputs) lengths differ, a value is not finite, or
      a decay lies outside :math:`(-1, 1]`.

  Examples:
    >>> import multiscale_optax as mso
    >>> print(mso.memory_kernel([1.0, -0.9], [1.0, 0.9], 3))
    [0.1   0.19  0.271]

  References:
    Jones, `Learning at Multiple Timescales
    <https://arxiv.org/abs/2211.10311>`_, NeurIPS 2022, eq. (1) and §1.
  """
  steps = checks.check_integer(num_steps, 'num_steps', low=1)
  checks.learning_rates_and_decays(learning_rates, decays)
  rates = jnp.asarray(learning_rates)
  decay_vector = jnp.asarray(decays)
  dtype = jnp.result_type(float, rates.dtype, decay_vector.dtype)
  lags = jnp.arange(steps)
  powers = jnp.power(decay_vector.astype(dtype)[None, :], lags[:, None])
  return powers @ rates.astype(dtype)


def power_law_kernel(
    num_steps: int, exponent: float, *, scale: float = 1.0
) -> np.ndarray:
  r"""A power-law forgetting curve :math:`h_k = s\,(k + 1)^{-p}`.

  Args:
    num_steps: :math:`K \ge 1`, the number of lags :math:`k = 0..K-1`.
    exponent: :math:`p \ge 0`.
    scale: :math:`s`, the value at :math:`k = 0`.

  Returns:
    A float64 NumPy array of shape ``(num_steps,)``.

  Raises:
    TypeError: ``num_steps`` is not an int, or a scalar is not real.
    ValueError: ``num_steps < 1``, ``exponent < 0`` or a value is not
      finite.

  Examples:
    >>> import multiscale_optax as mso
    >>> print(mso.power_law_kernel(4, 1.0))
    [1.         0.5        0.33333333 0.25      ]

  References:
    Jones, `Learning at Multiple Timescales
    <https://arxiv.org/abs/2211.10311>`_, NeurIPS 2022, §1 (power-law
    forgetting).
  """
  steps = checks.check_integer(num_steps, 'num_steps', low=1)
  checks.check_scalar(
      exponent, 'exponent', low=0.0, high=np.inf, high_inclusive=False)
  checks.check_scalar(scale, 'scale', low=-np.inf, high=np.inf)
  lags = np.arange(steps, dtype=np.float64)
  return float(scale) * (lags + 1.0) ** (-float(exponent))


# Lawson and Hanson prove that their active-set method terminates; their
# implementation caps it at 3 iterations per column, as does ours, and a
# run that reaches the cap raises instead of returning a point that does
# not satisfy the optimality conditions.
_NNLS_ITERATIONS_PER_COLUMN = 3


def _nonnegative_least_squares(
    matrix: np.ndarray, target: np.ndarray) -> np.ndarray:
  """Lawson–Hanson active-set NNLS: min ||A x - y|| subject to x >= 0.

  Raises:
    RuntimeError: the iteration cap was reached before the Karush–Kuhn–
      Tucker conditions held (the gradient of the free variables is at most
      the tolerance).
  """
  num_columns = matrix.shape[1]
  cap = _NNLS_ITERATIONS_PER_COLUMN * num_columns + 10
  passive = np.zeros(num_columns, dtype=bool)
  solution = np.zeros(num_columns)
  tolerance = 10.0 * np.finfo(np.float64).eps * np.linalg.norm(
      matrix, 1) * max(matrix.shape)
  gradient = matrix.T @ (target - matrix @ solution)
  for _ in range(cap):
    candidates = np.where(passive, -np.inf, gradient)
    if passive.all() or candidates.max() <= tolerance:
      return solution
    passive[int(np.argmax(candidates))] = True
    for _ in range(cap):
      trial = np.zeros(num_columns)
      trial[passive] = np.linalg.lstsq(
          matrix[:, passive], target, rcond=None)[0]
      if np.all(trial[passive] > 0):
        solution = trial
        break
      blocking = passive & (trial <= 0)
      step = np.min(
          solution[blocking] / (solution[blocking] - trial[blocking]))
      solution = solution + step * (trial - solution)
      passive &= solution > tolerance
      solution[~passive] = 0.0
    else:
      raise RuntimeError(
          'fit_learning_rates(nonnegative=True): the non-negative least '
          f'squares solver did not converge in {cap} inner iterations '
          '(nearly collinear decays); merge decays that are close together '
          'or use nonnegative=False.')
    gradient = matrix.T @ (target - matrix @ solution)
  candidates = np.where(passive, -np.inf, gradient)
  if passive.all() or candidates.max() <= tolerance:
    return solution
  raise RuntimeError(
      'fit_learning_rates(nonnegative=True): the non-negative least squares '
      f'solver did not converge in {cap} iterations: the largest gradient of '
      f'a clamped rate is {candidates.max():.3g} > {tolerance:.3g}. Merge '
      'decays that are close together or use nonnegative=False.')


def fit_learning_rates(
    decays: npt.ArrayLike,
    target_kernel: npt.ArrayLike,
    *,
    weights: npt.ArrayLike | None = None,
    nonnegative: bool = False,
) -> np.ndarray:
  r"""Learning rates whose memory kernel best matches a target kernel.

  Solves the (weighted) least-squares problem

  .. math::

    \min_{\alpha} \sum_{k=0}^{K-1} w_k \Big( \sum_i \alpha_i \gamma_i^{\,k}
      - h^\ast_k \Big)^2 \quad (\text{subject to } \alpha \ge 0
      \text{ if } \texttt{nonnegative}),

  where :math:`\gamma_i` is ``decays[i]``, :math:`h^\ast_k` is
  ``target_kernel[k]`` and :math:`w_k` is ``weights[k]`` (default 1; use
  :math:`w_k = 1/h^{\ast 2}_k` to fit the relative error of a kernel that
  spans orders of magnitude, such as a power law). The unconstrained problem
  is solved with an SVD (minimum-norm solution where decays are nearly
  collinear); the non-negative one with the Lawson–Hanson active-set
  method. Feed the result to ``multiscale(rates, decays)``.

  Args:
    decays: :math:`\gamma_i \in (-1, 1]`, e.g.
      ``decays_from_timescales(log_spaced_timescales(1, 1e4, 12))``.
    target_kernel: :math:`h^\ast_0, \dots, h^\ast_{K-1}`, e.g.
      :func:`power_law_kernel`.
    weights: optional :math:`w_k \ge 0`, one per lag.
    nonnegative: constrain every learning rate to be :math:`\ge 0`.

  Returns:
    The learning rates :math:`\alpha_i`, a float64 NumPy array.

  Raises:
    TypeError: an input is traced or has the wrong type.
    ValueError: a value is not finite, a decay lies outside
      :math:`(-1, 1]`, a weight is negative, or ``weights`` and
      ``target_kernel`` differ in length.
    RuntimeError: (``nonnegative=True``) the active-set solver reached its
      iteration cap without satisfying the optimality conditions.

  Examples:
    >>> import multiscale_optax as mso
    >>> rates = mso.fit_learning_rates([1.0, 0.5], [1.5, 1.25, 1.125])
    >>> print(rates.round(6))
    [1.  0.5]

  References:
    Jones, `Learning at Multiple Timescales
    <https://arxiv.org/abs/2211.10311>`_, NeurIPS 2022, §1–2.
  """
  decay_entries = checks.concrete_vector_entries(decays, 'decays')
  target_entries = checks.concrete_vector_entries(
      target_kernel, 'target_kernel')
  checks.check_finite(decay_entries, 'decays')
  checks.check_finite(target_entries, 'target_kernel')
  checks.check_range(
      decay_entries, 'decays', low=-1.0, high=1.0, low_inclusive=False,
      high_inclusive=True)
  nonnegative = checks.check_bool(nonnegative, 'nonnegative')
  gamma = np.asarray(decay_entries, np.float64)
  target = np.asarray(target_entries, np.float64)
  if weights is None:
    root_weights = np.ones_like(target)
  else:
    weight_entries = checks.concrete_vector_entries(weights, 'weights')
    checks.check_same_length(
        weight_entries, 'weights', target_entries, 'target_kernel')
    checks.check_finite(weight_entries, 'weights')
    checks.check_range(
        weight_entries, 'weights', low=0.0, high=np.inf, low_inclusive=True,
        high_inclusive=False)
    root_weights = np.sqrt(np.asarray(weight_entries, np.float64))
  lags = np.arange(len(target))
  basis = gamma[None, :] ** lags[:, None]
  matrix = root_weights[:, None] * basis
  weighted_target = root_weights * target
  if nonnegative:
    return _nonnegative_least_squares(matrix, weighted_target)
  return np.linalg.lstsq(matrix, weighted_target, rcond=None)[0]
