"""Normalised LMS.

An optax transformation that divides the updates by the mean square of the
current input (:func:`scale_by_input_norm`), the normalisation that
:func:`kalman_learning_rates` assumes with ``input_normalization=True``.
"""

from __future__ import annotations

from typing import Any
from typing import NamedTuple
from typing import cast

import jax
import jax.numpy as jnp
import optax

from multiscale_optax._src import precision


class ScaleByInputNormState(NamedTuple):
  """State of :func:`scale_by_input_norm` (it has none)."""


def scale_by_input_norm() -> optax.GradientTransformationExtraArgs:
  r"""Normalised LMS: divides updates by the mean square of the input.

  Given the current input :math:`x_t \in \mathbb R^d` (or
  :math:`\mathbb C^d`) as the extra argument ``inputs``, returns

  .. math::

    u_t \leftarrow \frac{u_t}{\|x_t\|^2 / d}, \qquad
    \|x_t\|^2 = \sum_i |x_{t,i}|^2.

  The mean square is computed in at least float32 (and as
  :math:`\max_i|x_i|^2` times the mean of :math:`|x_i / \max|x||^2`, so it
  neither overflows nor underflows), and the division in at least float32;
  the result is cast back to each update's dtype. Where :math:`x_t = 0` the
  update passes through unscaled: for the least-squares gradient
  :math:`x_t e_t` that normalised LMS is made for the update is then zero
  anyway, and for any other direction the identity is the only finite
  choice (the normalisation is undefined, not infinite). Integer and boolean
  update leaves are returned unchanged.

  Chain it before :func:`multiscale` with rates from
  ``kalman_learning_rates(..., input_normalization=True)``; it removes most
  of the gradient noise that random inputs add (see
  :func:`kalman_learning_rates`). For a batch of inputs the mean square runs over all entries.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update`` requires
    the keyword argument ``inputs``.

  Raises:
    TypeError: ``update`` was called without ``inputs``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import multiscale_optax as mso
    >>> opt = optax.chain(mso.scale_by_input_norm(), optax.sgd(0.1))
    >>> weights = jnp.zeros(2)
    >>> state = opt.init(weights)
    >>> inputs = jnp.asarray([2.0, 0.0])
    >>> grads = inputs * (weights @ inputs - 1.0)
    >>> updates, state = opt.update(grads, state, weights, inputs=inputs)
    >>> print(updates)
    [0.1 0. ]

  References:
    Jones, `Learning at Multiple Timescales
    <https://arxiv.org/abs/2211.10311>`_, NeurIPS 2022, §2 (any update
    direction may replace the gradient).
  """

  def init_fn(params: optax.Params) -> ScaleByInputNormState:
    del params
    return ScaleByInputNormState()

  def update_fn(
      updates: optax.Updates,
      state: ScaleByInputNormState,
      params: optax.Params | None = None,
      **extra_args: Any,
  ) -> tuple[optax.Updates, ScaleByInputNormState]:
    del params
    if 'inputs' not in extra_args:
      raise TypeError(
          '`scale_by_input_norm` needs the current input: call '
          '`update(updates, state, params, inputs=x)`.')
    inputs = jnp.asarray(extra_args['inputs'])
    if not jnp.issubdtype(inputs.dtype, jnp.number) or jnp.issubdtype(
        inputs.dtype, jnp.bool_):
      raise TypeError(
          '`inputs` must be a numeric array, got dtype '
          f'{inputs.dtype}.')
    # |x|^2 in at least float32 (float16 overflows at |x| = 256 and
    # underflows at 1e-4), and as max|x|^2 * mean(|x / max|x||^2) so that
    # float32 itself neither overflows nor underflows for any finite x.
    real_dtype = jnp.finfo(precision.compute_dtype(inputs.dtype)).dtype
    magnitudes = jnp.abs(inputs).astype(real_dtype)
    largest = jnp.max(magnitudes)
    nonzero = largest > 0
    safe_largest = jnp.where(nonzero, largest, 1.0)
    relative_mean_square = jnp.mean(jnp.square(magnitudes / safe_largest))

    def scale(update: Any) -> Any:
      update = jnp.asarray(update)
      if not jnp.issubdtype(update.dtype, jnp.inexact):
        return update  # integer and boolean leaves are not trained
      compute = precision.compute_dtype(update.dtype, real_dtype)
      scaled = (update.astype(compute) / safe_largest.astype(compute)
                / safe_largest.astype(compute)
                / relative_mean_square.astype(compute))
      # x = 0: the update passes through unscaled (see the docstring).
      return jnp.where(nonzero, scaled, update.astype(compute)).astype(
          update.dtype)

    return jax.tree.map(scale, updates), state

  # optax's protocols take any OptState; update_fn takes its own state.
  return optax.GradientTransformationExtraArgs(
      init_fn, cast(optax.TransformUpdateExtraArgsFn, update_fn))
