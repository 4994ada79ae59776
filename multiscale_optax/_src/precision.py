r"""Compute and storage dtypes of optimizer state, the same on every backend.

Two rules, used by every transformation that stores state:

* **Arithmetic in at least float32.** :func:`compute_dtype` promotes the
  dtypes involved to at least float32 (float64 and complex stay as they
  are), so a bfloat16 state never does its arithmetic in bfloat16.
* **Storing rounds, everywhere.** :func:`round_to_storage` rounds a value
  to the precision of its storage dtype with ``jax.lax.reduce_precision``
  before the cast. XLA may keep excess precision inside a fusion on
  accelerators: without the explicit rounding, XLA:GPU deletes a
  float32 → bfloat16 → float32 round trip, so a change computed as
  ``stored.astype(float32) - old`` is no longer the change of the value
  actually stored, and whatever is implied from it (the slow weight of
  :func:`multiscale_optax.multiscale`) drifts by the rounding error every
  step. ``reduce_precision`` is an explicit rounding that XLA keeps.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike


def compute_dtype(*dtypes: DTypeLike) -> np.dtype[Any]:
  """The dtype in which values of ``dtypes`` are combined: at least float32.

  Args:
    *dtypes: the dtypes of the operands (params, updates, stored state).

  Returns:
    ``jnp.result_type(jnp.float32, *dtypes)``: float32 for narrower floats,
    float64 or complex where any operand is.
  """
  return jnp.result_type(jnp.float32, *dtypes)


def is_narrower_than_float32(dtype: DTypeLike) -> bool:
  """Whether ``dtype`` has fewer mantissa bits than float32."""
  return jnp.finfo(dtype).nmant < jnp.finfo(jnp.float32).nmant


def round_to_storage(value: jax.Array, dtype: DTypeLike) -> jax.Array:
  """``value`` rounded to ``dtype``, with a rounding XLA cannot elide.

  Args:
    value: an array in a compute dtype (at least as wide as ``dtype``).
    dtype: the storage dtype.

  Returns:
    ``value.astype(dtype)``; where ``dtype`` is narrower than ``value``'s
    dtype, the value is first rounded with ``jax.lax.reduce_precision`` to
    ``dtype``'s exponent and mantissa bits, so that casting it back up
    gives exactly the stored value on CPU, GPU and TPU alike.
  """
  dtype = jnp.dtype(dtype)
  if dtype == value.dtype:
    return value
  if jnp.issubdtype(value.dtype, jnp.complexfloating):
    if not jnp.issubdtype(dtype, jnp.complexfloating):
      raise TypeError(
          f'Cannot store a complex value in the real dtype {dtype}.')
    real_dtype = jnp.finfo(dtype).dtype
    return jax.lax.complex(
        round_to_storage(jnp.real(value), real_dtype),
        round_to_storage(jnp.imag(value), real_dtype)).astype(dtype)
  info = jnp.finfo(dtype)
  source = jnp.finfo(value.dtype)
  if info.nmant < source.nmant or info.nexp < source.nexp:
    value = jax.lax.reduce_precision(
        value, exponent_bits=info.nexp, mantissa_bits=info.nmant)
  return value.astype(dtype)


def leak(decay: Any) -> tuple[Any, Any]:
  r""":math:`(1 - \gamma,\ 1 - \gamma^2)`, accurate for a decay near 1.

  :math:`1 - \gamma^2` is written :math:`(1 - \gamma)(1 + \gamma)`, which
  keeps the relative precision of :math:`1 - \gamma` (squaring first loses
  it to the rounding of :math:`\gamma^2`). A concrete decay is subtracted
  in float64 and returned as Python floats, so a narrower compute dtype
  later rounds the difference once; a traced decay gives the same
  arithmetic in its own dtype (no Python branch on its value).

  Args:
    decay: :math:`\gamma`, a Python or NumPy real or a traced scalar.

  Returns:
    ``(1 - decay, 1 - decay**2)``.
  """
  if isinstance(decay, jax.core.Tracer):
    return 1.0 - decay, (1.0 - decay) * (1.0 + decay)
  decay64 = np.float64(decay)
  return float(1.0 - decay64), float((1.0 - decay64) * (1.0 + decay64))
