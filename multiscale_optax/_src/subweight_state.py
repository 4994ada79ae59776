"""Support shared by the transformations that store subweights.

The rules every stateful transformation of the package applies to the
leaves of the params, written once (Jones, `Learning at Multiple Timescales
<https://arxiv.org/abs/2211.10311>`_, NeurIPS 2022: each weight's
subweights are params-shaped state):

* integer and boolean leaves are not trained (:func:`is_trainable`);
* a stored leaf has the param's dtype or ``state_dtype``, and is complex
  exactly where the param is (:func:`storage_dtype`);
* a given initial value is a params-shaped pytree, checked leaf by leaf
  (:func:`check_params_shaped`), and stored as a fresh copy rounded to the
  storage dtype (:func:`initial_leaf`);
* an update maps leaf by leaf over the updates and the stored trees
  (:func:`map_leaves`);
* and the search for a transformation's state inside an optax chain
  (:func:`find_state`).
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence
from typing import Any
from typing import TypeVar

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import DTypeLike

from multiscale_optax._src import precision
from multiscale_optax._src import treedefs

StateT = TypeVar('StateT')
# One leaf's step: (update, stored leaves) -> (increment, new stored leaves).
LeafStep = Callable[
    [jax.Array, list[jax.Array]], tuple[jax.Array, list[jax.Array]]]


def is_trainable(*dtypes: DTypeLike) -> bool:
  """Whether a leaf is learned: integer and bool leaves are not.

  Args:
    *dtypes: the dtypes of the leaf's param (or update) and of every leaf
      stored for it.

  Returns:
    True where every one is a floating or complex dtype.
  """
  return all(bool(jnp.issubdtype(dtype, jnp.inexact)) for dtype in dtypes)


def is_masked(node: Any) -> bool:
  """Whether ``node`` is ``optax.MaskedNode`` (a leaf ``optax.masked`` hides
  from the transformation; its state holds the node in the leaf's place)."""
  return isinstance(node, optax.MaskedNode)


def remainder(param: jax.Array, parts: Sequence[jax.Array]) -> jax.Array:
  r"""The part of a weight its stored parts do not hold.

  .. math::

    w - \sum_i \omega_i,

  in the compute dtype of all of them (:func:`precision.compute_dtype`),
  returned in the param's dtype: the slow part of
  :func:`multiscale_optax.get_subweights` and the prior mean of
  :func:`multiscale_optax.get_bayesian_subweights`.

  Args:
    param: the weight :math:`w`.
    parts: the stored parts :math:`\omega_i`, each shaped like ``param``.

  Returns:
    :math:`w - \sum_i \omega_i` with the dtype of ``param``.
  """
  dtype = precision.compute_dtype(param.dtype, *(part.dtype for part in parts))
  total = param.astype(dtype)
  for part in parts:
    total = total - part.astype(dtype)
  return total.astype(param.dtype)


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


def storage_dtype(
    param_dtype: DTypeLike, state_dtype: DTypeLike | None
) -> np.dtype[Any]:
  """The dtype in which a trainable param's state is stored.

  Args:
    param_dtype: the param's (inexact) dtype.
    state_dtype: the requested storage dtype, or ``None`` for the param's.

  Returns:
    ``state_dtype``, or ``param_dtype`` where it is ``None``.

  Raises:
    TypeError: one of them is complex and the other real (a real state
      would drop the imaginary part; a complex one would make the
      increments complex).
  """
  param_dtype = jnp.dtype(param_dtype)
  dtype = param_dtype if state_dtype is None else jnp.dtype(state_dtype)
  param_complex = jnp.issubdtype(param_dtype, jnp.complexfloating)
  state_complex = jnp.issubdtype(dtype, jnp.complexfloating)
  if param_complex and not state_complex:
    raise TypeError(
        f'`state_dtype` {dtype} is real, but a param is {param_dtype}: a real '
        'state would drop the imaginary part. Pass a complex state_dtype (or '
        'None, the param dtype).')
  if state_complex and not param_complex:
    raise TypeError(
        f'`state_dtype` {dtype} is complex, but a param is {param_dtype}: the '
        'increments would be complex. Pass a real state_dtype (or None).')
  return dtype


def check_params_shaped(value: Any, params: Any, name: str) -> None:
  """Raises unless ``value`` is a pytree shaped like ``params``.

  Args:
    value: a given initial value of some state (a params-shaped pytree).
    params: the params (arrays, scalars or ``jax.ShapeDtypeStruct``).
    name: how the error messages name ``value``, e.g.
      ``'initial_subweights[1]'``.

  Raises:
    ValueError: its tree structure or a leaf's shape differs from the
      params' (no broadcasting).
    TypeError: a leaf is complex where the param is real (storing it would
      drop the imaginary part).
  """
  param_structure: treedefs.TreeDef
  param_paths, param_structure = jax.tree_util.tree_flatten_with_path(params)
  structure: treedefs.TreeDef = jax.tree.structure(value)
  if structure != param_structure:
    raise ValueError(
        f'`{name}` must have the structure of the params (their tree '
        f'structure is {param_structure}), got {structure}.')
  for (path, param), leaf in zip(
      param_paths, jax.tree.leaves(value), strict=True):
    where = jax.tree_util.keystr(path) or 'the root'
    shape, param_shape = tuple(jnp.shape(leaf)), tuple(jnp.shape(param))
    if shape != param_shape:
      raise ValueError(
          f'`{name}` has shape {shape} at {where}, but the param there has '
          f'shape {param_shape} (no broadcasting: the state is '
          'params-shaped).')
    if (jnp.issubdtype(jnp.result_type(leaf), jnp.complexfloating)
        and not jnp.issubdtype(jnp.result_type(param), jnp.complexfloating)):
      raise TypeError(
          f'`{name}` is complex at {where}, but the param there is real: '
          'storing it would drop the imaginary part.')


def initial_leaf(
    param: Any, values: Sequence[Any], state_dtype: DTypeLike | None
) -> jax.Array:
  """One leaf of stored state at init: zeros, or the sum of ``values``.

  Integer and boolean params get zeros of their own dtype, which never
  change. Otherwise the leaf is stored in :func:`storage_dtype`, rounded
  with :func:`precision.round_to_storage`, and is always a new array, so
  that donating the state never deletes an array the caller passed (nor
  donates one buffer twice when the params are donated with it).

  Args:
    param: the param (an array, a scalar or a ``jax.ShapeDtypeStruct``).
    values: the given initial values of this leaf (checked with
      :func:`check_params_shaped`); none gives zeros.
    state_dtype: the requested storage dtype, or ``None`` for the param's.

  Returns:
    The stored leaf.

  Raises:
    TypeError: as :func:`storage_dtype`.
  """
  param_dtype = jnp.result_type(param)
  if not is_trainable(param_dtype):
    return jnp.zeros_like(param)
  dtype = storage_dtype(param_dtype, state_dtype)
  if not values:
    return jnp.zeros_like(param, dtype=dtype)
  total = jnp.asarray(values[0])
  for value in values[1:]:
    total = total + jnp.asarray(value)
  total = total.astype(precision.compute_dtype(total.dtype, dtype))
  return jnp.array(
      precision.round_to_storage(total, dtype), dtype=dtype, copy=True)


def leaves_of(
    treedef: treedefs.TreeDef, trees: Sequence[Any]
) -> list[list[Any]]:
  """Per tree of ``trees``, its subtrees at the leaves of ``treedef``."""
  return [treedef.flatten_up_to(tree) for tree in trees]


def trees_of(
    treedef: treedefs.TreeDef, leaves: Sequence[Sequence[Any]]
) -> tuple[Any, ...]:
  """The inverse of :func:`leaves_of`: one tree per list of leaves."""
  return tuple(treedef.unflatten(tree_leaves) for tree_leaves in leaves)


def map_leaves(
    leaf_step: LeafStep, updates: optax.Updates, stored: Sequence[Any]
) -> tuple[optax.Updates, tuple[Any, ...]]:
  """Applies ``leaf_step`` to every leaf of ``updates`` and stored trees.

  Args:
    leaf_step: one leaf's step, called with the update leaf (an array) and
      that leaf of every stored tree; returns the leaf's increment and its
      new stored leaves.
    updates: the incoming updates.
    stored: the stored params-shaped trees (subweights, chain variables).

  Returns:
    The increments (shaped like ``updates``) and the new stored trees.
  """
  treedef: treedefs.TreeDef
  update_leaves, treedef = jax.tree.flatten(updates)
  stored_leaves = leaves_of(treedef, stored)
  increments = []
  new_stored: list[list[jax.Array]] = [[] for _ in stored_leaves]
  for position, update in enumerate(update_leaves):
    increment, new_leaves = leaf_step(
        jnp.asarray(update), [leaves[position] for leaves in stored_leaves])
    increments.append(increment)
    for tree_leaves, leaf in zip(new_stored, new_leaves, strict=True):
      tree_leaves.append(leaf)
  return treedef.unflatten(increments), trees_of(treedef, new_stored)
