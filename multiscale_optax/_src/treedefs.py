"""A typed view of a pytree's structure, for the type checker only.

``jax.tree.flatten`` and ``jax.tree.structure`` return a
``jax.tree_util.PyTreeDef``, which jaxlib defines in a compiled module that
ships no type stub: a type checker cannot see its methods and rejects every
call of them. :class:`TreeDef` names the methods this package calls, so that
annotating a structure with it keeps those calls checked (an ``Any`` would
not). It changes nothing at run time.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from typing import Protocol


class TreeDef(Protocol):
  """The part of ``jax.tree_util.PyTreeDef`` that this package calls."""

  def flatten_up_to(self, tree: Any, /) -> list[Any]:
    """The subtrees of ``tree`` at this structure's leaves."""
    ...

  def unflatten(self, leaves: Iterable[Any], /) -> Any:
    """The pytree of this structure with ``leaves`` as its leaves."""
    ...
