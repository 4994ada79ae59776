"""Numerics of multiscale: precision, faults, extreme inputs, checkpoints."""

from __future__ import annotations

import pathlib

import helpers
import hypothesis
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import strategies as st

import multiscale_optax as mso
from multiscale_optax._src import multiscale as multiscale_module

# A learner with timescales from 10 to 10^4 steps, used by the tracking test.
TRACKING_DECAYS = (1.0, 0.9, 0.99, 0.999, 0.9999)
TRACKING_RATES = (0.01, 0.02, 0.02, 0.01, 0.01)


def _flat(tree) -> np.ndarray:
  return np.concatenate([
      np.ravel(np.asarray(leaf, np.float64)) for leaf in jax.tree.leaves(tree)])


def _relative_error(value, reference) -> float:
  value, reference = _flat(value), _flat(reference)
  return float(np.linalg.norm(value - reference) / np.linalg.norm(reference))


def _final_params(optimizer, params, batches):
  history = jax.jit(
      lambda p, b: helpers.run_trajectory(optimizer, p, b))(params, batches)
  return jax.tree.map(lambda leaf: leaf[-1], history)


def _run_open_loop(optimizer, params, updates):
  """Applies a fixed stream of updates; returns final params and state."""

  def step(carry, update):
    params, state = carry
    increments, state = optimizer.update(update, state, params)
    return (optax.apply_updates(params, increments), state), None

  run = jax.jit(lambda carry: jax.lax.scan(step, carry, updates)[0])
  return run((params, optimizer.init(params)))


# Item 1: low-precision state.


@pytest.mark.parametrize(
    ('state_dtype', 'bound'), [(jnp.bfloat16, 0.06), (jnp.float16, 0.005)])
def test_low_precision_state_tracks_float32_state(state_dtype, bound):
  # Measured relative L2 errors after 10^4 steps: 0.037 (bfloat16) and
  # 0.0021 (float16); the bounds leave a margin for other platforms.
  steps = 10_000
  params = helpers.mlp_params(jax.random.key(0), dtype=jnp.float32)
  batches = helpers.mlp_batches(jax.random.key(1), steps, dtype=jnp.float32)
  reference = _final_params(
      mso.multiscale(TRACKING_RATES, TRACKING_DECAYS), params, batches)
  low = _final_params(
      mso.multiscale(TRACKING_RATES, TRACKING_DECAYS, state_dtype=state_dtype),
      params, batches)
  assert _relative_error(reference, params) > 1.0  # the weights did move
  assert _relative_error(low, reference) <= bound


@pytest.mark.parametrize('state_dtype', [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize(
    ('decay', 'steps'),
    [(0.9999, 10_000), (0.999999, 100_000), (0.3, 5), (-0.95, 100)])
def test_low_precision_subweight_decays_at_its_rate(state_dtype, decay, steps):
  if decay > 0.99:
    # gamma rounds to 1 in these dtypes: a stored value rounded after each
    # decay step would never move.
    assert jnp.asarray(decay, state_dtype) == 1.0
  # Representable in every state dtype, so that init does not round.
  initial = jnp.asarray([0.5, 0.625, 0.75, 1.0], jnp.float32)
  optimizer = mso.multiscale(
      [0.1], [decay], initial_subweights=[initial], state_dtype=state_dtype)
  with jax.enable_x64(True):
    # float32 updates, so float32 arithmetic; the params accumulate the
    # increments in float64 so that their own rounding does not hide the
    # transformation's.
    params, state = _run_open_loop(
        optimizer, initial.astype(jnp.float64),
        jnp.zeros((steps, 4), jnp.float32))
    (_, value) = mso.get_subweights(params, state).values
  expected = np.asarray(initial, np.float64) * decay ** steps
  # The params are the subweight itself here.
  np.testing.assert_allclose(params, expected, rtol=1e-6, atol=1e-6)
  assert value.dtype == state_dtype
  np.testing.assert_allclose(
      np.asarray(value, np.float64), expected,
      rtol=float(jnp.finfo(state_dtype).eps), atol=0)
  # Effective timescale -1 / log(gamma), measured from the params.
  if decay > 0:
    measured = -steps / np.log(np.asarray(params) / initial)
    np.testing.assert_allclose(measured, -1 / np.log(decay), rtol=1e-5)


def test_low_precision_decay_under_traced_hyperparameters():
  decay, steps = 0.9999, 5_000
  with jax.enable_x64(True):
    # state_dtype must be static: inject_hyperparams would otherwise turn it
    # into an array.
    optimizer = optax.inject_hyperparams(
        mso.multiscale, static_args=('state_dtype',))(
            learning_rates=jnp.asarray([0.1, 0.1], jnp.float32),
            decays=jnp.asarray([1.0, decay], jnp.float32),
            initial_subweights=[None, jnp.ones(3, jnp.float32)],
            state_dtype=jnp.bfloat16)
    params, state = _run_open_loop(
        optimizer, jnp.full(3, 2.0, jnp.float64),
        jnp.zeros((steps, 3), jnp.float32))
  assert state.inner_state.subweights[0].dtype == jnp.bfloat16
  # The injected decay is a float32 array: the decay actually applied is the
  # float32 number nearest to 0.9999 (1 - gamma off by 1.7e-4 relative).
  np.testing.assert_allclose(
      np.asarray(params) - 1.0, np.float64(np.float32(decay)) ** steps,
      rtol=1e-6)


def test_bfloat16_params_and_updates_decay_in_float32_arithmetic():
  # bfloat16 params and gradients: the stored subweight still decays, even
  # though the params (bfloat16) cannot resolve each step's change.
  decay, steps = 0.9999, 10_000
  initial = jnp.ones(2, jnp.bfloat16)
  optimizer = mso.multiscale([0.1], [decay], initial_subweights=[initial])
  params, state = _run_open_loop(
      optimizer, initial, jnp.zeros((steps, 2), jnp.bfloat16))
  assert params.dtype == jnp.bfloat16
  (_, value) = mso.get_subweights(params, state).values
  np.testing.assert_allclose(
      np.asarray(value, np.float64), decay ** steps, rtol=2 ** -7)


@pytest.mark.parametrize('decay', [0.3, 0.9, -0.7])
def test_low_precision_rounding_stays_out_of_the_slow_weight(decay):
  # The increment is the exact change of the stored subweight, so the
  # implied non-decaying part is -alpha_slow * sum(u) up to float32
  # rounding, not up to bfloat16 rounding.
  steps, slow_rate, fast_rate = 500, 0.05, 0.3
  updates = jax.random.normal(jax.random.key(3), (steps, 16), jnp.float32)
  optimizer = mso.multiscale(
      [slow_rate, fast_rate], [1.0, decay], state_dtype=jnp.bfloat16)
  params, state = _run_open_loop(
      optimizer, jnp.zeros(16, jnp.float32), updates)
  slow, _ = mso.get_subweights(params, state).values
  updates64 = np.asarray(updates, np.float64)
  expected = -slow_rate * np.sum(updates64, axis=0)
  # Error bound. Every step computes the increment and adds it to the
  # params in float32 with at most 16 roundings (update_leaf, the direct
  # term, the sums, apply_updates), each at most u = 2^-24 times twice the
  # largest value M involved (|s| >= 1/2 can double a quotient by it), and
  # get_subweights subtracts with 2 more:
  #   |error| <= (16 * steps + 2) * 2 * u * M,
  # with M = max over steps of |w|, |omega_fast| and the learning terms,
  # taken from the float64 recursion. Rounding the bfloat16 subweight into
  # the slow weight instead (XLA:GPU without an explicit rounding) adds up
  # to half a bfloat16 ulp (2^-9 |omega|) per step.
  fast = np.zeros(16)
  largest = 0.0
  for update in updates64:
    fast = decay * fast - fast_rate * update
    weight = -slow_rate * update + fast  # one step's size is enough here
    largest = max(largest, np.max(np.abs(fast)),
                  np.max(np.abs(expected)), np.max(np.abs(weight)),
                  (slow_rate + fast_rate) * np.max(np.abs(update)))
  largest = max(largest, np.max(np.abs(expected + fast)))
  bound = (16 * steps + 2) * 2 * 2.0**-24 * largest
  error = np.max(np.abs(np.asarray(slow, np.float64) - expected))
  assert error <= bound


def _producer(jaxpr, var):
  """The equation of ``jaxpr`` that produces ``var``, through copies."""
  for eqn in jaxpr.eqns:
    if any(out is var for out in eqn.outvars):
      if eqn.primitive.name in ('copy', 'copy_p'):
        return _producer(jaxpr, eqn.invars[0])
      return eqn
  return None


def _assert_rounded_before_storing(closed_jaxpr, dtype):
  """Each output is cast to ``dtype`` from an explicit reduce_precision."""
  jaxpr = closed_jaxpr.jaxpr
  info = jnp.finfo(dtype)
  assert jaxpr.outvars
  for var in jaxpr.outvars:
    assert var.aval.dtype == dtype
    cast = _producer(jaxpr, var)
    assert cast is not None and cast.primitive.name == 'convert_element_type'
    rounding = _producer(jaxpr, cast.invars[0])
    assert rounding is not None, cast
    assert rounding.primitive.name == 'reduce_precision', rounding
    assert rounding.params['exponent_bits'] == info.nexp
    assert rounding.params['mantissa_bits'] == info.nmant


@pytest.mark.parametrize('storage', ['scaled', 'plain', 'initial'])
def test_narrow_storage_is_an_explicit_rounding(storage):
  # XLA:GPU may keep excess precision inside a fusion and delete a plain
  # float32 -> bfloat16 -> float32 round trip; an explicit reduce_precision
  # is kept on every backend. CPU keeps both, so the test reads the jaxpr.
  with jax.enable_x64(True):
    if storage == 'scaled':
      # bfloat16 storage of float32 params: the scaled path.
      dtype, wide = jnp.bfloat16, jnp.float32
    else:
      # float32 storage of float64 params: the plain (unscaled) path.
      dtype, wide = jnp.float32, jnp.float64
    params = {'w': jnp.ones((4, 3), wide), 'b': jnp.ones(3, wide)}
    initial = jax.tree.map(lambda leaf: 0.3 * leaf, params)
    optimizer = mso.multiscale(
        [0.1, 0.2, 0.3, -0.05], [1.0, 0.3, 0.9, 0.0], state_dtype=dtype,
        initial_subweights=[None, initial, None, initial])
    if storage == 'initial':
      closed = jax.make_jaxpr(
          lambda p: [optimizer.init(p).subweights[0],
                     optimizer.init(p).subweights[2]])(params)
    else:
      state = optimizer.init(params)
      assert bool(state.scales) == (storage == 'scaled')
      closed = jax.make_jaxpr(
          lambda u, s: optimizer.update(u, s)[1].subweights)(params, state)
  _assert_rounded_before_storing(closed, dtype)


@pytest.mark.parametrize('decay', [0.3, 0.9, 0.999])
@pytest.mark.parametrize('read_after_update', [True, False])
def test_float32_state_matches_float64_reference(
    decay, read_after_update, monkeypatch):
  # Both increment forms (difference, and read-after-update for |decay| >=
  # 1/2) in float32 arithmetic and storage, params accumulated in float64.
  if not read_after_update:
    monkeypatch.setattr(multiscale_module, '_SMALLEST_DECAY_READ_AFTER_UPDATE',
                        2.0)
  steps = 2_000
  updates = np.random.default_rng(5).normal(size=(steps, 8))
  rates, decays = [0.02, 0.5], [1.0, decay]
  optimizer = mso.multiscale(rates, decays)
  with jax.enable_x64(True):
    params32, state32 = _run_open_loop(
        optimizer, jnp.zeros(8, jnp.float64), jnp.asarray(updates, jnp.float32))
    values = mso.get_subweights(params32, state32).values
    params64, state64 = _run_open_loop(
        optimizer, jnp.zeros(8, jnp.float64), jnp.asarray(updates, jnp.float64))
    reference = mso.get_subweights(params64, state64).values
  assert state32.layout.read_after_update == (
      read_after_update and abs(decay) >= 0.5,)
  # Error bound, with u = 2^-24 and M the largest |omega| + |alpha u| of
  # the float64 recursion: each float32 step rounds the fast subweight at
  # most 4 times (each <= u M) and the decay contracts old errors, so its
  # error stays below 4 u M min(steps, 1 / (1 - |decay|)). Each increment
  # adds at most 8 roundings (the read-after-update form divides by a
  # decay >= 1/2, which at most doubles a term) to the float64 params, so
  # the implied slow part is off by at most 8 u M steps plus the fast
  # error.
  fast, largest = np.zeros(8), 0.0
  for update in updates:
    fast = decay * fast - rates[1] * update
    largest = max(largest, np.max(np.abs(fast))
                  + max(abs(rate) for rate in rates) * np.max(np.abs(update)))
  unit = 2.0**-24
  fast_bound = 4 * unit * largest * min(steps, 1 / (1 - abs(decay)))
  bounds = (8 * unit * largest * steps + fast_bound, fast_bound)
  for value, expected, bound in zip(values, reference, bounds):
    expected = np.asarray(expected)
    error = np.max(np.abs(np.asarray(value, np.float64) - expected))
    assert error <= bound


@pytest.mark.parametrize('scaled', [False, True])
def test_scaled_subweights_keep_a_long_float32_decay_exact(scaled):
  # A float32 subweight rounded after every decay step drifts; with
  # scaled_subweights the decay lives in a double-float32 scale. Bound for
  # the scaled case: the scale keeps about 48 bits, so 10^5 steps of a few
  # roundings of 2^-48 add below 10^-8, and reading s m rounds twice in
  # float32 (2 * 2^-24 = 1.2e-7): 1e-6 holds with room. The default
  # rounds the stored value every step (2^-24 relative), which over 10^5
  # steps drifts far beyond 1e-6 (2.4e-5 on CPU).
  decay, steps = float(np.exp(-1e-5)), 100_000
  initial = jnp.linspace(0.3, 1.0, 16, dtype=jnp.float32)
  optimizer = mso.multiscale([0.1], [decay], initial_subweights=[initial],
                             state_dtype=jnp.float32,
                             scaled_subweights=scaled)
  with jax.enable_x64(True):
    params, state = _run_open_loop(
        optimizer, initial.astype(jnp.float64),
        jnp.zeros((steps, 16), jnp.float32))
    (_, value) = mso.get_subweights(params, state).values
  assert value.dtype == jnp.float32
  assert bool(state.scales) == scaled
  expected = np.asarray(initial, np.float64) * decay ** steps
  error = np.max(np.abs(np.asarray(value, np.float64) / expected - 1))
  if scaled:
    assert error <= 1e-6
    np.testing.assert_allclose(params, expected, rtol=1e-6)
  else:
    assert error > 1e-6  # what scaled_subweights fixes


def test_scaled_subweights_must_be_a_bool():
  with pytest.raises(TypeError, match='scaled_subweights'):
    mso.multiscale([0.1], [0.9], scaled_subweights=1)


# Item 4: faults and extreme inputs.


@pytest.mark.parametrize('bad', [np.nan, np.inf, -np.inf])
def test_apply_if_finite_leaves_params_and_state_untouched(bad):
  optimizer = optax.apply_if_finite(
      optax.chain(optax.scale_by_adam(),
                  mso.multiscale([0.1, 0.2], [1.0, 0.9])),
      max_consecutive_errors=3)
  params = {'w': jnp.ones(3), 'b': jnp.zeros(2)}
  good = {'w': jnp.full(3, 0.5), 'b': jnp.ones(2)}
  broken = {'w': jnp.asarray([0.5, bad, 0.5]), 'b': jnp.ones(2)}

  @jax.jit
  def step(params, state, grads):
    updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  params, state = step(params, optimizer.init(params), good)
  skipped_params, skipped_state = step(params, state, broken)
  assert int(skipped_state.notfinite_count) == 1
  for before, after in zip(
      jax.tree.leaves((params, state.inner_state)),
      jax.tree.leaves((skipped_params, skipped_state.inner_state))):
    np.testing.assert_array_equal(before, after)
  # Training continues exactly as if the bad step had never happened.
  continued, _ = step(skipped_params, skipped_state, good)
  expected, _ = step(params, state, good)
  for actual, wanted in zip(
      jax.tree.leaves(continued), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(actual, wanted)
  assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(continued))


@pytest.mark.parametrize('state_dtype', [None, jnp.bfloat16])
def test_nonfinite_gradient_without_guard_poisons_only_its_entries(
    state_dtype):
  optimizer = mso.multiscale(
      [0.1, 0.2, 0.3], [1.0, 0.9, 0.2], state_dtype=state_dtype)
  params = jnp.ones(3)
  state = optimizer.init(params)
  updates, state = jax.jit(optimizer.update)(
      jnp.asarray([1.0, np.nan, 1.0]), state)
  params = optax.apply_updates(params, updates)
  for _ in range(3):
    updates, state = jax.jit(optimizer.update)(jnp.ones(3), state)
    params = optax.apply_updates(params, updates)
  for tree in (params, *mso.get_subweights(params, state).values):
    value = np.asarray(tree, np.float64)
    assert np.isnan(value[1])
    assert np.all(np.isfinite(value[[0, 2]]))


@pytest.mark.parametrize('state_dtype', [None, jnp.bfloat16])
@pytest.mark.parametrize(
    ('rates', 'decays', 'gradient'),
    [
        ([1e-30, 1e-30], [1.0, 0.9], 1.0),
        ([0.0, 0.0], [1.0, 0.999999], 1.0),
        ([0.1, 0.1], [1.0, 0.0], 1.0),
        ([0.1, 0.1], [1.0, -0.999999], 1.0),
        ([0.1, 0.1], [1.0, 0.999999], 1.0),
        ([0.1, -0.09], [1.0, 0.999999], 1e30),
        ([1.0, 1.0], [0.0, -0.999999], 1e30),
    ])
def test_extreme_hyperparameters_and_gradients_stay_finite(
    rates, decays, gradient, state_dtype):
  steps = 200
  optimizer = mso.multiscale(rates, decays, state_dtype=state_dtype)
  signs = np.where(np.arange(steps) % 3 == 0, -1.0, 1.0)
  updates = jnp.asarray(gradient * signs[:, None] * np.ones((steps, 4)),
                        jnp.float32)
  params, state = _run_open_loop(optimizer, jnp.zeros(4, jnp.float32), updates)
  for tree in (params, *mso.get_subweights(params, state).values):
    assert np.all(np.isfinite(np.asarray(tree, np.float64)))


@pytest.mark.parametrize(
    ('kwargs', 'match'),
    [
        (dict(learning_rates=[0.1], decays=[-1.0]), r'decays\[0\]'),
        (dict(learning_rates=[0.1], decays=[1.000001]), r'decays\[0\]'),
        (dict(learning_rates=[np.nan], decays=[1.0]), r'learning_rates\[0\]'),
        (dict(learning_rates=[0.1], decays=[np.inf]), r'decays\[0\]'),
    ])
def test_out_of_range_hyperparameters_raise_clear_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    mso.multiscale(**kwargs)


_SETTINGS = hypothesis.settings(max_examples=15, deadline=None)
_decays = st.one_of(
    st.floats(-0.999, 0.999), st.just(1.0), st.just(0.0), st.just(0.9999))
_entries = st.lists(
    st.tuples(st.floats(-5.0, 5.0), _decays), min_size=1, max_size=4)
# Rates whose products with a gradient stay out of float32's subnormal
# range, where XLA:CPU flushes to zero and doubling is not exact.
_normal_entries = st.lists(
    st.tuples(st.floats(-5.0, 5.0).filter(
        lambda rate: rate == 0.0 or abs(rate) > 1e-30), _decays),
    min_size=1, max_size=4)
_shapes = st.lists(
    st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple),
    min_size=1, max_size=3)
_dtypes = st.sampled_from([None, jnp.float32, jnp.bfloat16, jnp.float16])


def _params_for(shapes, param_dtype):
  return {f'leaf{index}': jnp.zeros(shape, param_dtype)
          for index, shape in enumerate(shapes)}


def _updates_for(params, seed):
  keys = jax.random.split(jax.random.key(seed), len(params))
  return {name: jax.random.normal(key, leaf.shape, leaf.dtype)
          for key, (name, leaf) in zip(keys, sorted(params.items()))}


@_SETTINGS
@hypothesis.given(
    entries=_entries, shapes=_shapes, state_dtype=_dtypes,
    param_dtype=st.sampled_from([jnp.float32, jnp.bfloat16]),
    seed=st.integers(0, 1000))
def test_state_is_stable_and_updates_finite(
    entries, shapes, state_dtype, param_dtype, seed):
  rates, decays = zip(*entries)
  optimizer = mso.multiscale(rates, decays, state_dtype=state_dtype)
  params = _params_for(shapes, param_dtype)
  state = optimizer.init(params)
  # Eager: compiling every random pytree would dominate the test's runtime.
  update = optimizer.update
  new_state = state
  for step in range(2):
    updates, new_state = update(
        _updates_for(params, seed + step), new_state, params)
    assert jax.tree.structure(updates) == jax.tree.structure(params)
    for increment, param in zip(
        jax.tree.leaves(updates), jax.tree.leaves(params)):
      assert increment.dtype == param.dtype
      assert increment.shape == param.shape
      assert np.all(np.isfinite(np.asarray(increment, np.float64)))
  assert jax.tree.structure(new_state) == jax.tree.structure(state)
  assert [(leaf.shape, leaf.dtype) for leaf in jax.tree.leaves(new_state)] == [
      (leaf.shape, leaf.dtype) for leaf in jax.tree.leaves(state)]


@_SETTINGS
@hypothesis.given(
    entries=_normal_entries, shapes=_shapes, state_dtype=_dtypes,
    seed=st.integers(0, 1000))
# A float16 increment that is subnormal, flushed to zero, while its double
# is a normal number (found by hypothesis).
@hypothesis.example(entries=[(0.015625, 0.9999)], shapes=[(3,)],
                    state_dtype=jnp.float16, seed=221)
def test_doubling_gradients_doubles_increments_from_zero_state(
    entries, shapes, state_dtype, seed):
  # From a zero state every operation scales exactly by a power of two, so
  # linearity holds bit for bit where the values are normal numbers of the
  # state dtype; below its smallest normal number a value may be flushed to
  # zero (XLA:CPU flushes subnormals) while its double is kept.
  tiny = float(jnp.finfo(
      jnp.float32 if state_dtype is None else state_dtype).tiny)

  def assert_doubled(single, double):
    single = 2 * np.asarray(single, np.float64)
    double = np.asarray(double, np.float64)
    normal = np.abs(double) >= 2 * tiny
    np.testing.assert_array_equal(single[normal], double[normal])
    assert np.all(np.abs(single[~normal]) < 2 * tiny)

  rates, decays = zip(*entries)
  optimizer = mso.multiscale(rates, decays, state_dtype=state_dtype)
  params = _params_for(shapes, jnp.float32)
  state = optimizer.init(params)
  grads = _updates_for(params, seed)
  doubled = jax.tree.map(lambda leaf: 2 * leaf, grads)
  single_increments, single_state = optimizer.update(grads, state)
  double_increments, double_state = optimizer.update(doubled, state)
  for single, double in zip(
      jax.tree.leaves(single_increments), jax.tree.leaves(double_increments)):
    assert_doubled(single, double)
  for single, double in zip(
      jax.tree.leaves(mso.get_subweights(params, single_state).values[1:]),
      jax.tree.leaves(mso.get_subweights(params, double_state).values[1:])):
    assert_doubled(single, double)


# Item 5: checkpoints.


def _checkpoint_optimizers():
  params = {'w': jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), 'b': jnp.ones(3)}
  fast = jax.tree.map(lambda leaf: 0.25 * leaf, params)
  return params, {
      'float32': mso.multiscale([0.1, 0.2, -0.05], [1.0, 0.9, 0.999]),
      'bfloat16_chained': optax.chain(
          optax.scale_by_adam(),
          mso.multiscale([0.1, 0.2], [1.0, 0.9999], state_dtype=jnp.bfloat16)),
      'initial_subweights': mso.multiscale(
          [0.1, 0.2], [1.0, 0.99], initial_subweights=[None, fast]),
  }


def _train(optimizer, params, state, first, steps):
  grad_fn = jax.grad(
      lambda p, t: jnp.sum((p['w'].sum(0) + p['b'] - jnp.sin(t)) ** 2))

  def step(carry, time):
    params, state = carry
    updates, state = optimizer.update(grad_fn(params, time), state, params)
    return (optax.apply_updates(params, updates), state), None

  times = jnp.arange(first, first + steps, dtype=jnp.float32) * 0.1
  return jax.jit(lambda c: jax.lax.scan(step, c, times)[0])((params, state))


def _assert_bit_exact(first, second):
  assert jax.tree.structure(first) == jax.tree.structure(second)
  for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(second)):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(
        np.atleast_1d(np.asarray(a)).view(np.uint8),
        np.atleast_1d(np.asarray(b)).view(np.uint8))


@pytest.mark.parametrize('name', ['float32', 'bfloat16_chained',
                                  'initial_subweights'])
def test_numpy_checkpoint_round_trip_continues_bit_exactly(name, tmp_path):
  params, optimizers = _checkpoint_optimizers()
  optimizer = optimizers[name]
  params, state = _train(optimizer, params, optimizer.init(params), 0, 50)
  expected = _train(optimizer, params, state, 50, 50)
  leaves = jax.tree.leaves((params, state))
  path = pathlib.Path(tmp_path) / 'checkpoint.npz'
  np.savez(path, *[np.asarray(leaf) for leaf in leaves])
  # The tree structure (and the dtypes np.savez cannot name, such as
  # bfloat16) come from a fresh init, not from the file.
  template = (params, optimizer.init(params))
  template_leaves, treedef = jax.tree.flatten(template)
  with np.load(path) as saved:
    restored_leaves = [
        jnp.asarray(saved[f'arr_{index}'].view(leaf.dtype))
        for index, leaf in enumerate(template_leaves)]
  restored_params, restored_state = jax.tree.unflatten(
      treedef, restored_leaves)
  _assert_bit_exact((restored_params, restored_state), (params, state))
  _assert_bit_exact(
      _train(optimizer, restored_params, restored_state, 50, 50), expected)


@pytest.mark.parametrize('name', ['float32', 'bfloat16_chained',
                                  'initial_subweights'])
def test_orbax_checkpoint_round_trip_continues_bit_exactly(name, tmp_path):
  ocp = pytest.importorskip('orbax.checkpoint')
  params, optimizers = _checkpoint_optimizers()
  optimizer = optimizers[name]
  params, state = _train(optimizer, params, optimizer.init(params), 0, 50)
  expected = _train(optimizer, params, state, 50, 50)
  path = pathlib.Path(tmp_path) / 'checkpoint'
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(path, {'params': params, 'opt_state': state})
    checkpointer.wait_until_finished()
    abstract = jax.eval_shape(
        lambda p: {'params': p, 'opt_state': optimizer.init(p)}, params)
    restored = checkpointer.restore(path, abstract)
  _assert_bit_exact((restored['params'], restored['opt_state']),
                    (params, state))
  _assert_bit_exact(
      _train(optimizer, restored['params'], restored['opt_state'], 50, 50),
      expected)
