r"""The multiscale learner: every weight is a sum of decaying subweights.

Implements eq. (1) of Jones, `Learning at Multiple Timescales
<https://arxiv.org/abs/2211.10311>`_, NeurIPS 2022, as an optax
``GradientTransformation``, and its two-timescale special case, fast weights
(§3 of the same paper).

How the state is stored, and why:

* A subweight with decay :math:`\gamma_i = 1` never forgets, so the sum of
  all such subweights is the parameter minus the decaying subweights: it is
  implied by the params and is not stored. Subweights with equal decays obey
  the same recursion and are merged. The state therefore holds one
  params-shaped pytree per distinct decay :math:`\ne 1`.
* Where it is exact to do so (:math:`|\gamma| \ge 1/2` and the subweight is
  stored in the compute dtype), the increment is read from the *updated*
  subweight, as ``optax.trace`` does. Computing it from the old subweight
  forces XLA to copy the whole state every step (measured 5x slower than
  ``optax.sgd(momentum=0.9)`` at :math:`10^7` parameters on CPU). For small
  decays and low-precision storage the increment is instead taken as the
  difference of stored values, which keeps the implied slow weight free of
  rounding error.
* A subweight stored narrower than float32 (``state_dtype=jnp.bfloat16`` or
  ``jnp.float16``) cannot decay by rounding its stored value: with
  :math:`\gamma = 0.9999` the per-step change is far below half a bfloat16
  ulp, so the rounded value never moves and the subweight silently becomes
  permanent. Such a subweight is stored as a float32 scale times a
  low-precision array, :math:`\omega = s\, m`. The decay acts on the scale
  only, :math:`s \leftarrow \gamma s`, kept in double-float32 precision and
  renormalised to :math:`|s| \in [1/2, 1)` by exact powers of two; the
  update :math:`m \leftarrow m - (s_t \alpha / s) u` is the only rounding
  of :math:`m`. The decay therefore runs at rate :math:`\gamma` whatever
  the storage dtype, for one float32 pair of extra state per subweight.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from multiscale_optax._src import checks

# Below this |decay|, recovering the old subweight from the new one divides by
# a small number; such subweights use the difference form instead.
_SMALLEST_DECAY_READ_AFTER_UPDATE = 0.5


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class SubweightLayout:
  r"""How the entries of ``decays`` map onto stored subweights.

  The layout is fixed when the state is initialised and travels in the
  state's tree structure (it has no array leaves), so that an update with
  traced hyperparameters (``optax.inject_hyperparams`` under ``jax.jit``)
  uses the same layout as the eager ``init``.

  Attributes:
    num_entries: the length of ``learning_rates`` and ``decays``.
    slow_entries: indices of the entries with decay exactly 1; their
      subweights are implied by the params and are not stored.
    stored_groups: for each stored subweight, the indices of the entries it
      merges (all with the same decay).
    group_decays: the decay of each stored subweight as a Python float, or
      ``None`` where it was traced when the state was initialised.
    read_after_update: per stored subweight, whether its increment may be
      read from its updated value (concrete decay with
      :math:`|\gamma| \ge 1/2`).
  """

  num_entries: int
  slow_entries: tuple[int, ...]
  stored_groups: tuple[tuple[int, ...], ...]
  group_decays: tuple[float | None, ...]
  read_after_update: tuple[bool, ...]


class MultiscaleState(NamedTuple):
  """State of :func:`multiscale`.

  Attributes:
    count: number of updates applied so far (``int32``), read by a
      learning-rate schedule.
    subweights: one params-shaped pytree per stored (decaying) subweight,
      in the order of ``layout.stored_groups``. Where ``scales`` is not
      empty, a leaf stored narrower than float64 holds the subweight divided
      by its scale (use :func:`get_subweights` to read values).
    layout: which entries of ``decays`` each stored subweight holds (static:
      no array leaves).
    scales: empty unless some stored leaf is narrower than float32 (or
      ``scaled_subweights=True``); then one pair of float32 scalars
      ``(high, low)`` per stored subweight whose sum :math:`s` multiplies
      that subweight's leaves narrower than float64: the decay acts on
      :math:`s`, so it is not lost to the rounding of the stored leaves.
  """

  count: jax.Array
  subweights: tuple[optax.Params, ...]
  layout: SubweightLayout
  scales: tuple[tuple[jax.Array, jax.Array], ...] = ()


class MultiscaleSubweights(NamedTuple):
  """All subweights of a multiscale learner, as returned by
  :func:`get_subweights`.

  Attributes:
    decays: the decay of each subweight: 1.0 for the non-decaying part
      (first), then one per stored subweight (``None`` if traced at init).
    values: params-shaped pytrees, one per decay, summing to the params.
  """

  decays: tuple[float | None, ...]
  values: tuple[optax.Params, ...]


def _make_layout(decay_entries: Sequence[Any]) -> SubweightLayout:
  slow = []
  groups: list[list[int]] = []
  group_decays: list[float | None] = []
  for index, decay in enumerate(decay_entries):
    if checks.is_traced(decay):
      groups.append([index])
      group_decays.append(None)
    elif decay == 1.0:
      slow.append(index)
    elif decay in group_decays:
      groups[group_decays.index(decay)].append(index)
    else:
      groups.append([index])
      group_decays.append(decay)
  return SubweightLayout(
      num_entries=len(decay_entries),
      slow_entries=tuple(slow),
      stored_groups=tuple(tuple(group) for group in groups),
      group_decays=tuple(group_decays),
      read_after_update=tuple(
          decay is not None and abs(decay) >= _SMALLEST_DECAY_READ_AFTER_UPDATE
          for decay in group_decays
      ),
  )


def _sum_entries(entries: Sequence[Any], indices: Sequence[int]) -> Any:
  """Sums selected entries, exactly in float64 where they are concrete."""
  chosen = [entries[i] for i in indices]
  if any(checks.is_traced(entry) for entry in chosen):
    return sum(chosen[1:], chosen[0])
  return float(np.sum(np.asarray(chosen, dtype=np.float64)))


def _group_coefficients(
    learning_rate_entries: Sequence[Any],
    decay_entries: Sequence[Any],
    layout: SubweightLayout,
) -> tuple[Any, list[tuple[Any, Any, Any]]]:
  """Per stored subweight: (learning rate, 1 - decay, decay).

  Computed in float64 where the hyperparameters are concrete, so that
  :math:`1 - \\gamma` keeps its relative precision when later cast to a
  narrower compute dtype.
  """
  slow_rate = (
      _sum_entries(learning_rate_entries, layout.slow_entries)
      if layout.slow_entries else 0.0
  )
  coefficients = []
  for group in layout.stored_groups:
    decay = decay_entries[group[0]]
    leak = 1.0 - decay if checks.is_traced(decay) else float(
        np.float64(1.0) - np.float64(decay))
    coefficients.append(
        (_sum_entries(learning_rate_entries, group), leak, decay))
  return slow_rate, coefficients


def _is_narrow(dtype: Any) -> bool:
  """Whether ``dtype`` has fewer mantissa bits than float32."""
  return jnp.finfo(dtype).nmant < jnp.finfo(jnp.float32).nmant


def _is_scaled(dtype: Any, scales: Sequence[Any]) -> bool:
  """Whether a stored leaf of ``dtype`` is multiplied by its scale.

  A state with scales scales every leaf narrower than float64: the scale is
  a double-float32 number, which would limit a float64 subweight.
  """
  return bool(scales) and (
      jnp.finfo(dtype).nmant < jnp.finfo(jnp.float64).nmant)


def _two_sum(first: jax.Array, second: jax.Array) -> tuple[jax.Array, ...]:
  """Knuth's error-free sum: ``total + error == first + second`` exactly."""
  total = first + second
  second_part = total - first
  error = (first - (total - second_part)) + (second - second_part)
  return total, error


def _advance_scale(
    scale: tuple[jax.Array, jax.Array], leak: Any
) -> tuple[tuple[jax.Array, jax.Array], jax.Array]:
  """Decays a ``(high, low)`` float32 scale and renormalises it.

  Returns the new scale, with magnitude in [1/2, 1), and the power of two
  (or 0 for a decay of 0) by which the stored leaves must be multiplied so
  that ``new_scale * factor`` equals ``scale * (1 - leak)``.
  """
  high, low = scale
  leak = jnp.asarray(leak, jnp.float32)
  # The rounding of high * leak is relative to the per-step change, not to
  # the scale, so the decay keeps about 24 bits per step even as leak -> 0.
  total, error = _two_sum(high, -high * leak)
  total, error = _two_sum(total, error + (low - low * leak))
  mantissa, exponent = jnp.frexp(total)
  is_zero = total == 0
  new_scale = (
      jnp.where(is_zero, jnp.float32(1), mantissa),
      jnp.where(is_zero, jnp.float32(0), jnp.ldexp(error, -exponent)),
  )
  factor = jnp.where(
      is_zero, jnp.float32(0), jnp.ldexp(jnp.float32(1), exponent))
  return new_scale, factor


def _leafwise_update(
    update: jax.Array,
    stored: Sequence[jax.Array],
    slow_rate: Any,
    coefficients: Sequence[tuple[Any, Any, Any]],
    read_after_update: Sequence[bool],
    scale: Any,
    stored_scales: Sequence[tuple[jax.Array, jax.Array, jax.Array] | None],
) -> tuple[jax.Array, list[jax.Array]]:
  compute_dtype = jnp.result_type(
      jnp.float32, update.dtype, *(leaf.dtype for leaf in stored))
  update_c = update.astype(compute_dtype)
  scale_c = jnp.asarray(scale, compute_dtype)
  # Coefficient of the current update direction in the increment.
  update_coefficient = -scale_c * jnp.asarray(slow_rate, compute_dtype)
  increment = None
  new_stored = []
  for leaf, (rate, leak, decay), fast_form, stored_scale in zip(
      stored, coefficients, read_after_update, stored_scales):
    rate_c = scale_c * jnp.asarray(rate, compute_dtype)
    leak_c = jnp.asarray(leak, compute_dtype)
    old = leaf.astype(compute_dtype)
    if stored_scale is not None and _is_scaled(leaf.dtype, stored_scales):
      # omega = s m: the decay lives in s (see the module docstring), so m
      # only moves by the learning signal and exact powers of two.
      scale_change, new_scale, factor = (
          value.astype(compute_dtype) for value in stored_scale)
      stepped = old * factor
      new = (stepped - (rate_c / new_scale) * update_c).astype(leaf.dtype)
      new_stored.append(new)
      # s' m' - s m, split so that each product is rounded relative to a
      # small change rather than to the subweight itself.
      term = scale_change * old + new_scale * (
          new.astype(compute_dtype) - stepped)
      increment = term if increment is None else increment + term
      continue
    # omega <- gamma omega - alpha u, written as omega - (1 - gamma) omega so
    # that the decay keeps the precision of 1 - gamma.
    new = (old - leak_c * old - rate_c * update_c).astype(leaf.dtype)
    new_stored.append(new)
    if fast_form and leaf.dtype == compute_dtype:
      # old = (new + alpha u) / gamma, so new - old is read from `new` alone.
      decay_c = jnp.asarray(decay, compute_dtype)
      term = (-leak_c / decay_c) * new
      update_coefficient = update_coefficient - rate_c / decay_c
    else:
      term = new.astype(compute_dtype) - old
    increment = term if increment is None else increment + term
  direct = update_coefficient * update_c
  increment = direct if increment is None else increment + direct
  return increment.astype(update.dtype), new_stored


def multiscale(
    learning_rates: Sequence[float] | jax.Array,
    decays: Sequence[float] | jax.Array,
    *,
    learning_rate: optax.ScalarOrSchedule = 1.0,
    initial_subweights: Sequence[optax.Params | None] | None = None,
    state_dtype: Any = None,
    scaled_subweights: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""The multiscale learner: weights as sums of decaying subweights.

  Each weight is a sum of subweights :math:`w = \sum_i \omega_i`, and each
  subweight learns at its own rate and forgets at its own rate:

  .. math::

    \omega_{i,t+1} = \gamma_i\, \omega_{i,t} - s_t\, \alpha_i\, u_t,

  where :math:`\alpha_i` is ``learning_rates[i]``, :math:`\gamma_i` is
  ``decays[i]``, :math:`s_t` is ``learning_rate`` (a constant or a
  schedule of the step count) and :math:`u_t` is the incoming update (a raw
  gradient, or a preconditioned direction such as the output of
  ``optax.scale_by_adam()``). The transformation returns the parameter
  increment

  .. math::

    \Delta w_t = \sum_i (\omega_{i,t+1} - \omega_{i,t})
      = -s_t \Big(\sum_i \alpha_i\Big) u_t
        - \sum_i (1 - \gamma_i)\, \omega_{i,t},

  so ``optax.apply_updates`` makes the params follow :math:`w`. Subweight
  :math:`i` has timescale :math:`\tau_i = -1/\log\gamma_i`. The initial
  params are the non-decaying part; decaying subweights start at zero unless
  ``initial_subweights`` is given.

  Subweights with :math:`\gamma_i = 1` are implied by the params and are not
  stored; entries with equal decays are merged. State memory is therefore
  (number of distinct decays :math:`\ne 1`) :math:`\times` params. Which
  entries are merged is decided when the state is initialised from the decay
  values known then; a decay that is traced at that time (e.g.
  ``jax.jit(opt.init)`` under ``optax.inject_hyperparams``) gets a stored
  subweight of its own, so injected decays may take any value in
  :math:`(-1, 1]` later.

  Special cases: ``multiscale([lr], [1.0])`` is SGD;
  ``optax.chain(optax.scale_by_adam(), multiscale([lr], [1.0]))`` is
  ``optax.adam(lr)``; ``multiscale([lr / (1 - b), -lr * b / (1 - b)],
  [1.0, b])`` is ``optax.sgd(lr, momentum=b)`` (§5: momentum is a fast weight
  with a negative learning rate).

  A non-finite entry of the incoming update makes the same entry of the
  increment, of the params and of every stored subweight non-finite (other
  entries are unaffected); wrap the optimizer in ``optax.apply_if_finite`` to
  skip such steps with params and state untouched.

  Args:
    learning_rates: :math:`\alpha_i`, one real per subweight; may be
      negative.
    decays: :math:`\gamma_i`, one per subweight, each in :math:`(-1, 1]`.
    learning_rate: :math:`s_t`, a scalar or an ``optax.Schedule`` of
      the step count that multiplies every :math:`\alpha_i`.
    initial_subweights: optional, one entry per subweight: a params-shaped
      pytree holding its initial value, or ``None`` for zero. Entries with
      decay 1 must be ``None`` (they are implied by the params, which must
      equal the sum of all subweights). Use it to continue a momentum or
      Benna–Fusi state exactly.
    state_dtype: dtype in which the stored subweights live (e.g.
      ``jnp.bfloat16``); ``None`` keeps each param's dtype. Arithmetic runs in
      at least float32 whatever this is; updates keep the incoming dtype.
      Storage narrower than float32 keeps each subweight's decay in a
      float32 scale (see :class:`MultiscaleState`), so a decay such as
      0.9999 still acts at its rate; on a small MLP with timescales from
      10 to :math:`10^4` steps the weights after :math:`10^4` steps were
      within 3.7% (bfloat16) and 0.21% (float16) relative L2 error of the
      float32-state run. Each step still rounds the stored subweight, so
      learning signals below half an ulp of a subweight are lost, and
      subweights that cancel (negative learning rates, as in momentum)
      amplify that rounding: keep such learners in float32.
    scaled_subweights: store float32 subweights too as a float32 array
      times a double-float32 scale that carries the decay (storage narrower
      than float32 always is; float64 storage never is). For runs of
      :math:`10^5` steps or more with timescales of :math:`10^4` or more: in
      :math:`10^6` float32 steps with timescales up to :math:`10^5`
      (``benchmarks/long_run_precision.py``) it cut the transformation's
      relative drift from float64 from :math:`1.9 \cdot 10^{-4}` to
      :math:`1.2 \cdot 10^{-5}` for the slowest subweight and from
      :math:`1.1 \cdot 10^{-4}` to :math:`5 \cdot 10^{-8}` for the
      non-decaying one. It costs time, not memory: 1.9x the default's update
      time on CPU (:math:`2 \cdot 10^6` params, three stored subweights).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`MultiscaleState`.

  Raises:
    TypeError: an argument has the wrong type.
    ValueError: lengths differ, a vector is empty or not 1-D, a value is not
      finite, or a decay lies outside :math:`(-1, 1]`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import multiscale_optax as mso
    >>> opt = optax.chain(
    ...     optax.scale_by_adam(),
    ...     mso.multiscale([0.01, 0.05], [1.0, 0.9]))
    >>> params = {'w': jnp.zeros(3)}
    >>> state = opt.init(params)
    >>> grads = {'w': jnp.ones(3)}
    >>> updates, state = opt.update(grads, state, params)
    >>> params = optax.apply_updates(params, updates)
    >>> print(params['w'])
    [-0.06 -0.06 -0.06]

  References:
    Jones, `Learning at Multiple Timescales
    <https://arxiv.org/abs/2211.10311>`_, NeurIPS 2022, eq. (1).
  """
  learning_rate_entries, decay_entries = checks.learning_rates_and_decays(
      learning_rates, decays)
  if not callable(learning_rate):
    checks.check_scalar(
        learning_rate, 'learning_rate', low=-np.inf, high=np.inf)
  checks.check_float_dtype(state_dtype, 'state_dtype')
  scaled_subweights = checks.check_bool(
      scaled_subweights, 'scaled_subweights')
  checks.check_tree_per_entry(
      initial_subweights, 'initial_subweights', len(decay_entries),
      'subweight', 'decays')
  if initial_subweights is not None:
    for index, (decay, value) in enumerate(
        zip(decay_entries, initial_subweights)):
      if value is not None and not checks.is_traced(decay) and decay == 1.0:
        raise ValueError(
            f'`initial_subweights[{index}]` must be None: its decay is 1, so '
            'it is implied by the params (set the params to the sum of all '
            'subweights instead).')

  def init_fn(params: optax.Params) -> MultiscaleState:
    layout = _make_layout(decay_entries)
    stored = []
    for group in layout.stored_groups:
      values = [] if initial_subweights is None else [
          initial_subweights[i] for i in group
          if initial_subweights[i] is not None]
      if values:
        total = values[0] if len(values) == 1 else jax.tree.map(
            lambda *leaves: sum(leaves[1:], leaves[0]), *values)
        stored.append(jax.tree.map(
            lambda leaf, param: jnp.asarray(leaf).astype(
                state_dtype or param.dtype), total, params))
      else:
        stored.append(optax.tree.zeros_like(params, dtype=state_dtype))
    leaves = jax.tree.leaves(stored)
    needs_scales = any(_is_narrow(leaf.dtype) for leaf in leaves) or (
        scaled_subweights
        and any(_is_scaled(leaf.dtype, [True]) for leaf in leaves))
    # Scalars, like the step count, so that they need no sharding.
    scales = tuple(
        (jnp.ones([], jnp.float32), jnp.zeros([], jnp.float32))
        for _ in stored
    ) if needs_scales else ()
    return MultiscaleState(
        count=jnp.zeros([], jnp.int32), subweights=tuple(stored),
        layout=layout, scales=scales)

  def update_fn(
      updates: optax.Updates,
      state: MultiscaleState,
      params: optax.Params | None = None,
      **extra_args: Any,
  ) -> tuple[optax.Updates, MultiscaleState]:
    del params, extra_args
    layout = state.layout
    if layout.num_entries != len(decay_entries):
      raise ValueError(
          f'The state was initialised for {layout.num_entries} subweights, '
          f'but this transformation has {len(decay_entries)}.')
    scale = (
        learning_rate(state.count) if callable(learning_rate)
        else learning_rate)
    slow_rate, coefficients = _group_coefficients(
        learning_rate_entries, decay_entries, layout)
    update_leaves, treedef = jax.tree.flatten(updates)
    stored_leaves = [
        treedef.flatten_up_to(tree) for tree in state.subweights]
    if state.scales:
      advanced = [
          _advance_scale(old_scale, leak)
          for old_scale, (_, leak, _) in zip(state.scales, coefficients)]
      new_scales = tuple(new_scale for new_scale, _ in advanced)
      # (s (1 - leak) - s, s', factor): the first is exact up to one
      # rounding because s' factor and s agree in their leading bits.
      stored_scales = [
          ((new_scale[0] * factor - old_scale[0])
           + (new_scale[1] * factor - old_scale[1]),
           new_scale[0] + new_scale[1], factor)
          for old_scale, (new_scale, factor) in zip(state.scales, advanced)]
    else:
      new_scales = ()
      stored_scales = [None] * len(stored_leaves)
    increments = []
    new_stored_leaves: list[list[jax.Array]] = [[] for _ in stored_leaves]
    for position, update in enumerate(update_leaves):
      increment, new_stored = _leafwise_update(
          update,
          [leaves[position] for leaves in stored_leaves],
          slow_rate,
          coefficients,
          layout.read_after_update,
          scale,
          stored_scales,
      )
      increments.append(increment)
      for group_leaves, value in zip(new_stored_leaves, new_stored):
        group_leaves.append(value)
    new_state = MultiscaleState(
        count=optax.safe_increment(state.count),
        subweights=tuple(
            treedef.unflatten(leaves) for leaves in new_stored_leaves),
        layout=layout,
        scales=new_scales,
    )
    return treedef.unflatten(increments), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def fast_weights(
    slow_learning_rate: float,
    fast_learning_rate: float,
    fast_decay: float,
    *,
    learning_rate: optax.ScalarOrSchedule = 1.0,
    state_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Fast weights: a permanent slow weight plus a fast, decaying one (§3).

  The two-timescale multiscale learner :math:`w = \omega_{slow} +
  \omega_{fast}` with

  .. math::

    \omega_{slow} \leftarrow \omega_{slow} - \alpha_{slow} u, \qquad
    \omega_{fast} \leftarrow \gamma_{fast}\, \omega_{fast}
      - \alpha_{fast} u,

  where :math:`\alpha_{slow}` is ``slow_learning_rate``,
  :math:`\alpha_{fast}` is ``fast_learning_rate`` and :math:`\gamma_{fast}`
  is ``fast_decay``. With :math:`\alpha_{fast} > \alpha_{slow}` the fast
  weight adapts quickly to a distribution shift while the slow weight keeps
  long-term knowledge (Figure 1). With :math:`\alpha_{fast} < 0` this is
  momentum (§5). The state stores only :math:`\omega_{fast}`.

  Args:
    slow_learning_rate: :math:`\alpha_{slow}`.
    fast_learning_rate: :math:`\alpha_{fast}`.
    fast_decay: :math:`\gamma_{fast}`, in :math:`(-1, 1)`.
    learning_rate: a scalar or schedule multiplying both rates.
    state_dtype: dtype of the stored fast weight (``None``: the param's).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` (a :func:`multiscale`
    transformation with decays ``[1, fast_decay]``).

  Raises:
    TypeError: an argument is not a real scalar.
    ValueError: a value is not finite or ``fast_decay`` is outside
      :math:`(-1, 1)`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import multiscale_optax as mso
    >>> opt = mso.fast_weights(0.1, 0.5, 0.9)
    >>> params = jnp.zeros(2)
    >>> state = opt.init(params)
    >>> updates, state = opt.update(jnp.ones(2), state)
    >>> print(optax.apply_updates(params, updates))
    [-0.6 -0.6]

  References:
    Jones, `Learning at Multiple Timescales
    <https://arxiv.org/abs/2211.10311>`_, NeurIPS 2022, §3.
  """
  checks.check_scalar(
      slow_learning_rate, 'slow_learning_rate', low=-np.inf, high=np.inf)
  checks.check_scalar(
      fast_learning_rate, 'fast_learning_rate', low=-np.inf, high=np.inf)
  checks.check_scalar(
      fast_decay, 'fast_decay', low=-1.0, high=1.0, low_inclusive=False,
      high_inclusive=False)
  return multiscale(
      [slow_learning_rate, fast_learning_rate],
      [1.0, fast_decay],
      learning_rate=learning_rate,
      state_dtype=state_dtype,
  )


def _find_multiscale_state(opt_state: Any) -> MultiscaleState:
  found = [
      node for node in jax.tree.leaves(
          opt_state, is_leaf=lambda node: isinstance(node, MultiscaleState))
      if isinstance(node, MultiscaleState)
  ]
  if len(found) != 1:
    raise ValueError(
        '`opt_state` must contain exactly one MultiscaleState, found '
        f'{len(found)}.')
  return found[0]


def get_subweights(
    params: optax.Params, opt_state: optax.OptState
) -> MultiscaleSubweights:
  r"""All subweights of a running multiscale learner, the slow one included.

  The stored subweights are read from the state; the non-decaying part is
  implied by the params:

  .. math::

    \omega_{slow} = w - \sum_{i:\, \gamma_i \ne 1} \omega_i .

  The values sum to ``params`` (up to rounding), so slow and fast knowledge
  can be plotted as in the paper's Figure 1.

  Args:
    params: the current params.
    opt_state: the state of :func:`multiscale`, or of any optax chain that
      contains exactly one :class:`MultiscaleState`.

  Returns:
    A :class:`MultiscaleSubweights` with the non-decaying part first (decay
    1.0), then one entry per stored subweight.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import multiscale_optax as mso
    >>> opt = mso.fast_weights(0.1, 0.5, 0.9)
    >>> params = jnp.zeros(1)
    >>> state = opt.init(params)
    >>> updates, state = opt.update(jnp.ones(1), state)
    >>> params = optax.apply_updates(params, updates)
    >>> slow, fast = mso.get_subweights(params, state).values
    >>> print(slow, fast)
    [-0.1] [-0.5]

  References:
    Jones, `Learning at Multiple Timescales
    <https://arxiv.org/abs/2211.10311>`_, NeurIPS 2022, §3 and Figure 1.
  """
  state = _find_multiscale_state(opt_state)
  scales = [
      scale[0] + scale[1] for scale in state.scales
  ] if state.scales else [None] * len(state.subweights)

  def value_of(leaf: jax.Array, scale: jax.Array | None) -> jax.Array:
    """A stored leaf's subweight in (at least) float32."""
    compute_dtype = jnp.result_type(jnp.float32, leaf.dtype)
    value = leaf.astype(compute_dtype)
    if scale is not None and _is_scaled(leaf.dtype, state.scales):
      value = scale.astype(compute_dtype) * value
    return value

  def slow_part(param: jax.Array, *stored: jax.Array) -> jax.Array:
    compute_dtype = jnp.result_type(
        jnp.float32, param.dtype, *(leaf.dtype for leaf in stored))
    total = param.astype(compute_dtype)
    for leaf, scale in zip(stored, scales):
      total = total - value_of(leaf, scale).astype(compute_dtype)
    return total.astype(param.dtype)

  slow = jax.tree.map(slow_part, params, *state.subweights)
  values = tuple(
      jax.tree.map(
          lambda leaf, scale=scale: value_of(leaf, scale).astype(leaf.dtype),
          tree)
      for tree, scale in zip(state.subweights, scales))
  return MultiscaleSubweights(
      decays=(1.0, *state.layout.group_decays),
      values=(slow, *values),
  )

