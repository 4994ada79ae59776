r"""The multiscale learner: every weight is a sum of decaying subweights.

Implements eq. (1) of Jones, `Learning at Multiple Timescales
<https://arxiv.org/abs/2211.10311>`_, NeurIPS 2022, as an optax
``GradientTransformation``, and its two-timescale special case, fast weights
(§3 of the same paper).

How the state is stored, and why:

* Decays fixed at construction (Python or NumPy floats) get a merged
  layout. A subweight with decay :math:`\gamma_i = 1` never forgets, so the
  sum of all such subweights is the parameter minus the decaying subweights:
  it is implied by the params and is not stored. Subweights with equal
  decays obey the same recursion and are merged. The state therefore holds
  one params-shaped pytree per distinct decay :math:`\ne 1`.
* Decays given as JAX arrays (as ``optax.inject_hyperparams`` passes them,
  concrete or traced) may change after ``init``, so every such entry gets a
  stored subweight of its own, whatever its value; only the params' initial
  value is implied (it is a permanent part with decay 1).
* Where it is exact to do so (a fixed decay with :math:`|\gamma| \ge 1/2`
  and the subweight stored in the compute dtype), the increment is read
  from the *updated* subweight, as ``optax.trace`` does. Computing it from
  the old subweight forces XLA to copy the whole state every step (measured
  5x slower than ``optax.sgd(momentum=0.9)`` at :math:`10^7` parameters on
  CPU). Otherwise the increment is the difference of the stored values,
  which keeps the implied slow weight free of rounding error and is exact
  for any decay, 0 included.
* Every value stored narrower than the compute dtype is rounded to its
  storage dtype explicitly (``jax.lax.reduce_precision``), so that the
  increment is the change of the value actually stored on every backend.
* A subweight stored narrower than float32 keeps its decay in a float32
  scale (the docs page *Numerics*), so that a decay such as 0.9999 is not
  lost to the rounding of the stored values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from typing import NamedTuple
from typing import cast

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike
from jax.typing import DTypeLike

from multiscale_optax._src import checks
from multiscale_optax._src import precision
from multiscale_optax._src import scaled_storage
from multiscale_optax._src import subweight_state
from multiscale_optax._src import treedefs

# Below this |decay|, recovering the old subweight from the new one divides by
# a small number; such subweights use the difference form instead.
_SMALLEST_DECAY_READ_AFTER_UPDATE = 0.5


@jax.tree_util.register_static
class SubweightLayout(NamedTuple):
  r"""How the entries of ``decays`` map onto stored subweights.

  The layout is decided when the transformation is constructed, from which
  decays are fixed (Python or NumPy floats) and which are JAX arrays that
  may change (``optax.inject_hyperparams``). It travels in the state's tree
  structure (it has no array leaves, so ``jax.jit`` treats it as static)
  and is checked against the transformation at every update, so that a
  state from a differently configured optimizer fails loudly. It is a
  NamedTuple of Python numbers, so ``pickle`` and
  ``flax.serialization`` store and restore it with the arrays.

  Attributes:
    num_entries: the length of ``learning_rates`` and ``decays``.
    slow_entries: indices of the entries with a fixed decay of exactly 1;
      their subweights are implied by the params and are not stored.
    stored_groups: for each stored subweight, the indices of the entries it
      merges (all with the same fixed decay; one entry if the decay is an
      array).
    group_decays: the decay of each stored subweight as a Python float, or
      ``None`` where it is given as an array (it may change).
    read_after_update: per stored subweight, whether its increment may be
      read from its updated value (fixed decay with :math:`|\gamma| \ge 1/2`).
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
    subweights: one params-shaped pytree per stored subweight, in the order
      of ``layout.stored_groups``. Where ``scales`` is not empty, an inexact
      leaf stored narrower than float64 holds the subweight divided by its
      scale (use :func:`get_subweights` to read values). Integer and
      boolean params get zeros of their own dtype, which never change.
    layout: which entries of ``decays`` each stored subweight holds (static:
      no array leaves).
    scales: empty unless some stored leaf is narrower than float32 (or
      ``scaled_subweights=True``); then one pair of float32 scalars
      ``(high, low)`` per stored subweight whose sum :math:`s` multiplies
      that subweight's leaves narrower than float64: the decay acts on
      :math:`s`, so it is not lost to the rounding of the stored leaves.
  """

  # The field shadows tuple.count, as in optax's own states (its name is
  # what inject_hyperparams and users look for).
  count: jax.Array  # type: ignore[assignment]
  subweights: tuple[optax.Params, ...]
  layout: SubweightLayout
  scales: tuple[tuple[jax.Array, jax.Array], ...] = ()


class MultiscaleSubweights(NamedTuple):
  """All subweights of a multiscale learner, as returned by
  :func:`get_subweights`.

  Attributes:
    decays: the decay of each subweight: 1.0 for the non-decaying part
      (first), then one per stored subweight (``None`` where the decay was
      given as an array, as under ``optax.inject_hyperparams``).
    values: params-shaped pytrees, one per decay, summing to the params.
      Leaves the transformation does not see (masked out by
      ``optax.masked`` or ``optax.multi_transform``) are
      ``optax.MaskedNode()`` in every entry.
  """

  decays: tuple[float | None, ...]
  values: tuple[optax.Params, ...]


def _fixed_entries(decays: Any, count: int) -> tuple[bool, ...]:
  """Per entry of ``decays``: whether it is fixed at construction.

  Python and NumPy numbers are fixed. A JAX array (concrete or traced) is
  what ``optax.inject_hyperparams`` passes, and may change after ``init``.
  """
  if isinstance(decays, jax.Array):  # tracers are jax.Array instances too
    return (False,) * count
  if isinstance(decays, np.ndarray):
    return (True,) * count
  return tuple(
      not isinstance(entry, jax.Array) for entry in decays)


def _make_layout(
    decay_entries: Sequence[Any], fixed: Sequence[bool]
) -> SubweightLayout:
  slow = []
  groups: list[list[int]] = []
  group_decays: list[float | None] = []
  for index, (decay, is_fixed) in enumerate(zip(decay_entries, fixed)):
    if not is_fixed:
      groups.append([index])
      group_decays.append(None)
    elif decay == 1.0:
      slow.append(index)
    elif decay in group_decays:
      groups[group_decays.index(decay)].append(index)
    else:
      groups.append([index])
      group_decays.append(float(decay))
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


def _check_layout(found: Any, expected: SubweightLayout) -> None:
  """Raises ``ValueError`` naming what differs between two layouts."""
  if found == expected:
    return
  if not isinstance(found, SubweightLayout):
    raise ValueError(
        f'The state holds a {type(found).__name__} where a SubweightLayout '
        'belongs: it was not created by multiscale().')
  differences = '; '.join(
      f'{name}: state {getattr(found, name)}, transformation '
      f'{getattr(expected, name)}'
      for name in SubweightLayout._fields
      if getattr(found, name) != getattr(expected, name))
  raise ValueError(
      'The state was created by a differently configured multiscale '
      f'learner ({differences}). Its subweights would be read with the '
      'wrong decays; initialise a new state or restore it with the '
      'optimizer that created it.')


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
    leak, _ = precision.leak(decay)
    coefficients.append(
        (_sum_entries(learning_rate_entries, group), leak, decay))
  return slow_rate, coefficients



def _leafwise_update(
    update: jax.Array,
    stored: Sequence[jax.Array],
    slow_rate: Any,
    coefficients: Sequence[tuple[Any, Any, Any]],
    read_after_update: Sequence[bool],
    learning_rate: Any,
    scale_steps: Sequence[scaled_storage.ScaleStep] | None,
) -> tuple[jax.Array, list[jax.Array]]:
  """One step of eq. (1) for one leaf: its increment and new stored leaves.

  Args:
    update: the incoming update :math:`u` of this leaf.
    stored: this leaf of every stored subweight.
    slow_rate: the summed rate of the implied (fixed decay 1) entries.
    coefficients: per stored subweight, (rate, 1 - decay, decay).
    read_after_update: per stored subweight, whether the increment may be
      read from the updated value.
    learning_rate: :math:`s_t`, the step's multiplier of every rate.
    scale_steps: per stored subweight, its scale's step, or ``None`` for a
      state without scales.
  """
  if not subweight_state.is_trainable(
      update.dtype, *(leaf.dtype for leaf in stored)):
    # Integer and boolean leaves (counters, masks) are left alone.
    return jnp.zeros_like(update), list(stored)
  compute_dtype = precision.compute_dtype(
      update.dtype, *(leaf.dtype for leaf in stored))
  # Rates and decays are real, also for complex params.
  real_dtype = jnp.finfo(compute_dtype).dtype
  update_c = update.astype(compute_dtype)
  learning_rate_c = jnp.asarray(learning_rate, real_dtype)
  # Coefficient of the current update direction in the increment.
  update_coefficient = -learning_rate_c * jnp.asarray(slow_rate, real_dtype)
  increment = None
  new_stored = []
  for index, (leaf, (rate, leak, decay), fast_form) in enumerate(
      zip(stored, coefficients, read_after_update)):
    rate_c = learning_rate_c * jnp.asarray(rate, real_dtype)
    if scale_steps is not None and scaled_storage.is_scaled(leaf.dtype):
      new, term = scaled_storage.update_leaf(
          leaf, rate_c, update_c, scale_steps[index])
    else:
      leak_c = jnp.asarray(leak, real_dtype)
      old = leaf.astype(compute_dtype)
      # omega <- gamma omega - alpha u, written as omega - (1 - gamma) omega
      # so that the decay keeps the precision of 1 - gamma.
      new = precision.round_to_storage(
          old - leak_c * old - rate_c * update_c, leaf.dtype)
      if fast_form and leaf.dtype == compute_dtype:
        # old = (new + alpha u) / gamma, so new - old is read from `new`
        # alone (no copy of the old state).
        decay_c = jnp.asarray(decay, real_dtype)
        term = (-leak_c / decay_c) * new
        update_coefficient = update_coefficient - rate_c / decay_c
      else:
        # The change of the value actually stored (exact for any decay).
        term = new.astype(compute_dtype) - old
    new_stored.append(new)
    increment = term if increment is None else increment + term
  direct = update_coefficient * update_c
  increment = direct if increment is None else increment + direct
  return increment.astype(update.dtype), new_stored


def _init_state(
    params: optax.Params,
    layout: SubweightLayout,
    initial_subweights: Sequence[optax.Params | None] | None,
    state_dtype: DTypeLike | None,
    scaled_subweights: bool,
) -> MultiscaleState:
  """The state of :func:`multiscale` at ``init``: one tree per stored group."""
  given = [None] * layout.num_entries if initial_subweights is None else (
      initial_subweights)
  for index, value in enumerate(given):
    if value is not None:
      subweight_state.check_params_shaped(
          value, params, f'initial_subweights[{index}]')
  stored = []
  for group in layout.stored_groups:
    values = [given[i] for i in group if given[i] is not None]
    stored.append(jax.tree.map(
        lambda param, *leaves: subweight_state.initial_leaf(
            param, leaves, state_dtype),
        params, *values))
  requested = [] if state_dtype is None else [state_dtype]
  needs_scales = scaled_storage.needs_scales(
      [leaf.dtype for leaf in jax.tree.leaves(stored)] + requested,
      scaled_subweights)
  scales = tuple(
      scaled_storage.initial_scale() for _ in stored
  ) if needs_scales else ()
  return MultiscaleState(
      count=jnp.zeros([], jnp.int32), subweights=tuple(stored),
      layout=layout, scales=scales)


def multiscale(
    learning_rates: Sequence[float] | ArrayLike,
    decays: Sequence[float] | ArrayLike,
    *,
    learning_rate: optax.ScalarOrSchedule = 1.0,
    initial_subweights: Sequence[optax.Params | None] | None = None,
    state_dtype: DTypeLike | None = None,
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

  Which subweights are stored is decided at construction:

  * **Fixed decays** (Python floats, lists, NumPy arrays): subweights with
    :math:`\gamma_i = 1` are implied by the params and are not stored, and
    entries with equal decays are merged. State memory is (number of
    distinct decays :math:`\ne 1`) :math:`\times` params.
  * **Decays given as JAX arrays** (as ``optax.inject_hyperparams`` passes
    them, with an eager or a jitted ``init``, or from a schedule of the
    decays): they may change after ``init``, so every entry is stored, and
    the new decays are honoured exactly at every step, :math:`\gamma_i = 0`
    and :math:`\gamma_i = 1` included. State memory is ``len(decays)``
    :math:`\times` params. ``optax.inject_hyperparams`` converts the decays
    to the params' dtype: in float32, 0.99999999 (a timescale of
    :math:`10^8` steps) becomes exactly 1, i.e. permanent; with bfloat16
    params every decay above 0.998 does. To keep decays
    fixed (merged layout, float64 values) while injecting the learning
    rates, pass ``static_args=('decays',)`` to ``optax.inject_hyperparams``.

  The state records this layout and every update checks it, so a state
  (checkpoint, pickle, ``flax.serialization``) from a differently
  configured learner raises ``ValueError`` instead of being read with the
  wrong decays.

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
    initial_subweights: optional, one entry per subweight: a pytree with
      the params' structure and shapes holding its initial value (checked at
      ``init``), or ``None`` for zero. Entries with a fixed decay of 1 must
      be ``None`` (they are implied by the params, which must equal the sum
      of all subweights). The state holds copies, so donating the state
      never deletes these arrays. Use it to continue a momentum or
      Benna–Fusi state exactly.
    state_dtype: dtype in which the stored subweights live: ``None`` (each
      param's dtype), float16, bfloat16, float32, float64, or for complex
      params complex64 or complex128 (a real ``state_dtype`` for complex
      params is a ``TypeError`` at ``init``: it would drop the imaginary
      part). float8 and narrower formats are refused: each step's rounding
      would lose every learning signal below an eighth of a subweight.
      Arithmetic runs in at least float32 whatever this is (complex for
      complex params; rates and decays stay real); updates keep the
      incoming dtype, and every narrower store is an explicit rounding
      (``jax.lax.reduce_precision``), so results agree across CPU, GPU and
      TPU. Storage narrower than float32 keeps each subweight's decay in a
      float32 scale (see :class:`MultiscaleState`), so a decay such as
      0.9999 still acts at its rate; on a small MLP with timescales from
      10 to :math:`10^4` steps the weights after :math:`10^4` steps were
      within 3.7% (bfloat16) and 0.21% (float16) relative L2 error of the
      float32-state run. Each step still rounds the stored subweight, so
      learning signals below half an ulp of a subweight are lost, and
      subweights that cancel (negative learning rates, as in momentum)
      amplify that rounding: keep such learners in float32. Integer and
      boolean params (counters, masks) are left alone, as by optax's
      optimizers for their zero gradients: their increment is zero and
      their stored subweights are zeros of their own dtype.
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
    TypeError: an argument has the wrong type (at construction), or
      ``state_dtype`` and a param disagree on being complex (at ``init``).
    ValueError: lengths differ, a vector is empty or not 1-D, a value is not
      finite, or a decay lies outside :math:`(-1, 1]` (at construction);
      ``initial_subweights`` differ from the params in structure or shape
      (at ``init``); the state was made by a differently configured learner
      (at ``update``).

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
  checks.check_state_dtype(state_dtype, 'state_dtype')
  scaled_subweights = checks.check_bool(
      scaled_subweights, 'scaled_subweights')
  checks.check_tree_per_entry(
      initial_subweights, 'initial_subweights', len(decay_entries),
      'subweight', 'decays')
  layout = _make_layout(
      decay_entries, _fixed_entries(decays, len(decay_entries)))
  if initial_subweights is not None:
    for index in layout.slow_entries:
      if initial_subweights[index] is not None:
        raise ValueError(
            f'`initial_subweights[{index}]` must be None: its decay is 1, so '
            'it is implied by the params (set the params to the sum of all '
            'subweights instead).')

  # Construction-time constants (float64 where concrete).
  slow_rate, coefficients = _group_coefficients(
      learning_rate_entries, decay_entries, layout)

  def init_fn(params: optax.Params) -> MultiscaleState:
    return _init_state(
        params, layout, initial_subweights, state_dtype, scaled_subweights)

  def update_fn(
      updates: optax.Updates,
      state: MultiscaleState,
      params: optax.Params | None = None,
      **extra_args: Any,
  ) -> tuple[optax.Updates, MultiscaleState]:
    del params, extra_args
    _check_layout(state.layout, layout)
    step_rate = (
        learning_rate(state.count) if callable(learning_rate)
        else learning_rate)
    if state.scales:
      advanced = [
          scaled_storage.advance_scale(old_scale, leak)
          for old_scale, (_, leak, _) in zip(state.scales, coefficients)]
      new_scales = tuple(new_scale for new_scale, _ in advanced)
      scale_steps = [step for _, step in advanced]
    else:
      new_scales, scale_steps = (), None
    increments, new_subweights = subweight_state.map_leaves(
        lambda update, stored: _leafwise_update(
            update, stored, slow_rate, coefficients,
            layout.read_after_update, step_rate, scale_steps),
        updates, state.subweights)
    new_state = MultiscaleState(
        count=jnp.asarray(optax.safe_increment(state.count)),
        subweights=new_subweights,
        layout=layout,
        scales=new_scales,
    )
    return increments, new_state

  # optax's protocols take any OptState (a pytree of arrays and numbers);
  # these functions take and return their own state, whose static layout
  # holds None entries that are no OptState to the type checker.
  return optax.GradientTransformationExtraArgs(
      cast(optax.TransformInitFn, init_fn),
      cast(optax.TransformUpdateExtraArgsFn, update_fn))


def fast_weights(
    slow_learning_rate: float,
    fast_learning_rate: float,
    fast_decay: float,
    *,
    learning_rate: optax.ScalarOrSchedule = 1.0,
    state_dtype: DTypeLike | None = None,
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


def get_subweights(
    params: optax.Params, opt_state: optax.OptState
) -> MultiscaleSubweights:
  r"""All subweights of a running multiscale learner, the slow one included.

  The stored subweights are read from the state; the non-decaying part is
  implied by the params:

  .. math::

    \omega_{slow} = w - \sum_{i \text{ stored}} \omega_i .

  The values sum to ``params`` (up to rounding), so slow and fast knowledge
  can be plotted as in the paper's Figure 1.

  Under ``optax.masked`` (or ``optax.multi_transform``, whose labels are
  masks), the learner sees only some leaves: every returned pytree keeps
  the params' structure and holds ``optax.MaskedNode()`` at the other
  leaves, as the learner's own state does. ``optax.multi_transform`` may
  hold several multiscale learners, one per label, with different decays;
  pass the state of the one you want, e.g.
  ``get_subweights(params, opt_state.inner_states['fast'])``.

  Args:
    params: the current params.
    opt_state: the state of :func:`multiscale`, or of any optax chain or
      wrapper that contains exactly one :class:`MultiscaleState`.

  Returns:
    A :class:`MultiscaleSubweights` with the non-decaying part first (decay
    1.0), then one entry per stored subweight.

  Raises:
    ValueError: ``opt_state`` holds no or several multiscale states.

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
  state = subweight_state.find_state(opt_state, MultiscaleState)
  scales = state.scales or (None,) * len(state.subweights)

  def value_of(leaf: jax.Array, scale: Any) -> jax.Array:
    """A stored leaf's subweight in its compute dtype."""
    if scale is not None and scaled_storage.is_scaled(leaf.dtype):
      return scaled_storage.value_of(leaf, scale)
    return leaf.astype(precision.compute_dtype(leaf.dtype))

  def parts(param: Any, *stored: Any) -> tuple[Any, ...]:
    if any(subweight_state.is_masked(leaf) for leaf in (param, *stored)):
      return (optax.MaskedNode(),) * (1 + len(stored))
    param = jnp.asarray(param)
    if not subweight_state.is_trainable(
        param.dtype, *(leaf.dtype for leaf in stored)):
      return (param, *stored)
    values = [value_of(leaf, scale) for leaf, scale in zip(stored, scales)]
    return (subweight_state.remainder(param, values), *(
        value.astype(leaf.dtype) for value, leaf in zip(values, stored)))

  # The learner's state decides which leaves it sees: masked ones are
  # MaskedNode there, and the params hold arrays in their place.
  structure: treedefs.TreeDef
  if state.subweights:
    structure = jax.tree.structure(
        state.subweights[0], is_leaf=subweight_state.is_masked)
    param_leaves = structure.flatten_up_to(params)
    stored_leaves = [
        structure.flatten_up_to(tree) for tree in state.subweights]
  else:
    param_leaves, structure = jax.tree.flatten(params)
    stored_leaves = []
  per_leaf = [
      parts(param, *(leaves[position] for leaves in stored_leaves))
      for position, param in enumerate(param_leaves)]
  values = tuple(
      structure.unflatten([leaf_parts[index] for leaf_parts in per_leaf])
      for index in range(1 + len(state.subweights)))
  return MultiscaleSubweights(
      decays=(1.0, *state.layout.group_decays), values=values)
