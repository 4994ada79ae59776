"""Construction-time validation of hyperparameters.

Every public constructor validates its numeric arguments where they are
concrete, so that bad input fails loudly with the argument's name and the
allowed range instead of turning into NaNs inside a jitted step. Values that
arrive as tracers (``optax.inject_hyperparams`` under ``jax.jit``, or
``jax.vmap`` over a batch of optimizers) cannot be inspected; their shapes are
still checked, their values are not.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def is_traced(value: Any) -> bool:
  """Whether ``value`` is (or contains) an abstract JAX tracer."""
  return isinstance(value, jax.core.Tracer)


def is_real_scalar(entry: Any) -> bool:
  """Whether ``entry`` is a real number (not a bool) or a 0-d real array."""
  if isinstance(entry, bool | np.bool_):
    return False
  if isinstance(entry, numbers.Real):
    return True
  if isinstance(entry, np.ndarray | jax.Array):
    return entry.ndim == 0 and (
        jnp.issubdtype(entry.dtype, jnp.floating)
        or jnp.issubdtype(entry.dtype, jnp.integer)
    )
  return False


def vector_entries(value: Any, name: str) -> tuple[Any, ...]:
  """Splits a 1-D real vector into its entries, checking type and shape.

  Args:
    value: a non-empty 1-D sequence, NumPy array or JAX array of reals.
    name: the argument's name, used in error messages.

  Returns:
    A tuple of scalars: Python floats where the value is concrete, 0-d
    tracers where it is traced.

  Raises:
    TypeError: ``value`` is not a sequence or array of real numbers.
    ValueError: ``value`` is not 1-D, or is empty.
  """
  if isinstance(value, str | bytes | dict | set) or value is None:
    raise TypeError(
        f'`{name}` must be a 1-D sequence or array of real numbers, got '
        f'{type(value).__name__}.'
    )
  if isinstance(value, np.ndarray | jax.Array):
    dtype = value.dtype
    if not (
        jnp.issubdtype(dtype, jnp.floating)
        or jnp.issubdtype(dtype, jnp.integer)
    ) or jnp.issubdtype(dtype, jnp.bool_):
      raise TypeError(
          f'`{name}` must hold real numbers, got an array of dtype {dtype}.'
      )
    if value.ndim != 1:
      raise ValueError(
          f'`{name}` must be 1-D (one entry per subweight), got shape '
          f'{tuple(value.shape)}.'
      )
    if value.shape[0] == 0:
      raise ValueError(f'`{name}` must have at least one entry, got none.')
    if is_traced(value):
      return tuple(value[i] for i in range(value.shape[0]))
    return tuple(float(v) for v in np.asarray(value, dtype=np.float64))
  if isinstance(value, numbers.Number):
    raise ValueError(
        f'`{name}` must be 1-D (one entry per subweight), got the scalar '
        f'{value!r}; wrap it in a list.'
    )
  if not isinstance(value, Sequence):
    raise TypeError(
        f'`{name}` must be a 1-D sequence or array of real numbers, got '
        f'{type(value).__name__}.'
    )
  if len(value) == 0:
    raise ValueError(f'`{name}` must have at least one entry, got none.')
  entries = []
  for position, entry in enumerate(value):
    if isinstance(entry, str | bytes):
      raise TypeError(
          f'`{name}[{position}]` must be a real number, got the string '
          f'{entry!r}.'
      )
    if isinstance(entry, Sequence | np.ndarray | jax.Array) and not (
        is_real_scalar(entry)
    ):
      raise ValueError(
          f'`{name}` must be 1-D, but entry {position} is not a scalar: '
          f'{entry!r}.'
      )
    if not is_real_scalar(entry):
      raise TypeError(
          f'`{name}[{position}]` must be a real number, got '
          f'{type(entry).__name__} {entry!r}.'
      )
    entries.append(entry if is_traced(entry) else float(entry))
  return tuple(entries)


def concrete_vector_entries(value: Any, name: str) -> tuple[float, ...]:
  """Like :func:`vector_entries`, for values that must not be traced.

  Raises:
    TypeError: as :func:`vector_entries`, or an entry is traced.
    ValueError: as :func:`vector_entries`.
  """
  entries = vector_entries(value, name)
  if any(is_traced(entry) for entry in entries):
    raise TypeError(f'`{name}` must be concrete (not traced).')
  return entries


def check_finite(entries: Sequence[Any], name: str) -> None:
  """Raises ``ValueError`` if a concrete entry is NaN or infinite."""
  for position, entry in enumerate(entries):
    if not is_traced(entry) and not np.isfinite(entry):
      raise ValueError(
          f'`{name}[{position}]` must be finite, got {entry}.'
      )


def check_range(
    entries: Sequence[Any],
    name: str,
    *,
    low: float,
    high: float,
    low_inclusive: bool,
    high_inclusive: bool,
) -> None:
  """Raises ``ValueError`` if a concrete entry lies outside an interval."""
  for position, entry in enumerate(entries):
    if is_traced(entry):
      continue
    above_low = entry >= low if low_inclusive else entry > low
    below_high = entry <= high if high_inclusive else entry < high
    if not (above_low and below_high):
      interval = (
          ('[' if low_inclusive else '(')
          + f'{low}, {high}'
          + (']' if high_inclusive else ')')
      )
      raise ValueError(
          f'`{name}[{position}]` must lie in {interval}, got {entry}.'
      )


def check_same_length(
    first: Sequence[Any], first_name: str, second: Sequence[Any],
    second_name: str,
) -> None:
  """Raises ``ValueError`` if two per-subweight vectors differ in length."""
  if len(first) != len(second):
    raise ValueError(
        f'`{first_name}` and `{second_name}` must have the same length (one '
        f'entry per subweight), got {len(first)} and {len(second)}.'
    )


def check_scalar(
    value: Any, name: str, *, low: float, high: float,
    low_inclusive: bool = True, high_inclusive: bool = True,
) -> None:
  """Checks a scalar hyperparameter's type and (when concrete) range."""
  if not is_real_scalar(value):
    raise TypeError(
        f'`{name}` must be a real scalar, got {type(value).__name__} '
        f'{value!r}.'
    )
  if is_traced(value):
    return
  value = float(value)
  if not np.isfinite(value):
    raise ValueError(f'`{name}` must be finite, got {value}.')
  above_low = value >= low if low_inclusive else value > low
  below_high = value <= high if high_inclusive else value < high
  if not (above_low and below_high):
    interval = (
        ('[' if low_inclusive else '(') + f'{low}, {high}'
        + (']' if high_inclusive else ')')
    )
    raise ValueError(f'`{name}` must lie in {interval}, got {value}.')


def check_float_dtype(
    dtype: Any, name: str, *, allow_complex: bool = False
) -> None:
  """Raises ``TypeError`` unless ``dtype`` is ``None`` or a float dtype.

  Args:
    dtype: the argument.
    name: its name, used in error messages.
    allow_complex: whether complex dtypes are accepted too.
  """
  if dtype is None:
    return
  if isinstance(dtype, np.ndarray | jax.Array | jax.core.Tracer):
    # optax.inject_hyperparams treats a dtype such as jnp.bfloat16 as a
    # schedule (it is callable) and passes an array here.
    raise TypeError(
        f'`{name}` must be None or a floating dtype, got an array; under '
        f"optax.inject_hyperparams pass static_args=('{name}',)."
    )
  try:
    resolved = np.dtype(dtype)
  except TypeError as error:
    raise TypeError(
        f'`{name}` must be None or a floating dtype, got {dtype!r}.'
    ) from error
  if not (jnp.issubdtype(resolved, jnp.floating) or (
      allow_complex and jnp.issubdtype(resolved, jnp.complexfloating))):
    raise TypeError(
        f'`{name}` must be None or a floating dtype (e.g. jnp.float32, '
        f'jnp.bfloat16), got {resolved}.'
    )


# Storage dtypes of optimizer state. Formats with fewer bits (the float8
# family) are refused: a per-step rounding to 2-3 mantissa bits loses every
# learning signal smaller than an eighth of a subweight, and some of them
# have no infinity, which jax.lax.reduce_precision cannot reproduce.
_STATE_DTYPES = (
    jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64, jnp.complex64,
    jnp.complex128)


def check_state_dtype(dtype: Any, name: str) -> None:
  """Raises ``TypeError`` unless ``dtype`` can hold optimizer state.

  Args:
    dtype: ``None`` (each param's own dtype) or one of float16, bfloat16,
      float32, float64, complex64 and complex128.
    name: the argument's name, used in error messages.

  Raises:
    TypeError: ``dtype`` is an array (as ``optax.inject_hyperparams``
      passes a dtype that is not in ``static_args``), not a dtype, or not
      one of the dtypes above (e.g. ``jnp.float8_e4m3fn`` or an integer).
  """
  if dtype is None:
    return
  check_float_dtype(dtype, name, allow_complex=True)
  resolved = np.dtype(dtype)
  if resolved not in [np.dtype(allowed) for allowed in _STATE_DTYPES]:
    raise TypeError(
        f'`{name}` must be None or one of float16, bfloat16, float32, '
        f'float64, complex64, complex128, got {resolved}: narrower formats '
        'lose every learning signal below an eighth of a subweight.'
    )


def learning_rates_and_decays(
    learning_rates: Any, decays: Any
) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
  """Validates a multiscale learner's per-subweight hyperparameters.

  Args:
    learning_rates: one finite real per subweight.
    decays: one finite real in (-1, 1] per subweight.

  Returns:
    The entries of both (see :func:`vector_entries`).

  Raises:
    TypeError: either is not a 1-D vector of reals.
    ValueError: they differ in length, are empty or not 1-D, hold a
      non-finite value, or a decay lies outside (-1, 1].
  """
  rate_entries = vector_entries(learning_rates, 'learning_rates')
  decay_entries = vector_entries(decays, 'decays')
  check_same_length(rate_entries, 'learning_rates', decay_entries, 'decays')
  check_finite(rate_entries, 'learning_rates')
  check_finite(decay_entries, 'decays')
  check_range(
      decay_entries, 'decays', low=-1.0, high=1.0, low_inclusive=False,
      high_inclusive=True)
  return rate_entries, decay_entries


def check_tree_per_entry(
    value: Any, name: str, count: int, entry: str, counted: str
) -> None:
  """Checks an optional sequence holding one pytree (or None) per entry.

  Args:
    value: ``None`` or the sequence to check.
    name: the argument's name, used in error messages.
    count: how many entries it must have.
    entry: what each entry belongs to, e.g. ``'subweight'``.
    counted: what ``count`` counts, e.g. ``'decays'``.

  Raises:
    TypeError: ``value`` is not a sequence.
    ValueError: it has the wrong length.
  """
  if value is None:
    return
  if isinstance(value, dict) or not isinstance(value, Sequence):
    raise TypeError(
        f'`{name}` must be None or a sequence with one entry (a '
        f'params-shaped pytree or None) per {entry}, got '
        f'{type(value).__name__}.')
  if len(value) != count:
    raise ValueError(
        f'`{name}` must have one entry per {entry}: {count} {counted} but '
        f'{len(value)} entries.')


def check_integer(value: Any, name: str, *, low: int) -> int:
  """Checks an integer argument (a Python or NumPy int, not a bool).

  Args:
    value: the argument.
    name: its name, used in error messages.
    low: the smallest allowed value.

  Returns:
    ``value`` as a Python ``int``.

  Raises:
    TypeError: ``value`` is a bool or not an integer.
    ValueError: ``value < low``.
  """
  if isinstance(value, bool | np.bool_) or not isinstance(
      value, int | np.integer):
    raise TypeError(f'`{name}` must be an int, got {type(value).__name__}.')
  if value < low:
    raise ValueError(f'`{name}` must be at least {low}, got {value}.')
  return int(value)


def check_bool(value: Any, name: str) -> bool:
  """Checks a flag: a Python or NumPy bool.

  Args:
    value: the argument.
    name: its name, used in error messages.

  Returns:
    ``value`` as a Python ``bool``.

  Raises:
    TypeError: ``value`` is not a bool (ints such as 0 and 1 are refused:
      they are more often a misplaced positional argument than a flag).
  """
  if not isinstance(value, bool | np.bool_):
    raise TypeError(
        f'`{name}` must be True or False, got {type(value).__name__} '
        f'{value!r}.')
  return bool(value)


def decays_and_process_variances(
    decays: Any, process_variances: Any, *, lowest_decay: float
) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
  r"""Validates the AR(1) prior of a drifting environment or learner.

  Args:
    decays: one finite real in ``(lowest_decay, 1]`` per subweight.
    process_variances: one finite real :math:`\ge 0` per subweight.
    lowest_decay: the open lower end of the decays' range.

  Returns:
    The entries of both (see :func:`vector_entries`).

  Raises:
    TypeError: either is not a 1-D vector of reals.
    ValueError: they differ in length, are empty or not 1-D, hold a
      non-finite value, or a value lies outside its range.
  """
  decay_entries = vector_entries(decays, 'decays')
  variance_entries = vector_entries(process_variances, 'process_variances')
  check_same_length(
      decay_entries, 'decays', variance_entries, 'process_variances')
  check_finite(decay_entries, 'decays')
  check_finite(variance_entries, 'process_variances')
  check_range(
      decay_entries, 'decays', low=lowest_decay, high=1.0,
      low_inclusive=False, high_inclusive=True)
  check_range(
      variance_entries, 'process_variances', low=0.0, high=np.inf,
      low_inclusive=True, high_inclusive=False)
  return decay_entries, variance_entries


def initial_variances(
    value: Any, decay_entries: Sequence[Any]
) -> tuple[Any, ...]:
  r"""Validates given initial variances of an AR(1) prior.

  Args:
    value: one finite real :math:`\ge 0` per entry of ``decay_entries``.
    decay_entries: the prior's decays, validated already.

  Returns:
    The entries of ``value`` (see :func:`vector_entries`).

  Raises:
    TypeError: ``value`` is not a 1-D vector of reals.
    ValueError: its length differs from the decays', it is empty or not
      1-D, or an entry is negative or not finite.
  """
  entries = vector_entries(value, 'initial_variances')
  check_same_length(decay_entries, 'decays', entries, 'initial_variances')
  check_finite(entries, 'initial_variances')
  check_range(
      entries, 'initial_variances', low=0.0, high=np.inf,
      low_inclusive=True, high_inclusive=False)
  return entries
