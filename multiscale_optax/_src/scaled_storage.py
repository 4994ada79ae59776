r"""Scaled storage: a subweight kept as a double-float32 scale times an array.

A subweight stored narrower than float32 (``state_dtype=jnp.bfloat16`` or
``jnp.float16``) cannot decay by rounding its stored value: with
:math:`\gamma = 0.9999` the per-step change :math:`(1 - \gamma)\,\omega` is
far below half a bfloat16 ulp of :math:`\omega`, so the rounded value never
moves and the subweight silently becomes permanent. The multiscale learner
(:func:`multiscale_optax.multiscale`, eq. 1 of Jones, `Learning at Multiple
Timescales <https://arxiv.org/abs/2211.10311>`_, NeurIPS 2022) therefore
stores such a subweight as

.. math::

  \omega = s\, m,

a scalar scale :math:`s` (a float32 pair ``(high, low)`` whose sum is
:math:`s`, i.e. about 48 significant bits) times a low-precision array
:math:`m`. One step :math:`\omega' = \gamma\,\omega - \eta\, u` (with
:math:`\eta` the step's learning rate for this subweight) becomes

.. math::

  s' f = \gamma\, s, \qquad m' = f\, m - (\eta / s')\, u,

where :math:`s'` is :math:`\gamma s` renormalised to
:math:`|s'| \in [1/2, 1)` by an exact power of two :math:`f` (so
:math:`f\, m` is exact). The decay acts on the scale only, at full rate
whatever the storage dtype; the learning signal is the only rounding of
:math:`m`. The increment of the weight,

.. math::

  s' m' - s\, m = (s' f - s)\, m + s' (m' - f\, m),

is split so that each product is rounded relative to a small change, not
to the subweight itself, and it is computed from the *stored* (rounded)
:math:`m'`, so the parameter follows exactly what is stored.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from multiscale_optax._src import precision


class ScaleStep(NamedTuple):
  """One step of a double-float32 scale, as the leaf updates need it.

  Attributes:
    change: :math:`s' f - s`, the change of the scale in old units.
    new_scale: :math:`s'`, the renormalised new scale (float32).
    factor: :math:`f`, the exact power of two (or 0 for a decay of 0) by
      which the stored array is multiplied.
  """

  change: jax.Array
  new_scale: jax.Array
  factor: jax.Array


def initial_scale() -> tuple[jax.Array, jax.Array]:
  """The scale ``(high, low) = (1, 0)`` of a freshly initialised subweight.

  Scalars, like the step count, so that they need no sharding.
  """
  return jnp.ones([], jnp.float32), jnp.zeros([], jnp.float32)


def is_scaled(dtype: DTypeLike) -> bool:
  """Whether a stored leaf of ``dtype`` is multiplied by its scale.

  In a state that has scales, every inexact leaf narrower than float64 is
  scaled: the scale carries about 48 bits, which would limit a float64
  subweight.
  """
  return (
      jnp.issubdtype(dtype, jnp.inexact)
      and jnp.finfo(dtype).nmant < jnp.finfo(jnp.float64).nmant)


def needs_scales(
    dtypes: Iterable[DTypeLike], scaled_subweights: bool) -> bool:
  """Whether a state whose stored leaves have ``dtypes`` keeps scales.

  The answer must not depend on whether the params have leaves at all:
  ``optax.tree_utils.tree_map_params`` initialises the state on a
  placeholder without leaves and expects the real state's tree structure.
  So ``scaled_subweights`` alone decides for float32 storage (a state of
  float64 leaves then carries unused scales), and ``dtypes`` should include
  the requested ``state_dtype``, known before any leaf is seen.

  Args:
    dtypes: the dtypes of the stored leaves, and the requested state dtype
      if there is one.
    scaled_subweights: the user asked for scaled float32 storage.

  Returns:
    True if ``scaled_subweights`` or a dtype is narrower than float32.
  """
  inexact = [dtype for dtype in dtypes if jnp.issubdtype(dtype, jnp.inexact)]
  return scaled_subweights or any(
      precision.is_narrower_than_float32(d) for d in inexact)


def two_sum(first: jax.Array, second: jax.Array) -> tuple[jax.Array, ...]:
  """Knuth's error-free sum: ``total + error == first + second`` exactly."""
  total = first + second
  second_part = total - first
  error = (first - (total - second_part)) + (second - second_part)
  return total, error


def advance_scale(
    scale: tuple[jax.Array, jax.Array], leak: Any
) -> tuple[tuple[jax.Array, jax.Array], ScaleStep]:
  r"""Decays a ``(high, low)`` float32 scale by :math:`1 - \text{leak}`.

  Args:
    scale: the old scale :math:`s` as a float32 pair.
    leak: :math:`1 - \gamma`, a scalar (concrete or traced).

  Returns:
    The new scale pair :math:`s'`, with :math:`|s'| \in [1/2, 1)` (or 1 when
    the subweight was zeroed by :math:`\gamma = 0`), and the
    :class:`ScaleStep` the leaf updates use.
  """
  high, low = scale
  leak = jnp.asarray(leak, jnp.float32)
  # The rounding of high * leak is relative to the per-step change, not to
  # the scale, so the decay keeps about 24 bits per step even as leak -> 0.
  total, error = two_sum(high, -high * leak)
  total, error = two_sum(total, error + (low - low * leak))
  mantissa, exponent = jnp.frexp(total)
  is_zero = total == 0
  new_high = jnp.where(is_zero, jnp.float32(1), mantissa)
  new_low = jnp.where(is_zero, jnp.float32(0), jnp.ldexp(error, -exponent))
  factor = jnp.where(
      is_zero, jnp.float32(0), jnp.ldexp(jnp.float32(1), exponent))
  # s' f and s agree in their leading bits, so this difference is exact up
  # to one rounding.
  change = (new_high * factor - high) + (new_low * factor - low)
  return (new_high, new_low), ScaleStep(
      change=change, new_scale=new_high + new_low, factor=factor)


def update_leaf(
    stored: jax.Array,
    rate: jax.Array,
    update: jax.Array,
    step: ScaleStep,
) -> tuple[jax.Array, jax.Array]:
  r"""One step of a scaled leaf: :math:`m' = f m - (\eta / s') u`.

  Args:
    stored: the stored array :math:`m` (any inexact dtype).
    rate: :math:`\eta`, the step's learning rate for this subweight, in the
      compute dtype's real counterpart.
    update: :math:`u` in the compute dtype.
    step: the scale's :class:`ScaleStep` for this step.

  Returns:
    The new stored array (in ``stored.dtype``, rounded with
    :func:`precision.round_to_storage`) and the increment of the weight
    :math:`s' m' - s m` in the compute dtype.
  """
  dtype = update.dtype
  real_dtype = jnp.finfo(dtype).dtype
  change, new_scale, factor = (
      value.astype(real_dtype) for value in step)
  old = stored.astype(dtype)
  stepped = old * factor
  new = precision.round_to_storage(
      stepped - (rate / new_scale) * update, stored.dtype)
  increment = change * old + new_scale * (new.astype(dtype) - stepped)
  return new, increment


def value_of(stored: jax.Array, scale: tuple[jax.Array, jax.Array]) -> jax.Array:
  """The subweight :math:`s m` of a scaled leaf, in its compute dtype."""
  dtype = precision.compute_dtype(stored.dtype)
  real_dtype = jnp.finfo(dtype).dtype
  return (scale[0] + scale[1]).astype(real_dtype) * stored.astype(dtype)
