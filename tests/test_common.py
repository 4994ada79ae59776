"""One parametrized suite that every public transformation must pass.

Modelled on optax's ``contrib/_common_test.py`` and ``_src/alias_test.py``:
each check below runs over every entry of ``CASES`` (the transformations of
Jones, `Learning at Multiple Timescales <https://arxiv.org/abs/2211.10311>`_,
NeurIPS 2022, alone and chained after ``optax.scale_by_adam``). A new public
transformation joins the suite by adding one ``Case`` to the table.

Tolerances. Two runs that do the same arithmetic in a different order (jit
against eager, an injected against a plain hyperparameter, a merged against
a separate subweight) differ per step by at most a few roundings of each of
the terms they add, and the recursions here do not amplify a perturbation
(every decay has :math:`|\\gamma| \\le 1`; the increment read from the
updated subweight divides by :math:`|\\gamma| \\ge 1/2`, at most doubling
it). ``_rounding_bound`` therefore allows, per step, ``_ROUNDINGS``
roundings in the compute dtype relative to the largest magnitude involved,
plus, for every stored leaf, two units of its dtype's epsilon relative to
its magnitude: a value that lands near a rounding tie of a narrow state may
round either way, and the increment reads the old and the new stored
value.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from collections.abc import Callable
from collections.abc import Mapping
from typing import Any

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import multiscale_optax as mso

# The keyword through which `multiscale` and `fast_weights` take their
# optax.ScalarOrSchedule. When it is renamed, this is the only line to change.
MULTISCALE_RATE = 'learning_rate'

# Roundings per step allowed between two orderings of the same arithmetic: an
# update adds a handful of products per stored subweight (at most 4 here) and
# the chains add Adam's few operations; 64 covers them with room to spare.
_ROUNDINGS = 64

_CAPACITIES, _CONDUCTANCES = mso.benna_fusi_defaults(3)


def _chained(first: Callable[[], optax.GradientTransformation],
             factory: Callable[..., optax.GradientTransformation]):
  """``factory`` chained after ``first()``, with ``factory``'s signature.

  ``functools.wraps`` keeps the signature, so that ``inject_hyperparams``
  injects the same hyperparameters as for ``factory`` alone.
  """

  @functools.wraps(factory)
  def chained(*args, **kwargs) -> optax.GradientTransformation:
    return optax.chain(first(), factory(*args, **kwargs))

  chained.__name__ = f'{first.__name__}_then_{factory.__name__}'
  return chained


@dataclasses.dataclass(frozen=True)
class Case:
  """One transformation under test.

  Attributes:
    name: the test id.
    factory: the public function (or a chain of it), called as
      ``factory(**hyperparams)``; ``inject_hyperparams`` wraps it.
    hyperparams: the keyword arguments of the configuration under test.
    rate_name: the hyperparameter that takes an ``optax.ScalarOrSchedule``,
      or ``None``.
    state_dtype_name: the keyword for an explicit state dtype, or ``None``.
    stored_field: the state field holding params-shaped pytrees, or
      ``None`` for a transformation without params-shaped state.
    static_args: hyperparameters ``inject_hyperparams`` must keep static.
    extra_args: keyword arguments ``update`` needs (arrays in float64, or
      functions of the params returning pytrees of them; cast to the
      gradients' dtype).
    runtime_changes: hyperparameters to change at run time, with new
      values that keep the state's layout.
    decay_changes: decays to change at run time (checked against eq. 1).
    eq1: maps ``hyperparams`` to ``(learning_rates, decays, rate)`` of eq.
      (1), for transformations whose input is the gradient itself.
    init_reads_params: ``init`` starts the state at the params' values, so
      it needs values, not only shapes.
    no_convergence: why a quadratic is not a meaningful target, or
      ``None``.
  """

  name: str
  factory: Callable[..., optax.GradientTransformation]
  hyperparams: Mapping[str, Any]
  rate_name: str | None = None
  state_dtype_name: str | None = None
  stored_field: str | None = None
  static_args: tuple[str, ...] = ()
  extra_args: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  runtime_changes: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  decay_changes: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  eq1: Callable[[Mapping[str, Any]], tuple] | None = None
  init_reads_params: bool = False
  no_convergence: str | None = None

  def make(self, **overrides: Any) -> optax.GradientTransformation:
    return self.factory(**{**self.hyperparams, **overrides})

  def inject(self, **overrides: Any) -> optax.GradientTransformation:
    return optax.inject_hyperparams(
        self.factory, static_args=self.static_args)(
            **{**self.hyperparams, **overrides})

  def update_kwargs(self, dtype: Any, params: Any = None) -> dict[str, Any]:
    """The extra arguments for ``params`` (default ``_params(dtype)``)."""
    params = _params(dtype) if params is None else params
    return {
        name: jax.tree.map(
            lambda leaf: jnp.asarray(leaf, dtype),
            value(params) if callable(value) else value)
        for name, value in self.extra_args.items()}

  def __str__(self) -> str:
    return self.name


def _multiscale_eq1(hyperparams):
  return (hyperparams['learning_rates'], hyperparams['decays'],
          hyperparams[MULTISCALE_RATE])


def _fast_weights_eq1(hyperparams):
  return ([hyperparams['slow_learning_rate'],
           hyperparams['fast_learning_rate']],
          [1.0, hyperparams['fast_decay']], hyperparams[MULTISCALE_RATE])


_MULTISCALE = dict(
    rate_name=MULTISCALE_RATE, state_dtype_name='state_dtype',
    stored_field='subweights', eq1=_multiscale_eq1)
_BENNA_FUSI = dict(
    rate_name='learning_rate', state_dtype_name='state_dtype',
    stored_field='chain', init_reads_params=True)
_INPUTS = {'inputs': np.asarray([0.5, -1.5, 2.0])}


def _jacobian(params):
  """A fixed Jacobian shaped like ``params`` for the Bayesian learner (its
  grads are then the gradient term -r J e of the observation)."""
  return jax.tree.map(
      lambda leaf: 0.5 * np.cos(np.arange(np.size(leaf)) + 1.0).reshape(
          np.shape(leaf)), params)

CASES = (
    Case('multiscale_merged_decays', mso.multiscale, dict(
        learning_rates=np.asarray([0.1, 0.2, 0.05, 0.1]),
        decays=np.asarray([1.0, 0.9, 0.9, 0.5]), **{MULTISCALE_RATE: 0.5}),
         runtime_changes={'learning_rates': np.asarray([0.2, 0.1, 0.05, 0.3]),
                          MULTISCALE_RATE: 0.25},
         decay_changes={'decays': np.asarray([1.0, 0.9, 0.7, 0.5])},
         **_MULTISCALE),
    Case('multiscale_negative_rate', mso.multiscale, dict(
        learning_rates=np.asarray([0.3, -0.1]), decays=np.asarray([1.0, 0.8]),
        **{MULTISCALE_RATE: 1.0}),
         runtime_changes={'learning_rates': np.asarray([0.2, -0.15])},
         decay_changes={'decays': np.asarray([1.0, 0.0])}, **_MULTISCALE),
    Case('multiscale_zero_decay', mso.multiscale, dict(
        learning_rates=np.asarray([0.1, 0.3]), decays=np.asarray([1.0, 0.0]),
        **{MULTISCALE_RATE: 1.0}),
         runtime_changes={MULTISCALE_RATE: 2.0},
         decay_changes={'decays': np.asarray([1.0, 0.6])}, **_MULTISCALE),
    Case('multiscale_bfloat16_state', mso.multiscale, dict(
        learning_rates=np.asarray([0.1, 0.2, 0.05]),
        decays=np.asarray([1.0, 0.9, 0.99]), state_dtype=jnp.bfloat16,
        **{MULTISCALE_RATE: 1.0}),
         static_args=('state_dtype',),
         runtime_changes={'learning_rates': np.asarray([0.4, 0.6, 0.3])},
         **_MULTISCALE),
    Case('fast_weights', mso.fast_weights, dict(
        slow_learning_rate=0.1, fast_learning_rate=0.5, fast_decay=0.9,
        **{MULTISCALE_RATE: 0.5}),
         runtime_changes={'fast_learning_rate': -0.05},
         decay_changes={'fast_decay': 0.5},
         **{**_MULTISCALE, 'eq1': _fast_weights_eq1}),
    Case('benna_fusi', mso.benna_fusi, dict(
        capacities=_CAPACITIES, conductances=_CONDUCTANCES,
        learning_rate=0.5),
         runtime_changes={'learning_rate': 0.2}, **_BENNA_FUSI),
    Case('benna_fusi_leak', mso.benna_fusi, dict(
        capacities=_CAPACITIES, conductances=_CONDUCTANCES,
        learning_rate=0.5, leak=0.01),
         runtime_changes={'learning_rate': 0.2},
         no_convergence=(
             'the leak pulls every weight towards 0, so the fixed point is '
             'not the minimiser'),
         **_BENNA_FUSI),
    Case('scale_by_input_norm', mso.scale_by_input_norm, {},
         extra_args=_INPUTS,
         no_convergence=(
             'a preconditioner without a learning rate: its output is the '
             'rescaled gradient, not a descent step')),
    Case('adam_then_multiscale',
         _chained(optax.scale_by_adam, mso.multiscale), dict(
             learning_rates=np.asarray([0.05, 0.1, -0.02]),
             decays=np.asarray([1.0, 0.9, 0.5]), **{MULTISCALE_RATE: 0.5}),
         runtime_changes={MULTISCALE_RATE: 0.1},
         **{**_MULTISCALE, 'eq1': None}),
    Case('adam_then_benna_fusi',
         _chained(optax.scale_by_adam, mso.benna_fusi), dict(
             capacities=_CAPACITIES, conductances=_CONDUCTANCES,
             learning_rate=0.05),
         runtime_changes={'learning_rate': 0.02}, **_BENNA_FUSI),
    Case('input_norm_then_multiscale',
         _chained(mso.scale_by_input_norm, mso.multiscale), dict(
             learning_rates=np.asarray([0.1, 0.2]),
             decays=np.asarray([1.0, 0.9]), **{MULTISCALE_RATE: 0.5}),
         extra_args=_INPUTS, runtime_changes={MULTISCALE_RATE: 0.25},
         **{**_MULTISCALE, 'eq1': None}),
    Case('bayesian_multiscale', mso.bayesian_multiscale, dict(
        decays=np.asarray([1.0, 0.9]), process_variances=np.asarray(
            [1e-3, 0.019]), noise_variance=1.0,
        initial_variances=(1.0, 0.1)),
         state_dtype_name='state_dtype', stored_field='means',
         static_args=('initial_variances',),
         extra_args={'jacobian': _jacobian},
         runtime_changes={'noise_variance': 0.5,
                          'process_variances': np.asarray([2e-3, 0.01])}),
    Case('bayesian_multiscale_rank2_learned_prior',
         mso.bayesian_multiscale, dict(
             decays=np.asarray([1.0, 0.9]), process_variances=np.asarray(
                 [1e-3, 0.019]), noise_variance=1.0,
             initial_variances=(1.0, 0.1), rank=2, learn_prior=True,
             prior_learning_rate=0.05),
         rate_name='prior_learning_rate', state_dtype_name='state_dtype',
         stored_field='means', static_args=('initial_variances', 'rank'),
         extra_args={'jacobian': _jacobian, 'residual': np.asarray(0.7)},
         runtime_changes={'noise_variance': 0.5,
                          'prior_learning_rate': 0.1},
         no_convergence=(
             'the residual is given, so the update does not follow the '
             'gradient of a loss')),
)

_WITH_RATE = [case for case in CASES if case.rate_name is not None]
_WITH_STATE_DTYPE = [
    case for case in CASES if case.state_dtype_name is not None]


def _params(dtype: Any = jnp.float32) -> dict[str, Any]:
  """A matrix, a vector, a scalar, and the empty nodes optax allows."""
  return {
      'w': jnp.linspace(-1.0, 1.0, 6, dtype=dtype).reshape(3, 2),
      'b': jnp.asarray([0.5, -0.25], dtype),
      's': jnp.asarray(0.3, dtype),
      'empty': {},
      'none': None,
  }


def _gradients(steps: int, dtype: Any = jnp.float32, seed: int = 0):
  """Reproducible gradients for ``_params``, one pytree per step."""
  rng = np.random.default_rng(seed)
  return [
      jax.tree.map(
          lambda leaf: jnp.asarray(rng.normal(size=leaf.shape), dtype),
          _params())
      for _ in range(steps)]


def _run(optimizer, params, gradients, update_kwargs, state=None,
         update=None):
  """Applies ``optimizer`` to ``gradients``; returns params after each step.

  Returns:
    ``(params_per_step, final_state)``.
  """
  update = update or optimizer.update
  state = optimizer.init(params) if state is None else state
  history = []
  for gradient in gradients:
    updates, state = update(gradient, state, params, **update_kwargs)
    params = optax.apply_updates(params, updates)
    history.append(params)
  return history, state


def _magnitude(*trees) -> float:
  """1 + the largest absolute floating value in ``trees``."""
  return 1.0 + max(
      _largest_finite(leaf) for leaf in jax.tree.leaves(trees)
      if jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.floating))


def _largest_finite(leaf) -> float:
  """The largest finite magnitude in ``leaf`` (a state may hold a NaN
  marker, e.g. the innovation variance before the first observation)."""
  values = np.abs(np.asarray(leaf, np.float64))
  return float(np.max(values[np.isfinite(values)], initial=0.0))


def _storage_rounding(state) -> float:
  """Sum over the floating leaves of ``state`` of epsilon times magnitude.

  A stored value whose exact value changes by a few roundings may round to
  the neighbouring representable number: it moves by at most this much.
  """
  return sum(
      float(jnp.finfo(leaf.dtype).eps) * _largest_finite(leaf)
      for leaf in jax.tree.leaves(state)
      if jnp.issubdtype(leaf.dtype, jnp.floating))


def _rounding_bound(steps: int, compute_dtype: Any, state, magnitude: float):
  """The module docstring's bound on two orderings of the same arithmetic."""
  return steps * (
      _ROUNDINGS * float(jnp.finfo(compute_dtype).eps) * magnitude
      + 2.0 * _storage_rounding(state))


def _assert_trees_close(actual, expected, atol: float) -> None:
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for got, want in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    np.testing.assert_allclose(
        np.asarray(got, np.float64), np.asarray(want, np.float64), rtol=0,
        atol=atol)


def _types(tree) -> list[tuple[tuple[int, ...], Any, bool]]:
  """Shape, dtype and weak type of each leaf (arrays or abstract values)."""
  return [
      (tuple(leaf.shape), jnp.dtype(leaf.dtype), bool(leaf.weak_type))
      for leaf in jax.tree.leaves(tree)]


def _shapes_and_dtypes(tree) -> list[tuple[tuple[int, ...], Any]]:
  return [(tuple(leaf.shape), jnp.dtype(leaf.dtype))
          for leaf in jax.tree.leaves(tree)]


def _stored(case: Case, state):
  return optax.tree_utils.tree_get(state, case.stored_field)


parametrize_cases = pytest.mark.parametrize('case', CASES, ids=str)


# --- Extra arguments ------------------------------------------------------


@parametrize_cases
def test_accepts_extra_args_alone_and_in_a_chain(case):
  optimizer = case.make()
  assert isinstance(optimizer, optax.GradientTransformationExtraArgs)
  params, (gradient,) = _params(), _gradients(1)
  kwargs = case.update_kwargs(jnp.float32)
  expected, _ = optimizer.update(
      gradient, optimizer.init(params), params, **kwargs)
  alone, _ = optimizer.update(
      gradient, optimizer.init(params), params, some_unused_kwarg=1, **kwargs)
  chain = optax.chain(optimizer, optax.identity())
  chained, _ = jax.jit(chain.update)(
      gradient, chain.init(params), params, some_unused_kwarg=1, **kwargs)
  _assert_trees_close(alone, expected, atol=0.0)
  bound = _rounding_bound(1, jnp.float32, optimizer.init(params),
                          _magnitude(expected))
  _assert_trees_close(chained, expected, atol=bound)


# --- inject_hyperparams ---------------------------------------------------


@parametrize_cases
@pytest.mark.parametrize('jit_init', [False, True], ids=['eager', 'jit'])
def test_inject_hyperparams_gives_the_plain_results(case, jit_init):
  steps = 4
  with jax.enable_x64(True):
    params, kwargs = _params(jnp.float64), case.update_kwargs(jnp.float64)
    gradients = _gradients(steps, jnp.float64)
    injected = case.inject()
    init = jax.jit(injected.init) if jit_init else injected.init
    got, injected_state = _run(
        injected, params, gradients, kwargs, state=init(params),
        update=jax.jit(injected.update))
    expected, plain_state = _run(case.make(), params, gradients, kwargs)
    bound = _rounding_bound(
        steps, jnp.float64, plain_state, _magnitude(expected, plain_state))
    _assert_trees_close(got, expected, atol=bound)
    # A traced init may lay the state out differently (every entry stored);
    # where the layouts agree, so must the states.
    inner = injected_state.inner_state
    if jax.tree.structure(inner) == jax.tree.structure(plain_state):
      _assert_trees_close(inner, plain_state, atol=bound)


def _with_hyperparams(state, changes: Mapping[str, Any]):
  hyperparams = dict(state.hyperparams)
  for name, value in changes.items():
    hyperparams[name] = jnp.asarray(value, hyperparams[name].dtype)
  return state._replace(hyperparams=hyperparams)


@pytest.mark.parametrize(
    'case', [case for case in CASES if case.runtime_changes], ids=str)
def test_hyperparameters_changed_at_run_time_take_effect(case):
  before, after = 2, 2
  with jax.enable_x64(True):
    params, kwargs = _params(jnp.float64), case.update_kwargs(jnp.float64)
    gradients = _gradients(before + after, jnp.float64)
    injected = case.inject()
    update = jax.jit(injected.update)
    first, state = _run(injected, params, gradients[:before], kwargs,
                        update=update)
    state = _with_hyperparams(state, case.runtime_changes)
    got, _ = _run(injected, first[-1], gradients[before:], kwargs,
                  state=state, update=update)
    # The plain transformation with the new values, continued from the
    # state of the old ones (the changes keep the layout).
    old, changed = case.make(), case.make(**case.runtime_changes)
    reference, plain_state = _run(old, params, gradients[:before], kwargs)
    expected, _ = _run(changed, reference[-1], gradients[before:], kwargs,
                       state=plain_state)
    unchanged, _ = _run(old, reference[-1], gradients[before:], kwargs,
                        state=plain_state)
    bound = _rounding_bound(before + after, jnp.float64, plain_state,
                            _magnitude(expected, plain_state))
    _assert_trees_close(got, expected, atol=bound)
    # The changes must matter, or the check above proves nothing.
    assert max(
        float(np.max(np.abs(a - b))) for a, b in zip(
            jax.tree.leaves(expected), jax.tree.leaves(unchanged))) > (
                2 * bound)


def _eq1_weights(schedule, params, gradients):
  """Eq. (1) literally, in float64 NumPy, with per-step hyperparameters.

  Args:
    schedule: per step, ``(learning_rates, decays, rate)``.
    params: the initial params (the non-decaying part; other subweights
      start at zero).
    gradients: one pytree per step.

  Returns:
    The params after each step.
  """
  leaves, treedef = jax.tree.flatten(params)
  leaves = [np.asarray(leaf, np.float64) for leaf in leaves]
  num_entries = len(schedule[0][0])
  subweights = [[np.zeros_like(leaf) for leaf in leaves]
                for _ in range(num_entries)]
  base = leaves
  history = []
  for (rates, decays, rate), gradient in zip(schedule, gradients):
    gradient_leaves = [np.asarray(g, np.float64)
                       for g in jax.tree.leaves(gradient)]
    for entry in range(num_entries):
      subweights[entry] = [
          decays[entry] * omega - rate * rates[entry] * g
          for omega, g in zip(subweights[entry], gradient_leaves)]
    history.append(treedef.unflatten([
        base_leaf + sum(sub[i] for sub in subweights)
        for i, base_leaf in enumerate(base)]))
  return history


@pytest.mark.parametrize(
    'case', [case for case in CASES if case.decay_changes], ids=str)
@pytest.mark.parametrize('jit_init', [False, True], ids=['eager', 'jit'])
def test_decays_changed_at_run_time_follow_eq1(case, jit_init):
  before, after = 3, 3
  with jax.enable_x64(True):
    params = _params(jnp.float64)
    gradients = _gradients(before + after, jnp.float64)
    injected = case.inject()
    init = jax.jit(injected.init) if jit_init else injected.init
    update = jax.jit(injected.update)
    first, state = _run(injected, params, gradients[:before], {},
                        state=init(params), update=update)
    state = _with_hyperparams(state, case.decay_changes)
    got, state = _run(injected, first[-1], gradients[before:], {},
                      state=state, update=update)
    old = case.eq1(case.hyperparams)
    new = case.eq1({**case.hyperparams, **case.decay_changes})
    expected = _eq1_weights(
        [old] * before + [new] * after, params, gradients)
    bound = _rounding_bound(before + after, jnp.float64, state.inner_state,
                            _magnitude(expected))
    _assert_trees_close(got, expected[before:], atol=bound)


# --- dtypes ---------------------------------------------------------------


# Dtypes and shapes are decided when an update is traced: jax.eval_shape
# gives the types jax.jit would, without compiling.


@parametrize_cases
@pytest.mark.parametrize(
    'dtype', [jnp.float32, jnp.bfloat16, jnp.float64],
    ids=['float32', 'bfloat16', 'float64'])
def test_updates_and_state_keep_the_param_dtype(case, dtype):
  with jax.enable_x64(dtype == jnp.float64):
    optimizer = case.make(**(
        {case.state_dtype_name: None} if case.state_dtype_name else {}))
    params, (gradient,) = _params(dtype), _gradients(1, dtype)
    state = optimizer.init(params)
    updates, new_state = jax.eval_shape(
        functools.partial(optimizer.update, **case.update_kwargs(dtype)),
        gradient, state, params)
    assert _shapes_and_dtypes(updates) == _shapes_and_dtypes(gradient)
    new_params = jax.eval_shape(optax.apply_updates, params, updates)
    assert _shapes_and_dtypes(new_params) == _shapes_and_dtypes(params)
    if case.stored_field is not None:
      for stored in (_stored(case, state), _stored(case, new_state)):
        leaves = jax.tree.leaves(stored)
        assert leaves and all(leaf.dtype == dtype for leaf in leaves)


@pytest.mark.parametrize('case', _WITH_STATE_DTYPE, ids=str)
@pytest.mark.parametrize(
    'state_dtype', [jnp.bfloat16, jnp.float32, jnp.float64],
    ids=['bfloat16', 'float32', 'float64'])
@pytest.mark.parametrize(
    'param_dtype', [jnp.float32, jnp.bfloat16], ids=['float32', 'bfloat16'])
def test_explicit_state_dtype(case, state_dtype, param_dtype):
  with jax.enable_x64(state_dtype == jnp.float64):
    optimizer = case.make(**{case.state_dtype_name: state_dtype})
    params, (gradient,) = _params(param_dtype), _gradients(1, param_dtype)
    state = optimizer.init(params)
    updates, new_state = jax.eval_shape(
        functools.partial(
            optimizer.update, **case.update_kwargs(param_dtype)),
        gradient, state, params)
    for stored in (_stored(case, state), _stored(case, new_state)):
      leaves = jax.tree.leaves(stored)
      assert leaves and all(leaf.dtype == state_dtype for leaf in leaves)
    assert _shapes_and_dtypes(updates) == _shapes_and_dtypes(gradient)


# --- Wrappers: MultiSteps, apply_if_finite --------------------------------


@parametrize_cases
def test_multi_steps_accumulates_then_applies_the_mean(case):
  every = 3
  with jax.enable_x64(True):
    optimizer = case.make()
    # optax casts the running mean to float32 unless told otherwise.
    accumulating = optax.MultiSteps(
        optimizer, every_k_schedule=every, accumulator_dtype=jnp.float64)
    params, kwargs = _params(jnp.float64), case.update_kwargs(jnp.float64)
    gradients = _gradients(every, jnp.float64)
    state = accumulating.init(params)
    update = jax.jit(accumulating.update)
    for gradient in gradients[:-1]:
      updates, state = update(gradient, state, params, **kwargs)
      for leaf in jax.tree.leaves(updates):
        np.testing.assert_array_equal(leaf, 0.0)
    updates, state = update(gradients[-1], state, params, **kwargs)
    mean = jax.tree.map(lambda *leaves: sum(leaves) / every, *gradients)
    expected, expected_state = optimizer.update(
        mean, optimizer.init(params), params, **kwargs)
    # The running mean differs from the sum / k by a few roundings.
    bound = _rounding_bound(
        1, jnp.float64, expected_state, _magnitude(expected, gradients))
    _assert_trees_close(updates, expected, atol=bound)
    _assert_trees_close(state.inner_opt_state, expected_state, atol=bound)


@parametrize_cases
def test_apply_if_finite_leaves_params_and_state_untouched_by_nan(case):
  optimizer = optax.apply_if_finite(case.make(), max_consecutive_errors=3)
  params, kwargs = _params(), case.update_kwargs(jnp.float32)
  first, second = _gradients(2)
  update = jax.jit(optimizer.update)
  _, state = update(first, optimizer.init(params), params, **kwargs)
  poisoned = dict(second, w=second['w'].at[1, 0].set(jnp.nan))
  updates, new_state = update(poisoned, state, params, **kwargs)
  new_params = optax.apply_updates(params, updates)
  for before, after in zip(
      jax.tree.leaves((params, state.inner_state)),
      jax.tree.leaves((new_params, new_state.inner_state))):
    np.testing.assert_array_equal(after, before)
  assert int(new_state.notfinite_count) == 1
  updates, _ = update(second, new_state, params, **kwargs)
  assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(updates))


# --- State structure under lax.cond and across updates ---------------------


@parametrize_cases
def test_state_types_are_stable_across_update_and_lax_cond(case):
  optimizer = case.make()
  params, kwargs = _params(), case.update_kwargs(jnp.float32)
  state = optimizer.init(params)

  def step(params, state, gradient, take):
    updates, new_state = optimizer.update(gradient, state, params, **kwargs)
    # Both branches must have the same types, or lax.cond raises.
    state = jax.lax.cond(take, lambda: new_state, lambda: state)
    return optax.apply_updates(params, updates), state

  initial_types = _types(state)
  for index, gradient in enumerate(_gradients(3)):
    params, state = jax.eval_shape(
        step, params, state, gradient, jnp.asarray(index % 2 == 0))
    assert jax.tree.structure(state) == jax.tree.structure(
        optimizer.init(_params()))
    assert _types(state) == initial_types


# --- Schedules ------------------------------------------------------------


@pytest.mark.parametrize('case', _WITH_RATE, ids=str)
def test_a_constant_schedule_equals_the_constant(case):
  steps = 3
  with jax.enable_x64(True):
    params, kwargs = _params(jnp.float64), case.update_kwargs(jnp.float64)
    gradients = _gradients(steps, jnp.float64)
    rate = case.hyperparams[case.rate_name]
    scheduled = case.make(**{
        case.rate_name: lambda count: jnp.full([], rate, jnp.float64)})
    got, state = _run(scheduled, params, gradients, kwargs,
                      update=jax.jit(scheduled.update))
    expected, _ = _run(case.make(), params, gradients, kwargs)
    bound = _rounding_bound(steps, jnp.float64, state,
                            _magnitude(expected, state))
    _assert_trees_close(got, expected, atol=bound)


@pytest.mark.parametrize('case', _WITH_RATE, ids=str)
def test_a_schedule_is_read_at_the_step_count(case):
  before, after = 2, 2
  with jax.enable_x64(True):
    params, kwargs = _params(jnp.float64), case.update_kwargs(jnp.float64)
    gradients = _gradients(before + after, jnp.float64)
    rate = case.hyperparams[case.rate_name]
    scheduled = case.make(**{
        case.rate_name: optax.piecewise_constant_schedule(
            rate, {before: 3.0})})
    got, _ = _run(scheduled, params, gradients, kwargs,
                  update=jax.jit(scheduled.update))
    reference, state = _run(case.make(), params, gradients[:before], kwargs)
    expected, _ = _run(
        case.make(**{case.rate_name: 3.0 * rate}), reference[-1],
        gradients[before:], kwargs, state=state)
    constant, _ = _run(case.make(), reference[-1], gradients[before:],
                       kwargs, state=state)
    bound = _rounding_bound(before + after, jnp.float64, state,
                            _magnitude(expected, state))
    _assert_trees_close(got, reference + expected, atol=bound)
    assert max(
        float(np.max(np.abs(a - b))) for a, b in zip(
            jax.tree.leaves(expected), jax.tree.leaves(constant))) > (
                2 * bound)


# --- Abstract init --------------------------------------------------------


@parametrize_cases
def test_abstract_init_with_eval_shape(case):
  optimizer = case.make()
  params = _params()
  concrete = optimizer.init(params)
  abstract = jax.eval_shape(optimizer.init, params)
  assert jax.tree.structure(abstract) == jax.tree.structure(concrete)
  assert _types(abstract) == _types(concrete)


@parametrize_cases
def test_init_on_shape_dtype_structs(case):
  if case.init_reads_params:
    pytest.skip('init starts the state at the params\' values, so it needs '
                'values: its abstract init is jax.eval_shape')
  optimizer = case.make()
  params = _params()
  shapes = jax.tree.map(
      lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype), params)
  from_shapes = optimizer.init(shapes)
  concrete = optimizer.init(params)
  assert jax.tree.structure(from_shapes) == jax.tree.structure(concrete)
  assert _shapes_and_dtypes(from_shapes) == _shapes_and_dtypes(concrete)


@parametrize_cases
def test_tree_map_params_reaches_the_params_shaped_state(case):
  # optax.tree_utils.tree_map_params finds the params-shaped parts of a
  # state by calling init on a placeholder (used, e.g., to build sharding
  # specs), so the state's tree structure must not depend on the params.
  optimizer = case.make()
  state = optimizer.init(_params())
  mapped = optax.tree_utils.tree_map_params(
      optimizer, lambda leaf: jnp.full_like(leaf, 7), state)
  assert jax.tree.structure(mapped) == jax.tree.structure(state)
  if case.stored_field is not None:
    for leaf in jax.tree.leaves(_stored(case, mapped)):
      np.testing.assert_array_equal(leaf, 7)
  for before, after in zip(jax.tree.leaves(state), jax.tree.leaves(mapped)):
    if not jnp.issubdtype(before.dtype, jnp.floating):  # step counters
      np.testing.assert_array_equal(after, before)


# --- jit ------------------------------------------------------------------


@parametrize_cases
def test_donated_jit_matches_eager_and_compiles_once(case):
  steps = 3
  optimizer = case.make()
  params, kwargs = _params(), case.update_kwargs(jnp.float32)
  gradients = _gradients(steps)
  traces = []

  def step(params, state, gradient):
    updates, state = optimizer.update(gradient, state, params, **kwargs)
    return optax.apply_updates(params, updates), state

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def jitted(params, state, gradient):
    traces.append(None)
    return step(params, state, gradient)

  eager_params, eager_state = params, optimizer.init(params)
  # Copies, since the jitted step donates (consumes) its params and state.
  jit_params, jit_state = jax.tree.map(jnp.copy, (params, eager_state))
  for gradient in gradients:
    with jax.disable_jit():
      eager_params, eager_state = step(eager_params, eager_state, gradient)
    jit_params, jit_state = jitted(jit_params, jit_state, gradient)
  assert len(traces) == 1  # the calls after the first reuse the compilation
  bound = _rounding_bound(steps, jnp.float32, eager_state,
                          _magnitude(eager_params, eager_state))
  _assert_trees_close(jit_params, eager_params, atol=bound)
  _assert_trees_close(jit_state, eager_state, atol=bound)


# --- Convergence ----------------------------------------------------------


@parametrize_cases
def test_converges_on_a_quadratic(case):
  if case.no_convergence:
    pytest.skip(case.no_convergence)
  optimizer = case.make()
  kwargs = case.update_kwargs(jnp.float32)
  target = jax.tree.map(lambda leaf: 2.0 - leaf, _params())

  def loss(params):
    return sum(jnp.sum((p - t) ** 2) for p, t in zip(
        jax.tree.leaves(params), jax.tree.leaves(target)))

  @jax.jit
  def minimise(params):
    def step(_, carry):
      params, state = carry
      updates, state = optimizer.update(
          jax.grad(loss)(params), state, params, **kwargs)
      return optax.apply_updates(params, updates), state

    return jax.lax.fori_loop(
        0, 2000, step, (params, optimizer.init(params)))[0]

  initial = _params()
  final = minimise(initial)
  assert float(loss(final)) <= 1e-6 * float(loss(initial))


# --- Sharding: one subprocess on an 8-device CPU mesh for every case -------


def sharding_failures() -> list[str]:
  """Run in a process with 8 CPU devices: where state leaves stop following
  their params' sharding, for every case."""
  from jax.sharding import Mesh
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec

  assert jax.device_count() == 8, jax.devices()
  mesh = Mesh(np.asarray(jax.devices()).reshape(4, 2), ('data', 'model'))
  shardings = {
      'w': NamedSharding(mesh, PartitionSpec('data', 'model')),
      'b': NamedSharding(mesh, PartitionSpec('model')),
      's': NamedSharding(mesh, PartitionSpec()),
  }
  params = {
      'w': jnp.arange(32, dtype=jnp.float32).reshape(8, 4),
      'b': jnp.ones(4, jnp.float32),
      's': jnp.ones((), jnp.float32),
  }
  params = jax.device_put(params, shardings)
  gradients = jax.device_put(
      jax.tree.map(lambda leaf: jnp.full_like(leaf, 0.5), params), shardings)
  failures = []

  def check(case, when, state, new_params):
    followers = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
      name = getattr(path[-1], 'key', None)
      if name not in shardings or leaf.ndim != params[name].ndim:
        continue
      followers += 1
      if (jax.typeof(leaf).shape != jax.typeof(params[name]).shape
          or not leaf.sharding.is_equivalent_to(shardings[name], leaf.ndim)):
        failures.append(
            f'{case.name} {when}: state leaf {jax.tree_util.keystr(path)} '
            f'has {jax.typeof(leaf)} {leaf.sharding}, its param '
            f'{jax.typeof(params[name])} {shardings[name]}')
    if case.stored_field is not None and followers == 0:
      failures.append(f'{case.name} {when}: no state leaf follows a param')
    for name, leaf in new_params.items():
      if not leaf.sharding.is_equivalent_to(shardings[name], leaf.ndim):
        failures.append(f'{case.name} {when}: param {name} {leaf.sharding}')

  optimizers = [case.make() for case in CASES]
  kwargs = [case.update_kwargs(jnp.float32, params) for case in CASES]

  # One function updates every case, so that the check compiles twice in
  # all (with and without donation) rather than twice per case.
  def step(params, states, gradients):
    new_params, new_states = [], []
    for optimizer, state, extra in zip(optimizers, states, kwargs):
      updates, state = optimizer.update(gradients, state, params, **extra)
      new_params.append(optax.apply_updates(params, updates))
      new_states.append(state)
    return new_params, new_states

  def check_all(when, states, new_params):
    for case, state, case_params in zip(CASES, states, new_params):
      check(case, when, state, case_params)

  states = [optimizer.init(params) for optimizer in optimizers]
  check_all('after init', states, [params] * len(CASES))
  new_params, new_states = jax.jit(step)(params, states, gradients)
  check_all('after a jitted update', new_states, new_params)
  donated = jax.jit(step, donate_argnums=(1,))
  copies = jax.tree.map(jnp.copy, states)
  new_params, new_states = donated(params, copies, gradients)
  check_all('after a donated jitted update', new_states, new_params)
  return failures


def test_state_sharding_follows_the_params_for_every_case():
  tests = pathlib.Path(__file__).parent
  helpers.run_on_eight_cpu_devices(
      f'import sys; sys.path.insert(0, {str(tests)!r}); import test_common; '
      'failures = test_common.sharding_failures(); '
      "print('\\n'.join(failures) or 'SHARDING-OK')")
