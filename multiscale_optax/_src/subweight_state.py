"""Support shared by the transformations that store subweights.

The rules every stateful transformation of the package applies to the
leaves of the params, and the search for its state inside an optax chain,
written once (Jones, `Learning at Multiple Timescales
<https://arxiv.org/abs/2211.10311>`_, NeurIPS 2022: each weight's
subweights are params-shaped state).
"""

from __future__ import annotations

from typing import Any
from typing import TypeVar

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

StateT = TypeVar('StateT')


def is_trainable(dtype: DTypeLike) -> bool:
  """Whether a leaf of ``dtype`` is learned (integer and bool leaves are not).

  Args:
    dtype: the leaf's dtype.

  Returns:
    True for floating and complex dtypes.
  """
  return bool(jnp.issubdtype(dtype, jnp.inexact))


def find_state(opt_state: Any, state_type: type[StateT]) -> StateT:
  """The one state of ``state_type`` inside ``opt_state``.

  Args:
    opt_state: a transformation's state, or an optax chain's (or wrapper's)
      state holding it.
    state_type: the NamedTuple type of the state to find.

  Returns:
    The state.

  Raises:
    ValueError: ``opt_state`` holds none or several; the message names
      where the several are.
  """

  def is_state(node: Any) -> bool:
    return isinstance(node, state_type)

  found = [
      (path, node) for path, node in jax.tree_util.tree_flatten_with_path(
          opt_state, is_leaf=is_state)[0]
      if is_state(node)]
  if len(found) != 1:
    places = ', '.join(
        f'opt_state{jax.tree_util.keystr(path)}' for path, _ in found)
    hint = (
        f' (at {places}); pass the part of the state that holds the one you '
        'want, e.g. opt_state.inner_states[label] for optax.multi_transform'
    ) if found else ''
    raise ValueError(
        f'`opt_state` must contain exactly one {state_type.__name__}, found '
        f'{len(found)}{hint}.')
  return found[0][1]
