r"""Cholesky factors and triangular solves of the small :math:`N \times N`
innovation matrices of the Bayesian multiscale learner.

An observation of a few outputs (one for a scalar loss, two for a sampled
Fisher row beside the observed gradient) gives an innovation covariance
:math:`S` of a few rows. On CPU a LAPACK call for a :math:`2 \times 2`
Cholesky factor costs about ten times the arithmetic written out, and a
step makes several such calls, which at batch 1 on a small network is a
large part of the step. Up to :data:`UNROLLED` rows the factorisation
(:math:`S = LL^\top`, column by column) and the substitutions are written
out elementwise, which XLA fuses with their neighbours; larger matrices go
to ``jnp.linalg`` and ``jax.scipy.linalg``. Both follow the same
conventions: only the lower triangle of the symmetrised input is read, and
a matrix that is not positive definite gives a factor with non-finite
entries (the learner's guard skips such an observation).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# The largest N whose algebra is written out (N^3 / 6 scalar operations).
UNROLLED = 4


def cholesky(matrix: jax.Array) -> jax.Array:
  """The lower Cholesky factor of a symmetric ``(N, N)`` matrix."""
  count = matrix.shape[0]
  if count > UNROLLED:
    return jnp.linalg.cholesky(matrix)
  symmetric = 0.5 * (matrix + matrix.T)
  lower: list[list[jax.Array]] = [[] for _ in range(count)]
  for column in range(count):
    pivot = jnp.sqrt(symmetric[column, column] - sum(
        (jnp.square(lower[column][k]) for k in range(column)),
        jnp.zeros((), matrix.dtype)))
    lower[column].append(pivot)
    for row in range(column + 1, count):
      lower[row].append((symmetric[row, column] - sum(
          (lower[row][k] * lower[column][k] for k in range(column)),
          jnp.zeros((), matrix.dtype))) / pivot)
  zero = jnp.zeros((), matrix.dtype)
  return jnp.stack([jnp.stack(lower[row] + [zero] * (count - row - 1))
                    for row in range(count)])


def solve_lower(lower: jax.Array, rhs: jax.Array) -> jax.Array:
  """:math:`L^{-1} b` for a lower-triangular ``(N, N)`` ``lower`` and a
  right-hand side ``(N,)`` or ``(N, M)``."""
  count = lower.shape[0]
  if count > UNROLLED:
    return jax.scipy.linalg.solve_triangular(lower, rhs, lower=True)
  solved: list[jax.Array] = []
  for row in range(count):
    value = rhs[row] - sum((lower[row, k] * solved[k] for k in range(row)),
                           jnp.zeros_like(rhs[row]))
    solved.append(value / lower[row, row])
  return jnp.stack(solved)


def solve_upper(lower: jax.Array, rhs: jax.Array) -> jax.Array:
  """:math:`L^{-\\top} b` for a lower-triangular ``lower``."""
  count = lower.shape[0]
  if count > UNROLLED:
    return jax.scipy.linalg.solve_triangular(lower, rhs, lower=True,
                                             trans='T')
  solved: list[jax.Array] = [jnp.zeros_like(rhs[0])] * count
  for row in reversed(range(count)):
    value = rhs[row] - sum(
        (lower[k, row] * solved[k] for k in range(row + 1, count)),
        jnp.zeros_like(rhs[row]))
    solved[row] = value / lower[row, row]
  return jnp.stack(solved)


def cho_solve(lower: jax.Array, rhs: jax.Array) -> jax.Array:
  """:math:`S^{-1} b` from the lower Cholesky factor of :math:`S`."""
  if lower.shape[0] > UNROLLED:
    return jax.scipy.linalg.cho_solve((lower, True), rhs)
  return solve_upper(lower, solve_lower(lower, rhs))


def lower_inverse(lower: jax.Array) -> jax.Array:
  """:math:`L^{-1}` of a lower-triangular ``(N, N)`` matrix."""
  return solve_lower(lower, jnp.eye(lower.shape[0], dtype=lower.dtype))
