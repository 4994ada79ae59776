r"""The extended Kalman filter kernel of the Bayesian multiscale learner.

A belief over every subweight of every weight (the state vector :math:`s`
of :func:`multiscale_optax.bayesian_multiscale`: :math:`k` subweights per
weight, so :math:`kP` entries for :math:`P` weights) is Gaussian with mean
:math:`\mu` and covariance

.. math::

  \Sigma = \mathrm{diag}(D) - U U^\top,

:math:`D` a positive vector and :math:`U` a :math:`kP \times L` factor
(:math:`L` = ``rank``; :math:`L = 0` is the diagonal belief). The
observation of :math:`N` outputs is linearised around the params,
:math:`y = H s + v`, :math:`v \sim \mathcal N(0, R)`, with
:math:`H = [J, J, \dots, J]` (the Jacobian :math:`J` of the outputs with
respect to the weights, once per subweight, since every weight is the sum of
its subweights). A scalar output is the case :math:`N = 1`; nothing below
branches on it.

The functions here are the filter's steps, each on lists of leaves (one
list per subweight, one array per params leaf, of the param's shape; factors
``(*shape, L)``, columns last; Jacobian rows ``(N, *shape)``), in the
compute dtype. Leaves keep their shapes (no flattening), so each keeps its
param's sharding:

* :func:`innovation`: :math:`S = R + H \Sigma H^\top` and its Cholesky
  factor, one reduction over the whole network (every weight's step depends
  on the uncertainty of all the others).
* :func:`condition`: the Kalman update. The mean moves by
  :math:`\Sigma H^\top S^{-1} e`; the covariance loses
  :math:`C C^\top` with :math:`C = \Sigma H^\top L_S^{-\top}`. A low-rank
  belief appends the :math:`N` columns of :math:`C` to :math:`U` and cuts
  the :math:`L + N` columns back to :math:`L` by an eigendecomposition of
  their Gram matrix (:func:`_truncate`); a diagonal belief keeps a diagonal
  by one of the rules of :data:`VARIANCE_UPDATES`.
* :func:`predict`: the prior's prediction (:math:`\mu \leftarrow
  \gamma\mu`, :math:`D \leftarrow \gamma^2 D + c q`,
  :math:`U \leftarrow \gamma U`), exact for this form. The means are
  stored scaled (:mod:`multiscale_optax._src.scaled_storage`), so the
  transformation applies their decay where it stores them; this gives the
  covariance.
* :func:`tangent_projection` and :func:`weight_statistics`: what the
  learned prior scale reads from an observation
  (:mod:`multiscale_optax._src.prior_learning`).

The structure follows the inference modules of dynamax
(``inference_ekf.py``) and rebayes (LoFi: Chang, Durán-Martín, Shestopaloff,
Jones & Murphy, "Low-rank extended Kalman filtering for online learning of
neural networks from streaming data", CoLLAs 2023).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp

from multiscale_optax._src import small_linalg

# Rules for the diagonal of a belief with rank 0 (see
# `multiscale_optax.bayesian_multiscale`, argument `variance_update`).
VARIANCE_UPDATES = (
    'moment_matching', 'mean_field', 'others_as_noise', 'weight_marginal')

class PseudoResidual(NamedTuple):
  """The value of the ``pseudo_residual`` extra argument that marks an
  observation's residual as a pseudo-residual (not a prediction error).

  It has no fields, so it is a pytree with no leaves: ``jax.jit`` passes it
  as structure (a Python ``True`` would become a traced array there), and so
  do ``optax.chain``, ``apply_if_finite``, ``MultiSteps`` and
  ``inject_hyperparams``.
  """


class Observation(NamedTuple):
  """One (possibly multi-output) observation, linearised at the params.

  Attributes:
    rows: per leaf, the Jacobian rows :math:`J` of shape ``(N, n)``.
    covariance: :math:`R`, ``(N, N)``, in use (noise scale applied).
    residual: :math:`e`, ``(N,)``, or ``None`` where only
      :math:`J^\\top e` is known (``residual_products``; ``N = 1``).
    residual_products: per leaf, :math:`J^\\top e` of shape ``(n,)``, used
      where ``residual`` is ``None``.
  """

  rows: list[jax.Array]
  covariance: jax.Array
  residual: jax.Array | None
  residual_products: list[jax.Array] | None


class Belief(NamedTuple):
  """The Gaussian belief :math:`(\\mu, \\mathrm{diag}(D) - UU^\\top)`.

  Attributes:
    diagonals: :math:`D`, per subweight, per leaf, of the param's shape.
    factors: :math:`U`, per subweight, per leaf, shape ``(*shape, L)``; an
      empty list for a diagonal belief.
    summed_first: subweights whose sum is formed first in every sum over
      all subweights (``None``: in order), so that their partial sum, which
      :func:`condition`'s ``summed_over`` reads, is the same array.
  """

  diagonals: list[list[jax.Array]]
  factors: list[list[jax.Array]]
  summed_first: Sequence[int] | None = None


class Innovation(NamedTuple):
  """The innovation of an observation under a belief.

  Attributes:
    covariance: :math:`S = R + H\\Sigma H^\\top`, ``(N, N)``.
    explained: :math:`H \\Sigma H^\\top`, ``(N, N)``.
    cholesky: the lower Cholesky factor :math:`L_S` of :math:`S`.
    projection: :math:`U^\\top H^\\top`, ``(L, N)``, or ``None`` for a
      diagonal belief.
  """

  covariance: jax.Array
  explained: jax.Array
  cholesky: jax.Array
  projection: jax.Array | None


class Posterior(NamedTuple):
  """What conditioning on an observation changes.

  Attributes:
    mean_steps: :math:`\\Sigma H^\\top S^{-1} e`, per subweight, per leaf.
    summed_mean_steps: per leaf, the sum of ``mean_steps`` over subweights
      (the step of the weight; over those of ``summed_over`` in
      :func:`condition`), read from :math:`\\sum_i D_i` and
      :math:`\\sum_i U_i` rather than from every subweight's :math:`D_i`.
    diagonals: the new :math:`D`.
    factors: the new :math:`U` (empty for a diagonal belief).
  """

  mean_steps: list[list[jax.Array]]
  summed_mean_steps: list[jax.Array]
  diagonals: list[list[jax.Array]]
  factors: list[list[jax.Array]]


def _sum(values: Sequence[jax.Array]) -> jax.Array:
  return sum(values[1:], values[0])


def _inner(first: jax.Array, second: jax.Array) -> jax.Array:
  """``(X, *shape)`` and ``(Y, *shape)`` to the ``(X, Y)`` inner products."""
  if first.shape[0] == 1 and second.shape[0] == 1:
    # An elementwise product and a sum, which XLA fuses with the operands'
    # producers (a dot would make it write them out first).
    return jnp.sum(first * second).reshape(1, 1)
  axes = tuple(range(1, first.ndim))
  return jnp.tensordot(first, second, axes=(axes, axes))


def _combine(matrix: jax.Array, leaves: jax.Array) -> jax.Array:
  """``(X, Y)`` times ``(Y, *shape)``: ``(X, *shape)`` (or ``(Y,)`` times
  ``(Y, *shape)``: ``shape``)."""
  if leaves.shape[0] == 1:
    column = matrix[..., 0]
    return column.reshape(column.shape + (1,) * (leaves.ndim - 1)) * (
        leaves[0])
  return jnp.tensordot(matrix, leaves, axes=1)


# Up to this many columns, :func:`_times` is written as a sum of columns.
_UNROLLED_COLUMNS = 8


def _gram(first: jax.Array, second: jax.Array) -> jax.Array:
  """``(*shape, X)`` and ``(*shape, Y)`` to the ``(X, Y)`` inner products
  of their columns.

  With the columns last (the minor dimension), XLA:CPU forms this as one
  pass over both at about the speed of reading them; with them first, as a
  contraction over the minor dimension, several times slower.
  """
  axes = tuple(range(first.ndim - 1))
  if second.shape[-1] == 1:
    # A matrix-vector product, with the vector first (XLA:CPU's faster
    # form).
    return jnp.tensordot(second[..., 0], first, axes=(axes, axes))[:, None]
  return jnp.tensordot(first, second, axes=(axes, axes))


def _columns(rows: jax.Array) -> jax.Array:
  """``(N, *shape)`` to ``(*shape, N)``."""
  return jnp.moveaxis(rows, 0, -1)


def _project(factor: jax.Array, rows: jax.Array) -> jax.Array:
  """``(*shape, L)`` and ``(N, *shape)`` to the ``(L, N)`` products."""
  return _gram(factor, _columns(rows))


def _order(belief: Belief, count: int,
           subweights: Sequence[int] | None) -> list[int]:
  """The subweights of a sum, in the order they are added."""
  if subweights is not None:
    return list(subweights)
  first = list(belief.summed_first or ())
  return first + [index for index in range(count) if index not in first]


def _summed_diagonals(
    belief: Belief, subweights: Sequence[int] | None = None,
) -> list[jax.Array]:
  """Per leaf, :math:`s = \\sum_i D_i`: each weight's own prior variance
  (the sum over ``subweights``, all by default)."""
  chosen = [belief.diagonals[i] for i in _order(
      belief, len(belief.diagonals), subweights)]
  return [_sum([diagonals[leaf] for diagonals in chosen])
          for leaf in range(len(belief.diagonals[0]))]


def _summed_factors(
    belief: Belief, subweights: Sequence[int] | None = None,
) -> list[jax.Array]:
  """Per leaf, :math:`\\sum_i U_i`: the factor's rows seen through H (the
  sum over ``subweights``, all by default)."""
  chosen = [belief.factors[i] for i in _order(
      belief, len(belief.factors), subweights)]
  return [_sum([factors[leaf] for factors in chosen])
          for leaf in range(len(belief.factors[0]))]


def innovation(belief: Belief, observation: Observation) -> Innovation:
  r"""The innovation covariance :math:`S = R + H \Sigma H^\top`.

  With :math:`H = [J, \dots, J]`,
  :math:`H\,\mathrm{diag}(D)H^\top = \sum_{\text{leaves}} J\,
  \mathrm{diag}(\textstyle\sum_i D_i)\, J^\top` and
  :math:`H U = J \sum_i U_i`.

  Args:
    belief: the prior belief.
    observation: the observation.

  Returns:
    The :class:`Innovation`.
  """
  rows = observation.rows
  totals = _summed_diagonals(belief)
  explained = _sum([_inner(row * total, row)
                    for row, total in zip(rows, totals)])
  projection = None
  if belief.factors:
    projection = _sum([_project(factor, row) for factor, row in zip(
        _summed_factors(belief), rows)])
    explained = explained - projection.T @ projection
  explained = 0.5 * (explained + explained.T)
  covariance = observation.covariance + explained
  return Innovation(
      covariance=covariance, explained=explained,
      cholesky=small_linalg.cholesky(covariance), projection=projection)


def _precision_diagonals(
    rows: Sequence[jax.Array], cholesky: jax.Array) -> list[jax.Array]:
  """Per leaf, :math:`\\mathrm{diag}(J^\\top (LL^\\top)^{-1} J)`."""
  # L^{-1} J through the N x N inverse factor and a matmul: XLA:CPU's
  # triangular solve with a wide right-hand side is far slower.
  inverse = small_linalg.lower_inverse(cholesky)
  return [jnp.sum(jnp.square(_combine(inverse, row)), axis=0)
          for row in rows]


def _diagonal_variances(
    belief: Belief,
    observation: Observation,
    innovation_: Innovation,
    variance_update: str,
) -> list[list[jax.Array]]:
  """The diagonal of a rank-0 belief after an observation."""
  rows = observation.rows
  if variance_update == 'mean_field':
    # Each subweight as if it alone explained the residual:
    # 1/v <- 1/v + diag(J^T R^{-1} J).
    information = _precision_diagonals(
        rows, small_linalg.cholesky(observation.covariance))
    return [[variance / (1.0 + variance * gain)
             for variance, gain in zip(diagonals, information)]
            for diagonals in belief.diagonals]
  precision = _precision_diagonals(rows, innovation_.cholesky)
  if variance_update == 'moment_matching':
    # The exact posterior's marginal variances, v - v^2 diag(J^T S^-1 J);
    # non-negative in exact arithmetic, the clamp removes rounding.
    return [[jnp.maximum(variance * (1.0 - variance * gain), 0.0)
             for variance, gain in zip(diagonals, precision)]
            for diagonals in belief.diagonals]
  totals = _summed_diagonals(belief)
  if variance_update == 'weight_marginal':
    # Every subweight of a weight shrinks by the factor of the weight's own
    # exact marginal variance, s - s^2 diag(J^T S^-1 J), so the weight's
    # variance (the sum over its subweights) stays exact.
    return [[variance * jnp.maximum(1.0 - total * gain, 0.0)
             for variance, gain, total in zip(diagonals, precision, totals)]
            for diagonals in belief.diagonals]
  # others_as_noise: the other weights' uncertainty as observation noise,
  # R_p = S - s_p j j^T with s_p the weight's own prior variance; by
  # Sherman-Morrison j^T R_p^{-1} j = b / (1 - s_p b), b = j^T S^{-1} j.
  # s_p b < 1 in exact arithmetic (S > s_p j j^T); the floor removes
  # rounding.
  tiny = jnp.finfo(precision[0].dtype).tiny
  information = [gain / jnp.maximum(1.0 - total * gain, tiny)
                 for gain, total in zip(precision, totals)]
  return [[variance / (1.0 + variance * gain)
           for variance, gain in zip(diagonals, information)]
          for diagonals in belief.diagonals]


def _coupling(
    diagonals: list[list[jax.Array]], factors: list[list[jax.Array]],
) -> jax.Array:
  r""":math:`K = U^\top \mathrm{diag}(D)^{-1} U`, ``(L, L)``."""
  tiny = jnp.finfo(diagonals[0][0].dtype).tiny
  # W = D^{-1/2} U and K = W^T W: the product reads one array, not two.
  scaled = [factor * jax.lax.rsqrt(jnp.maximum(diagonal, tiny))[..., None]
            for subweight_diagonals, subweight_factors in zip(
                diagonals, factors)
            for diagonal, factor in zip(subweight_diagonals, subweight_factors)]
  return _sum([_gram(leaf, leaf) for leaf in scaled])


def _deflate(
    diagonals: list[list[jax.Array]], factors: list[list[jax.Array]],
    margin: Any,
) -> tuple[list[list[jax.Array]], list[list[jax.Array]]]:
  r"""The same covariance with :math:`D` as small as it allows, for
  :math:`L \ge kP`.

  With :math:`W = D^{-1/2}U` and :math:`WW^\top` of full rank (possible
  only where :math:`U` has at least as many columns as there are
  subweights), :math:`\Sigma = D^{1/2}(I - WW^\top)D^{1/2}` is also
  :math:`\mathrm{diag}((1 - \delta)D) - U'U'^\top` with
  :math:`U'U'^\top = UU^\top - \delta\,\mathrm{diag}(D)`, positive
  semi-definite for :math:`\delta` up to the smallest eigenvalue of
  :math:`WW^\top` (the :math:`kP`-th largest of :math:`K = W^\top W = V
  \Lambda V^\top`): :math:`U' = U V \mathrm{diag}(\sqrt{(\lambda_j -
  \delta)/\lambda_j})`. Where every direction has been learned,
  :math:`\lambda_j \to 1`, and :math:`D` would stay at the prior's scale
  while the marginal variances :math:`D - \sum U^2` shrink far below it: in
  float32 their difference loses every digit (and the margin of
  :func:`_truncate` keeps them above :math:`3 \cdot 10^{-5} D`). Deflating
  keeps :math:`D` at the scale of the least-learned direction, so the
  joint EKF (:math:`L \ge kP`) keeps its precision in float32.
  """
  eigenvalues, vectors = jnp.linalg.eigh(_coupling(diagonals, factors))
  count = sum(leaf.size for leaves in diagonals for leaf in leaves)
  rank = eigenvalues.shape[0]
  # The smallest eigenvalue of W W^T, less a margin for its rounding.
  deflation = jnp.clip(eigenvalues[rank - count] - margin, 0.0, 1.0 - margin)
  scales = jnp.sqrt(jnp.maximum(eigenvalues - deflation, 0.0) / jnp.maximum(
      eigenvalues, jnp.finfo(eigenvalues.dtype).tiny))
  rotation = (vectors * scales).T
  return ([[(1.0 - deflation) * diagonal for diagonal in leaves]
           for leaves in diagonals],
          [[factor @ rotation.T for factor in leaves]
           for leaves in factors])


def _times(columns: jax.Array, matrix: jax.Array) -> jax.Array:
  """``(*shape, N)`` times ``(N, X)``: ``(*shape, X)``.

  For a few columns, a sum of column times row: an elementwise loop that
  XLA fuses with its consumer (a dot with so small an inner dimension runs
  several times slower on XLA:CPU, and is written out).
  """
  if columns.shape[-1] > _UNROLLED_COLUMNS:
    return columns @ matrix
  return _sum([columns[..., j, None] * matrix[j]
               for j in range(columns.shape[-1])])


def _polar_rotation(block: jax.Array) -> jax.Array:
  r"""An orthogonal :math:`R` with :math:`B R` symmetric positive
  semi-definite (the polar decomposition of the square ``block``
  :math:`B`)."""
  if block.shape[0] == 1:
    return jnp.where(block >= 0.0, 1.0, -1.0).astype(block.dtype)
  left, _, right = jnp.linalg.svd(block)
  return right.T @ left.T


def _truncate(
    diagonals: list[list[jax.Array]],
    factors: list[list[jax.Array]],
    columns: list[list[jax.Array]],
) -> tuple[list[list[jax.Array]], list[list[jax.Array]]]:
  r"""Cuts :math:`\mathrm{diag}(D) - U_+U_+^\top` back to the rank of
  :math:`U`, for :math:`U_+ = [U, C]` (``columns`` :math:`C`, :math:`N` of
  them).

  The eigendecomposition of the Gram matrix :math:`U_+^\top U_+` (formed
  blockwise from :math:`U^\top U`, :math:`U^\top C` and :math:`C^\top
  C`, so :math:`U_+` is never written out) gives the best rank-:math:`L`
  part: :math:`U_+` less its :math:`N` least directions :math:`V_d =
  [A; S]` (orthonormal, rotated so that :math:`S` is symmetric positive
  semi-definite). The kept part is :math:`U_+ M` for any orthonormal basis
  :math:`M` of the complement of :math:`V_d`, and

  .. math::

    M = \begin{bmatrix} I - A (I + S)^{-1} A^\top \\ -A^\top
    \end{bmatrix}

  is one (:math:`M^\top V_d = 0` and :math:`M^\top M = I` follow from
  :math:`A^\top A + S^2 = I`), so the new factor is a rank-:math:`N`
  update of the old one,

  .. math::

    U' = U - G A^\top, \qquad G = U A (I + S)^{-1} + C,

  written in place, with no :math:`(L + N) \times L` product over the
  factor. The dropped columns :math:`U_+ V_d = UA + CS` are subtracted
  from :math:`D` on the diagonal, so the marginal variances stay exact;
  dropping them adds :math:`u u^\top - \mathrm{diag}(u^2)`, which can be
  indefinite. The belief stays positive definite by construction:
  :math:`\mathrm{diag}(D) - UU^\top \succ 0` exactly when the largest
  eigenvalue :math:`\lambda` of :math:`K = W^\top W`, :math:`W =
  D^{-1/2} U`, is below 1, so where :math:`\lambda > 1 - \delta` the
  factor is shrunk by :math:`\sqrt{(1 - \delta)/\lambda}` (which only
  adds variance), with :math:`\delta` a few hundred units of the dtype's
  epsilon: no direction's variance falls below :math:`\delta` times its
  diagonal.
  """
  dtype = diagonals[0][0].dtype
  tiny = jnp.finfo(dtype).tiny
  rank = factors[0][0].shape[-1]
  pairs = [(factor, column) for subweight_factors, subweight_columns in zip(
      factors, columns) for factor, column in zip(
          subweight_factors, subweight_columns)]
  cross = _sum([_gram(factor, column) for factor, column in pairs])
  gram = jnp.block([
      [_sum([_gram(factor, factor) for factor, _ in pairs]), cross],
      [cross.T, _sum([_gram(column, column) for _, column in pairs])]])
  _, vectors = jnp.linalg.eigh(gram)  # ascending eigenvalues
  dropped = vectors[:, :gram.shape[0] - rank]
  dropped = dropped @ _polar_rotation(dropped[rank:])
  reach, own = dropped[:rank], dropped[rank:]
  mixing = jnp.linalg.inv(jnp.eye(own.shape[0], dtype=dtype) + own)
  new_diagonals: list[list[jax.Array]] = []
  gains: list[list[jax.Array]] = []
  for subweight_diagonals, subweight_factors, subweight_columns in zip(
      diagonals, factors, columns):
    new_diagonals.append([])
    gains.append([])
    for diagonal, factor, column in zip(
        subweight_diagonals, subweight_factors, subweight_columns):
      along = factor @ reach
      # D' >= the exact marginal variance > 0; the floor removes rounding.
      new_diagonals[-1].append(jnp.maximum(
          diagonal - jnp.sum(jnp.square(along + _times(column, own)),
                             axis=-1),
          jnp.finfo(dtype).eps * diagonal))
      gains[-1].append(_times(along, mixing) + column)

  def kept(factor: jax.Array, gain: jax.Array) -> jax.Array:
    return factor - _times(gain, reach.T)

  new_factors = [[kept(factor, gain) for factor, gain in zip(*leaves)]
                 for leaves in zip(factors, gains)]
  margin = 256 * jnp.finfo(dtype).eps
  full_rank = rank >= sum(leaf.size for leaves in diagonals for leaf in leaves)
  if full_rank:
    new_diagonals, new_factors = _deflate(new_diagonals, new_factors, margin)
  if rank == 1 or full_rank:
    coupling = _coupling(new_diagonals, new_factors)
  else:
    # W = D'^{-1/2} U' from U and G (written differently from U', so that
    # U' is formed where it is stored, and not written out before; with
    # one column, XLA:CPU is faster writing U' out).
    scales = [[jax.lax.rsqrt(jnp.maximum(diagonal, tiny))[..., None]
               for diagonal in leaves] for leaves in new_diagonals]
    coupling = _sum([
        _gram(scaled, scaled) for scaled in (
            factor * scale - _times(gain * scale, reach.T)
            for subweight in zip(factors, gains, scales)
            for factor, gain, scale in zip(*subweight))])
  largest = jnp.linalg.eigvalsh(coupling)[-1]
  shrink = jnp.sqrt(jnp.minimum(
      1.0, (1.0 - margin) / jnp.maximum(largest, tiny)))
  new_factors = [[factor * shrink for factor in leaves]
                 for leaves in new_factors]
  # An exact 0 read from the coupling's reduction, which reads the old
  # diagonals: a caller that overwrites them in place (a donated state)
  # then does so after it, rather than copying them first.
  after_coupling = (largest != largest).astype(dtype) * 0.0
  new_diagonals = [[diagonal + after_coupling for diagonal in diagonals]
                   for diagonals in new_diagonals]
  return new_diagonals, new_factors


def covariance_times(
    belief: Belief,
    observation: Observation,
    innovation_: Innovation,
    solved: jax.Array,
    summed_over: Sequence[int] | None = None,
) -> tuple[list[list[jax.Array]], list[jax.Array]]:
  r""":math:`\Sigma H^\top w` for an :math:`N`-vector :math:`w`.

  With :math:`\Sigma H^\top = D \circ H^\top - U (U^\top H^\top)`,
  computed without forming :math:`\Sigma`. The Kalman update's mean step is
  the case :math:`w = S^{-1} e`.

  Args:
    belief: the prior belief.
    observation: the observation (its Jacobian rows).
    innovation_: :func:`innovation` of both.
    solved: :math:`w`, shape ``(N,)``.
    summed_over: the subweights whose results are summed (all if
      ``None``; not empty).

  Returns:
    Per subweight and leaf, :math:`(\Sigma H^\top w)_i`; and per leaf
    their sum over ``summed_over``, read from :math:`\sum_i D_i` and
    :math:`\sum_i U_i` over those subweights.
  """
  gains = [_combine(solved, row) for row in observation.rows]
  return _covariance_times_gains(
      belief, innovation_, gains, solved, summed_over)


def _covariance_times_gains(
    belief: Belief, innovation_: Innovation, gains: list[jax.Array],
    solved: jax.Array | None,
    summed_over: Sequence[int] | None = None,
) -> tuple[list[list[jax.Array]], list[jax.Array]]:
  """:func:`covariance_times` from the per-leaf gains :math:`J^\top w`."""
  steps = [[variance * gain for variance, gain in zip(diagonals, gains)]
           for diagonals in belief.diagonals]
  summed_steps = [total * gain for total, gain in zip(
      _summed_diagonals(belief, summed_over), gains)]
  if not belief.factors:
    return steps, summed_steps
  assert innovation_.projection is not None
  if solved is not None:
    coupling = innovation_.projection @ solved
  else:
    coupling = _sum([_project(factor, gain[None])[:, 0] for factor, gain in zip(
        _summed_factors(belief), gains)])
  steps = [[step - factor @ coupling
            for step, factor in zip(subweight_steps, factors)]
           for subweight_steps, factors in zip(steps, belief.factors)]
  summed_steps = [step - factor @ coupling for step, factor in zip(
      summed_steps, _summed_factors(belief, summed_over))]
  return steps, summed_steps


def condition(
    belief: Belief,
    observation: Observation,
    innovation_: Innovation,
    variance_update: str,
    summed_over: Sequence[int] | None = None,
) -> Posterior:
  r"""The Kalman update of a belief on one observation.

  .. math::

    \Delta\mu = \Sigma H^\top S^{-1} e, \qquad
    \Sigma \leftarrow \Sigma - C C^\top, \quad C = \Sigma H^\top L_S^{-\top},

  with :math:`\Sigma H^\top` from :func:`covariance_times`. A low-rank
  belief keeps :math:`C` as new columns of :math:`U` (then
  :func:`_truncate`); a diagonal one applies ``variance_update``.

  Args:
    belief: the prior belief.
    observation: the observation.
    innovation_: :func:`innovation` of both.
    variance_update: one of :data:`VARIANCE_UPDATES` (diagonal belief).
    summed_over: the subweights whose mean steps are summed in
      ``summed_mean_steps`` (all if ``None``; not empty).

  Returns:
    The :class:`Posterior`.
  """
  rows = observation.rows
  if observation.residual is not None:
    mean_steps, summed_steps = covariance_times(
        belief, observation, innovation_,
        small_linalg.cho_solve(innovation_.cholesky, observation.residual),
        summed_over)
  else:
    mean_steps, summed_steps = _covariance_times_gains(
        belief, innovation_,
        [product / innovation_.covariance[0, 0]
         for product in observation.residual_products or ()], None,
        summed_over)
  if not belief.factors:
    return Posterior(
        mean_steps=mean_steps, summed_mean_steps=summed_steps,
        diagonals=_diagonal_variances(
            belief, observation, innovation_, variance_update),
        factors=[])
  assert innovation_.projection is not None
  inverse = small_linalg.lower_inverse(innovation_.cholesky)
  whitened = [_combine(inverse, row) for row in rows]
  # U^T H^T L_S^{-T}: how each new column reads the old factor.
  projected = innovation_.projection @ inverse.T
  columns = [[_columns(diagonal[None] * white) - factor @ projected
              for diagonal, factor, white in zip(diagonals, factors, whitened)]
             for diagonals, factors in zip(belief.diagonals, belief.factors)]
  diagonals, factors = _truncate(belief.diagonals, belief.factors, columns)
  return Posterior(mean_steps=mean_steps, summed_mean_steps=summed_steps,
                   diagonals=diagonals, factors=factors)


def predict(
    belief: Belief,
    leaks: Sequence[Any],
    variance_leaks: Sequence[Any],
    process_noise: Sequence[Sequence[Any]],
) -> Belief:
  r"""The covariance after the prior's prediction step.

  Every subweight follows its AR(1) prior, :math:`s_i \leftarrow \gamma_i
  s_i + \epsilon_i` with :math:`\epsilon_i \sim \mathcal N(0,
  \mathrm{diag}(q_i))`, independently of the others. For
  :math:`\Sigma = \mathrm{diag}(D) - UU^\top` that is exact in the same
  form:

  .. math::

    D_i \leftarrow D_i - (1 - \gamma_i^2) D_i + q_i, \qquad
    U_i \leftarrow U_i - (1 - \gamma_i) U_i,

  (and :math:`\mu_i \leftarrow \gamma_i\mu_i`, which the caller applies
  where it stores the means), each written with :math:`1 - \gamma` and
  :math:`1 - \gamma^2` (taken in float64 where the decay is concrete) so
  that a decay close to 1 keeps its precision.

  Args:
    belief: the belief (usually a posterior).
    leaks: :math:`1 - \gamma_i` per subweight (scalars).
    variance_leaks: :math:`1 - \gamma_i^2` per subweight (scalars).
    process_noise: :math:`q_i` per subweight, per leaf (a scalar or an
      array of the leaf's shape).

  Returns:
    The predicted :class:`Belief` (the same ``summed_first``).
  """
  diagonals = [
      [diagonal - jnp.asarray(variance_leak, diagonal.dtype) * diagonal
       + noise for diagonal, noise in zip(leaves, noises)]
      for leaves, variance_leak, noises in zip(
          belief.diagonals, variance_leaks, process_noise)]
  factors = [[factor - jnp.asarray(leak, factor.dtype) * factor
              for factor in leaves]
             for leaves, leak in zip(belief.factors, leaks)]
  return belief._replace(diagonals=diagonals, factors=factors)


def _shrink_factor(
    residual: jax.Array, cholesky: jax.Array, cap: jax.Array) -> jax.Array:
  r""":math:`\min(1, \sqrt{cap/z})` with :math:`z = \|L_S^{-1}e\|^2`."""
  whitened = small_linalg.solve_lower(cholesky, residual)
  squared = jnp.sum(jnp.square(whitened))
  return jnp.sqrt(cap / jnp.maximum(squared, cap))


def clip_residual(
    observation: Observation, innovation_: Innovation, threshold: float,
) -> Observation:
  r"""The observation with its residual shrunk to a whitened norm bound.

  Where :math:`z = \|L_S^{-1} e\|^2 > t^2 N` (``threshold`` :math:`= t`
  standard deviations per output), :math:`e` is scaled by
  :math:`\sqrt{t^2 N/z}`: the Huber-type outlier-robust Kalman update
  (Durán-Martín, Altamirano, Shestopaloff, Sánchez-Betancourt, Knoblauch,
  Jones, Briol & Murphy, "Outlier-robust Kalman filtering through
  generalised Bayes", ICML 2024). Under a calibrated model :math:`z` is
  chi-square with :math:`N` degrees of freedom, so a threshold of 5 changes
  one observation in about :math:`2 \cdot 10^6` (for :math:`N = 1`).
  """
  assert observation.residual is not None
  count = observation.residual.shape[0]
  shrink = _shrink_factor(
      observation.residual, innovation_.cholesky,
      jnp.asarray(threshold ** 2 * count, innovation_.cholesky.dtype))
  return observation._replace(residual=observation.residual * shrink)


def tangent_projection(
    rows: Sequence[jax.Array], summed_tangents: Sequence[jax.Array],
) -> jax.Array:
  r""":math:`H T = \sum_{\text{leaves}} J \sum_i T_i`, shape ``(N,)``.

  Args:
    rows: per leaf, the Jacobian rows :math:`J`, shape ``(N, *shape)``
      (those as given: a rescaling of the observation is applied to the
      result, a scalar, rather than to every entry of :math:`J`, which XLA
      would otherwise write out before the inner product).
    summed_tangents: per leaf, :math:`\sum_i T_i` of the param's shape.

  Returns:
    The :math:`N`-vector :math:`HT`.
  """
  return _sum([_inner(row, total[None])[:, 0]
               for row, total in zip(rows, summed_tangents)])


def weight_statistics(
    belief: Belief, observation: Observation, innovation_: Innovation,
    solved: jax.Array,
) -> tuple[list[jax.Array], list[jax.Array], list[jax.Array]]:
  r"""Per weight: :math:`J_p^\top w`, :math:`J_p^\top S^{-1} J_p` and its
  own variance.

  Args:
    belief: the prior belief.
    observation: the observation.
    innovation_: :func:`innovation` of both.
    solved: :math:`w`, shape ``(N,)`` (e.g. :math:`S^{-1}e`).

  Returns:
    Per leaf: the gains :math:`J_p^\top w`; the precisions
    :math:`b_p = J_p^\top S^{-1} J_p`; and the weight's own variance
    :math:`m_p` (the sum over its subweights of their covariance block:
    :math:`\sum_i D_{i,p} - \|\sum_i U_{i,p}\|^2`).
  """
  rows = observation.rows
  gains = [_combine(solved, row) for row in rows]
  precisions = _precision_diagonals(rows, innovation_.cholesky)
  own = _summed_diagonals(belief)
  if belief.factors:
    own = [jnp.maximum(total - jnp.sum(jnp.square(factor), axis=-1), 0.0)
           for total, factor in zip(own, _summed_factors(belief))]
  return gains, precisions, own
