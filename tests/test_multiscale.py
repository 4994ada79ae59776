"""Tests of the core multiscale transformation (eq. 1) and fast weights (§3)."""

from __future__ import annotations

import functools
import pickle

import helpers
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import multiscale_optax as mso

LEARNING_RATE = 0.05


def _library_trajectory(optimizer, gradients, params=None):
  params = jnp.zeros(gradients.shape[1:], gradients.dtype) if (
      params is None) else params
  state = optimizer.init(params)
  update = jax.jit(optimizer.update)
  weights = []
  for gradient in gradients:
    updates, state = update(gradient, state, params)
    params = optax.apply_updates(params, updates)
    weights.append(params)
  return np.stack(weights), state


# --- Exactness: the equivalences the paper and optax promise -------------


# The effective step lr / (1 - b) is kept moderate: with lr = 0.05 and
# b = 0.99 the MLP's own dynamics amplify a 1e-15 perturbation to 5e-8 in
# 200 steps (measured with optax alone), which no implementation can beat.
@pytest.mark.parametrize(
    ('learning_rate', 'momentum'), [(0.05, 0.5), (0.05, 0.9), (0.003, 0.99)])
@pytest.mark.parametrize('nesterov', [False, True])
def test_momentum_is_a_negative_fast_weight(learning_rate, momentum, nesterov):
  # Heavy ball: h_k = lr (1 - b^{k+1}) / (1 - b); Nesterov: lr (1 - b^{k+2})
  # / (1 - b). Matching sum_i alpha_i gamma_i^k gives the fast rates below.
  with jax.enable_x64(True):
    params, batches = helpers.mlp_problem()
    fast_rate = -learning_rate * momentum ** (2 if nesterov else 1) / (
        1 - momentum)
    multiscale = mso.multiscale(
        [learning_rate / (1 - momentum), fast_rate], [1.0, momentum])
    reference = optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov)
    difference = helpers.max_abs_difference(
        helpers.run_trajectory(multiscale, params, batches),
        helpers.run_trajectory(reference, params, batches))
    assert difference <= 1e-10


def test_single_slow_subweight_is_sgd():
  with jax.enable_x64(True):
    params, batches = helpers.mlp_problem()
    difference = helpers.max_abs_difference(
        helpers.run_trajectory(
            mso.multiscale([LEARNING_RATE], [1.0]), params, batches),
        helpers.run_trajectory(optax.sgd(LEARNING_RATE), params, batches))
    assert difference == 0.0


def test_chained_after_adam_is_adam():
  with jax.enable_x64(True):
    params, batches = helpers.mlp_problem()
    multiscale_adam = optax.chain(
        optax.scale_by_adam(), mso.multiscale([LEARNING_RATE], [1.0]))
    difference = helpers.max_abs_difference(
        helpers.run_trajectory(multiscale_adam, params, batches),
        helpers.run_trajectory(optax.adam(LEARNING_RATE), params, batches))
    assert difference <= 1e-12


def test_matches_literal_eq1_with_merged_and_implied_subweights():
  learning_rates = [0.1, 0.3, -0.05, 0.2, 0.01, 0.07]
  decays = [1.0, 0.9, 0.9, 0.0, 1.0, -0.6]
  with jax.enable_x64(True):
    gradients = np.random.default_rng(0).normal(size=(60, 5))
    expected = helpers.literal_multiscale_weights(learning_rates, decays, gradients)
    actual, state = _library_trajectory(
        mso.multiscale(learning_rates, decays), jnp.asarray(gradients))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-12)
    # Distinct decays != 1 are 0.9, 0.0 and -0.6: three stored subweights.
    assert len(state.subweights) == 3
    assert state.layout.slow_entries == (0, 4)
    assert state.layout.stored_groups == ((1, 2), (3,), (5,))


@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(
    rates_and_decays=st.lists(
        st.tuples(
            st.floats(-2.0, 2.0),
            st.one_of(
                st.just(1.0), st.just(0.0),
                st.floats(-0.99, 0.999, allow_subnormal=False))),
        min_size=1, max_size=5),
    seed=st.integers(0, 2**16),
)
def test_property_matches_literal_eq1(rates_and_decays, seed):
  learning_rates = [rate for rate, _ in rates_and_decays]
  decays = [decay for _, decay in rates_and_decays]
  with jax.enable_x64(True):
    gradients = np.random.default_rng(seed).normal(size=(25, 3))
    expected = helpers.literal_multiscale_weights(learning_rates, decays, gradients)
    actual, state = _library_trajectory(
        mso.multiscale(learning_rates, decays), jnp.asarray(gradients))
    scale = 1.0 + np.max(np.abs(expected))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-10 * scale)
    assert len(state.subweights) == len(
        {decay for decay in decays if decay != 1.0})


def test_learning_rate_schedule_scales_every_rate():
  # Scales exact in float32, so the schedule's own dtype does not matter.
  schedule = optax.piecewise_constant_schedule(1.0, {10: 0.5, 25: 0.25})
  learning_rates, decays = [0.2, 0.5], [1.0, 0.8]
  with jax.enable_x64(True):
    gradients = np.random.default_rng(1).normal(size=(40, 4))
    # The library evaluates the schedule at an int32 count, as optax does.
    scales = np.asarray(
        [schedule(jnp.asarray(step, jnp.int32)) for step in range(40)])
    expected = helpers.literal_multiscale_weights(
        learning_rates, decays, gradients, scales=scales)
    actual, _ = _library_trajectory(
        mso.multiscale(learning_rates, decays, learning_rate=schedule),
        jnp.asarray(gradients))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-12)


def test_continues_a_momentum_state_exactly_from_initial_subweights():
  momentum = 0.9
  with jax.enable_x64(True):
    params, batches = helpers.mlp_problem(120)
    first = jax.tree.map(lambda leaf: leaf[:60], batches)
    second = jax.tree.map(lambda leaf: leaf[60:], batches)
    reference = optax.sgd(LEARNING_RATE, momentum=momentum)
    grad_fn = jax.grad(helpers.mlp_loss)
    state = reference.init(params)
    for batch in zip(*first):
      updates, state = reference.update(grad_fn(params, *batch), state)
      params = optax.apply_updates(params, updates)
    # With m the optax trace, the fast subweight is lr * b / (1 - b) * m (§5).
    fast = jax.tree.map(
        lambda trace: LEARNING_RATE * momentum / (1 - momentum) * trace,
        state[0].trace)
    continued = mso.multiscale(
        [LEARNING_RATE / (1 - momentum),
         -LEARNING_RATE * momentum / (1 - momentum)],
        [1.0, momentum], initial_subweights=[None, fast])

    expected = helpers.scan_training(reference, params, state, second)[1]
    actual = helpers.scan_training(
        continued, params, continued.init(params), second)[1]
    assert helpers.max_abs_difference(actual, expected) <= 1e-10


def test_initial_subweights_are_merged_and_cast():
  params = {'w': jnp.ones(3, jnp.float32)}
  first = {'w': jnp.full(3, 0.25, jnp.float32)}
  second = {'w': jnp.full(3, 0.5, jnp.float32)}
  optimizer = mso.multiscale(
      [0.1, 0.2, 0.3], [1.0, 0.5, 0.5], initial_subweights=[None, first, second],
      state_dtype=jnp.bfloat16)
  state = optimizer.init(params)
  assert len(state.subweights) == 1
  assert state.subweights[0]['w'].dtype == jnp.bfloat16
  np.testing.assert_array_equal(state.subweights[0]['w'], 0.75)


def test_get_subweights_separates_slow_and_fast_knowledge():
  optimizer = optax.chain(
      optax.identity(), mso.fast_weights(0.1, 0.5, 0.8))
  params = jnp.asarray([2.0])
  state = optimizer.init(params)
  slow_expected, fast_expected = 2.0, 0.0
  for gradient in [1.0, -0.5, 0.25]:
    updates, state = optimizer.update(jnp.asarray([gradient]), state, params)
    params = optax.apply_updates(params, updates)
    slow_expected -= 0.1 * gradient
    fast_expected = 0.8 * fast_expected - 0.5 * gradient
  parts = mso.get_subweights(params, state)
  assert parts.decays == (1.0, 0.8)
  np.testing.assert_allclose(parts.values[0], [slow_expected], rtol=1e-6)
  np.testing.assert_allclose(parts.values[1], [fast_expected], rtol=1e-6)
  np.testing.assert_allclose(sum(parts.values), params, rtol=1e-6)


def test_get_subweights_needs_exactly_one_multiscale_state():
  with pytest.raises(ValueError, match='exactly one MultiscaleState'):
    mso.get_subweights(jnp.zeros(1), optax.sgd(0.1).init(jnp.zeros(1)))


# --- Convergence ---------------------------------------------------------


def _minimise(optimizer, loss_fn, params, steps):
  @jax.jit
  def step(params, state):
    grads = jax.grad(loss_fn)(params)
    updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  state = optimizer.init(params)
  for _ in range(steps):
    params, state = step(params, state)
  return params


def test_converges_on_rosenbrock():
  def rosenbrock(w):
    return (1 - w[0]) ** 2 + 100 * (w[1] - w[0] ** 2) ** 2

  optimizer = optax.chain(
      optax.scale_by_adam(), mso.multiscale([0.01, 0.01], [1.0, 0.9]))
  params = _minimise(optimizer, rosenbrock, jnp.asarray([-1.0, 1.5]), 5000)
  np.testing.assert_allclose(params, [1.0, 1.0], atol=2e-2)


# --- optax-style integration suite ----------------------------------------


def _tree_params(dtype=jnp.float32):
  return {
      'dense': {'kernel': jnp.ones((2, 3), dtype), 'bias': jnp.zeros(3, dtype)},
      'empty': {},
      'nothing': None,
      'list': [jnp.full((4,), 0.5, dtype)],
  }


def test_vmap_over_a_batch_of_optimizers():
  rates = jnp.asarray([[0.1, 0.2], [0.05, -0.02], [0.3, 0.0]])
  gradients = jax.random.normal(jax.random.PRNGKey(0), (20, 4))

  def run(learning_rates):
    optimizer = mso.multiscale(learning_rates, [1.0, 0.7])
    params = jnp.zeros(4)
    state = optimizer.init(params)

    def step(carry, gradient):
      params, state = carry
      updates, state = optimizer.update(gradient, state)
      return (optax.apply_updates(params, updates), state), None

    return jax.lax.scan(step, (params, state), gradients)[0][0]

  batched = jax.jit(jax.vmap(run))(rates)
  for row, learning_rates in enumerate(rates):
    expected, _ = _library_trajectory(
        mso.multiscale([float(v) for v in learning_rates], [1.0, 0.7]),
        gradients)
    np.testing.assert_allclose(batched[row], expected[-1], rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize('jit_init', [False, True])
def test_inject_hyperparams_gives_identical_results(jit_init):
  learning_rates = np.asarray([0.1, 0.2, -0.05])
  decays = np.asarray([1.0, 0.9, 0.5])
  params = {'w': jnp.linspace(-1.0, 1.0, 5)}
  gradients = jax.random.normal(jax.random.PRNGKey(3), (10, 5))
  injected = optax.inject_hyperparams(mso.multiscale)(
      learning_rates=learning_rates, decays=decays)
  plain = mso.multiscale(learning_rates, decays)
  init = jax.jit(injected.init) if jit_init else injected.init
  injected_state, plain_state = init(params), plain.init(params)
  update = jax.jit(injected.update)
  injected_params = plain_params = params
  for gradient in gradients:
    updates, injected_state = update({'w': gradient}, injected_state)
    injected_params = optax.apply_updates(injected_params, updates)
    updates, plain_state = plain.update({'w': gradient}, plain_state)
    plain_params = optax.apply_updates(plain_params, updates)
  np.testing.assert_allclose(
      injected_params['w'], plain_params['w'], rtol=1e-6, atol=1e-7)
  # Injected decays are arrays that may change, so every entry is stored,
  # whether init saw them concrete (eager) or traced (jit).
  assert len(injected_state.inner_state.subweights) == 3


def test_injected_learning_rates_and_decays_can_be_changed():
  injected = optax.inject_hyperparams(mso.multiscale)(
      learning_rates=jnp.asarray([0.0, 1.0]), decays=jnp.asarray([1.0, 0.5]))
  state = jax.jit(injected.init)(jnp.zeros(1))
  update = jax.jit(injected.update)
  _, state = update(jnp.ones(1), state)   # fast subweight = -1
  state.hyperparams['decays'] = jnp.asarray([1.0, 0.25])
  state.hyperparams['learning_rates'] = jnp.asarray([0.0, 0.0])
  updates, state = update(jnp.ones(1), state)
  # Decay 0.25 from -1 with no learning: the increment is -0.75 * -1.
  np.testing.assert_allclose(updates, [0.75], rtol=1e-6)


def test_masked_leaves_untouched_leaves_alone():
  params = {'train': jnp.ones(2), 'frozen': jnp.ones(2)}
  optimizer = optax.masked(
      mso.multiscale([0.1, 0.2], [1.0, 0.5]),
      {'train': True, 'frozen': False})
  state = optimizer.init(params)
  grads = {'train': jnp.ones(2), 'frozen': jnp.ones(2)}
  updates, state = optimizer.update(grads, state, params)
  np.testing.assert_allclose(updates['train'], [-0.3, -0.3], rtol=1e-6)
  np.testing.assert_array_equal(updates['frozen'], grads['frozen'])


def test_state_memory_counts_distinct_decays_other_than_one():
  params = {'w': jnp.zeros((100,))}
  optimizer = mso.multiscale(
      [0.1, 0.2, 0.3, 0.4, 0.5], [1.0, 0.99, 1.0, 0.99, 0.9])
  state = optimizer.init(params)
  stored = sum(leaf.size for leaf in jax.tree.leaves(state.subweights))
  assert stored == 2 * 100
  assert len(mso.multiscale([1.0], [1.0]).init(params).subweights) == 0


def test_fast_weights_is_the_two_timescale_multiscale_learner():
  with jax.enable_x64(True):
    gradients = np.random.default_rng(4).normal(size=(30, 3))
    expected = helpers.literal_multiscale_weights([0.1, 0.6], [1.0, 0.7], gradients)
    actual, _ = _library_trajectory(
        mso.fast_weights(0.1, 0.6, 0.7), jnp.asarray(gradients))
    np.testing.assert_allclose(actual, expected, atol=1e-12)


# --- Bad input -------------------------------------------------------------


@pytest.mark.parametrize(
    ('kwargs', 'error', 'pattern'),
    [
        (dict(learning_rates=[0.1, 0.2], decays=[1.0]), ValueError,
         'same length'),
        (dict(learning_rates=[], decays=[]), ValueError, 'at least one'),
        (dict(learning_rates=[np.nan], decays=[1.0]), ValueError,
         r'learning_rates\[0\]. must be finite'),
        (dict(learning_rates=[0.1], decays=[np.inf]), ValueError,
         r'decays\[0\]. must be finite'),
        (dict(learning_rates=[0.1], decays=[1.5]), ValueError,
         r'\(-1.0, 1.0\]'),
        (dict(learning_rates=[0.1], decays=[-1.0]), ValueError,
         r'decays\[0\]. must lie in \(-1.0, 1.0\]'),
        (dict(learning_rates=[[0.1]], decays=[1.0]), ValueError, '1-D'),
        (dict(learning_rates=np.ones((1, 1)), decays=[1.0]), ValueError,
         '1-D'),
        (dict(learning_rates=0.1, decays=[1.0]), ValueError, 'scalar'),
        (dict(learning_rates='0.1', decays=[1.0]), TypeError,
         'learning_rates'),
        (dict(learning_rates=[0.1], decays=['a']), TypeError, 'decays'),
        (dict(learning_rates=[0.1], decays=[True]), TypeError, 'decays'),
        (dict(learning_rates=[0.1], decays=[1.0], state_dtype=jnp.int32),
         TypeError, 'state_dtype'),
        (dict(learning_rates=[0.1], decays=[1.0],
              learning_rate=np.nan), ValueError, 'learning_rate'),
        (dict(learning_rates=[0.1, 0.2], decays=[1.0, 0.5],
              initial_subweights=[None]), ValueError, 'initial_subweights'),
        (dict(learning_rates=[0.1, 0.2], decays=[1.0, 0.5],
              initial_subweights=[jnp.ones(1), None]), ValueError,
         r'initial_subweights\[0\]. must be None'),
        (dict(learning_rates=[0.1], decays=[1.0],
              initial_subweights={'a': 1}), TypeError, 'initial_subweights'),
    ],
)
def test_bad_input_fails_at_construction(kwargs, error, pattern):
  with pytest.raises(error, match=pattern):
    mso.multiscale(**kwargs)


@pytest.mark.parametrize(
    ('args', 'pattern'),
    [
        ((0.1, 0.5, 1.0), r'fast_decay. must lie in \(-1.0, 1.0\)'),
        ((0.1, 0.5, -1.0), 'fast_decay'),
        ((np.nan, 0.5, 0.5), 'slow_learning_rate'),
        ((0.1, np.inf, 0.5), 'fast_learning_rate'),
    ],
)
def test_fast_weights_bad_input(args, pattern):
  with pytest.raises(ValueError, match=pattern):
    mso.fast_weights(*args)


def test_fast_weights_rejects_non_scalars():
  with pytest.raises(TypeError, match='fast_decay'):
    mso.fast_weights(0.1, 0.5, [0.5])


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(decay=st.one_of(
    st.floats(max_value=-1.0, allow_nan=False),
    st.floats(min_value=1.0, exclude_min=True, allow_nan=False)))
def test_property_out_of_range_decays_are_rejected(decay):
  with pytest.raises(ValueError, match='decays'):
    mso.multiscale([0.1], [decay])


def test_state_dtype_under_inject_hyperparams_needs_static_args():
  with pytest.raises(TypeError, match="static_args=\\('state_dtype',\\)"):
    optax.inject_hyperparams(mso.multiscale)(
        learning_rates=jnp.asarray([0.1]), decays=jnp.asarray([1.0]),
        state_dtype=jnp.bfloat16).init(jnp.zeros(2))
  optimizer = optax.inject_hyperparams(
      mso.multiscale, static_args=('state_dtype',))(
          learning_rates=jnp.asarray([0.1, 0.2]),
          decays=jnp.asarray([1.0, 0.5]), state_dtype=jnp.bfloat16)
  state = optimizer.init(jnp.zeros(2))
  assert state.inner_state.subweights[0].dtype == jnp.bfloat16


def test_inject_hyperparams_with_bfloat16_params():
  # inject_hyperparams turns the float `learning_rate` into a bfloat16
  # array here; construction must accept it.
  optimizer = optax.inject_hyperparams(mso.multiscale)(
      learning_rates=jnp.asarray([0.1, 0.2]),
      decays=jnp.asarray([1.0, 0.9999]))
  params = jnp.zeros(3, jnp.bfloat16)
  state = optimizer.init(params)
  assert state.hyperparams['learning_rate'].dtype == jnp.bfloat16
  # Injected decays may change: both entries are stored.
  assert len(state.inner_state.subweights) == 2
  updates, _ = jax.jit(optimizer.update)(jnp.ones(3, jnp.bfloat16), state)
  assert updates.dtype == jnp.bfloat16
  np.testing.assert_allclose(
      np.asarray(updates, np.float32), -0.3, rtol=1e-2)


# --- Decays that change after init (optax.inject_hyperparams) -----------


_CHANGING_DECAYS = [
    # (decays before, decays after): merged/implied entries that stop being
    # equal or 1, and a decay that drops to 0 (no division by it).
    ([1.0, 1.0], [1.0, 0.5]),
    ([1.0, 0.9], [1.0, 0.0]),
    ([0.9, 0.9], [1.0, 0.0]),
]


def _changing_decays_run(init_mode, before, after, rates, gradients, switch):
  """Runs injected decays that switch from ``before`` to ``after``."""
  if init_mode == 'schedule':
    decays = lambda count: jnp.where(  # noqa: E731
        count < switch, jnp.asarray(before), jnp.asarray(after))
  else:
    decays = np.asarray(before)
  optimizer = optax.inject_hyperparams(mso.multiscale)(
      learning_rates=np.asarray(rates), decays=decays)
  params = jnp.zeros(gradients.shape[1:], jnp.float64)
  init = jax.jit(optimizer.init) if init_mode == 'jit_init' else optimizer.init
  state = init(params)
  update = jax.jit(optimizer.update)
  weights = []
  for step, gradient in enumerate(gradients):
    if step == switch and init_mode != 'schedule':
      state.hyperparams['decays'] = jnp.asarray(after, jnp.float64)
    updates, state = update(gradient, state, params)
    params = optax.apply_updates(params, updates)
    weights.append(params)
  return np.stack(weights)


@pytest.mark.parametrize('init_mode', ['eager_init', 'jit_init', 'schedule'])
@pytest.mark.parametrize(('before', 'after'), _CHANGING_DECAYS)
def test_injected_decays_that_change_after_init_follow_eq1(
    init_mode, before, after):
  rates, steps, switch = [0.1, 0.3], 10, 4
  with jax.enable_x64(True):
    gradients = np.random.default_rng(7).normal(size=(steps, 3))
    per_step = np.asarray([before] * switch + [after] * (steps - switch))
    expected = helpers.literal_multiscale_weights(rates, per_step, gradients)
    actual = _changing_decays_run(
        init_mode, before, after, rates, jnp.asarray(gradients), switch)
  assert np.all(np.isfinite(actual))
  # float64 throughout: each of the 10 steps adds a few roundings of
  # relative size 2^-53 to values below 10, far under 1e-12.
  np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-12)


@hypothesis.settings(max_examples=20, deadline=None)
@hypothesis.given(
    entries=st.lists(
        st.tuples(
            st.floats(-2.0, 2.0),
            st.sampled_from([1.0, 0.0, 0.5, -0.6, 0.99]),
            st.sampled_from([1.0, 0.0, 0.5, -0.6, 0.99])),
        min_size=1, max_size=3),
    switch=st.integers(0, 8),
    seed=st.integers(0, 2**16),
)
def test_property_injected_decays_follow_eq1(entries, switch, seed):
  rates = [rate for rate, _, _ in entries]
  before = [decay for _, decay, _ in entries]
  after = [decay for _, _, decay in entries]
  steps = 8
  with jax.enable_x64(True):
    gradients = np.random.default_rng(seed).normal(size=(steps, 2))
    per_step = np.asarray([before] * switch + [after] * (steps - switch))
    expected = helpers.literal_multiscale_weights(rates, per_step, gradients)
    actual = _changing_decays_run(
        'eager_init', before, after, rates, jnp.asarray(gradients), switch)
  # float64: |rate| <= 2 and |u| < 6 keep every value below 100; 8 steps
  # of at most 3 entries x 4 roundings plus apply_updates, each 2^-53 of
  # such a value, stay below 8 * 13 * 1.2e-16 * 100 = 1.3e-12.
  np.testing.assert_allclose(actual, expected, rtol=0, atol=2e-12)


def test_decays_from_jax_arrays_store_every_entry_without_division():
  # Issue example: scheduled [1, 1] -> [1, 0.5] must not act as SGD.
  decays = lambda count: jnp.where(  # noqa: E731
      count < 1, jnp.asarray([1.0, 1.0]), jnp.asarray([1.0, 0.5]))
  optimizer = optax.inject_hyperparams(mso.multiscale)(
      learning_rates=jnp.asarray([0.1, 0.2]), decays=decays)
  state = optimizer.init(jnp.zeros(1))
  layout = state.inner_state.layout
  assert layout.slow_entries == () and layout.stored_groups == ((0,), (1,))
  assert layout.read_after_update == (False, False)
  params = jnp.zeros(1)
  for _ in range(10):
    updates, state = optimizer.update(jnp.ones(1), state, params)
    params = optax.apply_updates(params, updates)
  # Slow: -0.1 per step; fast: 0.5 omega - 0.2 (omega = -0.2 after step 0).
  fast = -0.2
  for _ in range(9):
    fast = 0.5 * fast - 0.2
  np.testing.assert_allclose(params, [-1.0 + fast], rtol=1e-6)


def test_static_decays_under_inject_hyperparams_keep_the_merged_layout():
  # optax.inject_hyperparams converts decays to the params' dtype: in
  # float32, 1 - 1e-8 becomes exactly 1 (a permanent subweight).
  decays = np.asarray([1.0, 1.0 - 1e-8, 1.0 - 1e-8])
  injected = optax.inject_hyperparams(mso.multiscale)(
      learning_rates=np.asarray([0.1, 0.2, 0.3]), decays=decays)
  state = injected.init(jnp.zeros(2, jnp.float32))
  assert float(state.hyperparams['decays'][1]) == 1.0
  static = optax.inject_hyperparams(
      mso.multiscale, static_args=('decays',))(
          learning_rates=np.asarray([0.1, 0.2, 0.3]), decays=decays)
  state = static.init(jnp.zeros(2, jnp.float32))
  layout = state.inner_state.layout
  assert layout.group_decays == (1.0 - 1e-8,)
  assert layout.stored_groups == ((1, 2),)
  # The learning rates are still injected and may change.
  state.hyperparams['learning_rates'] = jnp.asarray([0.0, 0.0, 1.0])
  updates, _ = jax.jit(static.update)(jnp.ones(2), state)
  np.testing.assert_allclose(updates, [-1.0, -1.0], rtol=1e-6)


# --- A state must belong to its transformation -----------------------------


def _trained_state(optimizer, params):
  state = optimizer.init(params)
  _, state = optimizer.update(jnp.ones_like(params), state, params)
  return state


def test_state_of_a_differently_configured_learner_is_rejected():
  params = jnp.zeros(3)
  state = _trained_state(mso.multiscale([0.1, 0.2], [1.0, 0.9]), params)
  other = mso.multiscale([0.1, 0.2], [1.0, 0.5])
  with pytest.raises(ValueError, match=r'group_decays: state \(0.9,\)'):
    other.update(jnp.ones(3), state, params)
  with pytest.raises(ValueError, match='differently configured'):
    jax.jit(other.update)(jnp.ones(3), state, params)
  # Same stored count, different merging.
  merged = _trained_state(
      mso.multiscale([0.1, 0.2, 0.3], [1.0, 0.9, 0.9]), params)
  with pytest.raises(ValueError, match='stored_groups'):
    mso.multiscale([0.1, 0.2, 0.3], [0.9, 1.0, 0.9]).update(
        jnp.ones(3), merged, params)


def test_pickled_state_is_checked_against_its_transformation():
  params = jnp.zeros(3)
  state = pickle.loads(pickle.dumps(
      _trained_state(mso.multiscale([0.1, 0.2], [1.0, 0.9]), params)))
  mso.multiscale([0.5, 0.7], [1.0, 0.9]).update(jnp.ones(3), state, params)
  with pytest.raises(ValueError, match='group_decays'):
    mso.multiscale([0.1, 0.2], [1.0, 0.99]).update(jnp.ones(3), state, params)


def test_flax_serialization_round_trip_and_layout_check():
  serialization = pytest.importorskip('flax.serialization')
  params = {'w': jnp.linspace(-1.0, 1.0, 4), 'b': jnp.ones(2)}
  optimizer = optax.chain(
      optax.scale_by_adam(),
      mso.multiscale([0.1, 0.2, -0.05], [1.0, 0.9, 0.3],
                     state_dtype=jnp.bfloat16))
  state = optimizer.init(params)
  _, state = optimizer.update(params, state, params)
  restored = serialization.from_bytes(
      optimizer.init(params), serialization.to_bytes(state))
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  for before, after in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
    assert before.dtype == after.dtype
    np.testing.assert_array_equal(np.asarray(before), np.asarray(after))
  expected, _ = optimizer.update(params, state, params)
  actual, _ = optimizer.update(params, restored, params)
  for want, got in zip(jax.tree.leaves(expected), jax.tree.leaves(actual)):
    np.testing.assert_array_equal(want, got)
  # A state dict saved by another configuration restores its own layout
  # onto the target, and the update refuses it.
  other = optax.chain(
      optax.scale_by_adam(),
      mso.multiscale([0.1, 0.2, -0.05], [1.0, 0.8, 0.3],
                     state_dtype=jnp.bfloat16))
  foreign = serialization.from_state_dict(
      other.init(params), serialization.to_state_dict(state))
  with pytest.raises(ValueError, match='group_decays'):
    other.update(params, foreign, params)


# --- Inputs optax accepts ----------------------------------------------------


def test_complex_params_follow_eq1():
  rates, decays = [0.1, 0.3, -0.05], [1.0, 0.9, 0.0]
  with jax.enable_x64(True):
    rng = np.random.default_rng(8)
    gradients = rng.normal(size=(30, 3)) + 1j * rng.normal(size=(30, 3))
    expected = helpers.literal_multiscale_weights(rates, decays, gradients)
    optimizer = mso.multiscale(rates, decays)
    actual, state = _library_trajectory(optimizer, jnp.asarray(gradients))
    assert all(leaf.dtype == jnp.complex128
               for leaf in jax.tree.leaves(state.subweights))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-12)
  # complex64 with scaled storage: the decay lives in a real scale.
  optimizer = mso.multiscale(rates, decays, scaled_subweights=True)
  actual, state = _library_trajectory(
      optimizer, jnp.asarray(gradients, jnp.complex64))
  assert state.scales
  # float32 arithmetic: 30 steps of a few roundings (2^-24) of values < 20.
  np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-4)


def test_complex_quadratic_follows_eq1_and_converges():
  # f(w) = |w - c|^2 with the steepest-descent direction u = 2 (w - c),
  # closed loop: the library against eq. (1) written out in NumPy.
  rates, decays, steps = [0.05, 0.2, -0.02], [1.0, 0.9, 0.5], 300
  target = np.asarray([1.0 - 2.0j, -0.5 + 0.25j, 3.0j])
  with jax.enable_x64(True):
    subweights = np.zeros((3, 3), np.complex128)
    expected = []
    for _ in range(steps):
      direction = 2 * (subweights.sum(axis=0) - target)
      subweights = (np.asarray(decays)[:, None] * subweights
                    - np.asarray(rates)[:, None] * direction)
      expected.append(subweights.sum(axis=0))
    optimizer = mso.multiscale(rates, decays)
    params = jnp.zeros(3, jnp.complex128)
    state = optimizer.init(params)
    update = jax.jit(optimizer.update)
    actual = []
    for _ in range(steps):
      updates, state = update(2 * (params - target), state, params)
      params = optax.apply_updates(params, updates)
      actual.append(params)
  # float64: a contraction, so rounding stays a few 2^-53 of |c| < 4.
  np.testing.assert_allclose(np.stack(actual), np.stack(expected), rtol=0,
                             atol=1e-12)
  # Converging: from |c| of order 1 to within 1e-2 of c.
  np.testing.assert_allclose(actual[-1], target, rtol=0, atol=1e-2)


def test_complex_params_with_a_real_state_dtype_are_rejected_at_init():
  optimizer = mso.multiscale([0.1, 0.2], [1.0, 0.9], state_dtype=jnp.float32)
  with pytest.raises(TypeError, match='imaginary part'):
    optimizer.init({'w': jnp.zeros(2, jnp.complex64)})
  complex_state = mso.multiscale(
      [0.1, 0.2], [1.0, 0.9], state_dtype=jnp.complex64)
  with pytest.raises(TypeError, match='complex'):
    complex_state.init({'w': jnp.zeros(2, jnp.float32)})
  state = complex_state.init({'w': jnp.zeros(2, jnp.complex64)})
  assert state.subweights[0]['w'].dtype == jnp.complex64


@pytest.mark.parametrize(
    ('subweight', 'pattern'),
    [
        ({'w': jnp.ones((3, 1)), 'b': jnp.ones(2)},
         r"initial_subweights\[1\]. has shape \(3, 1\) at \['w'\]"),
        ({'w': jnp.ones(3)}, r'initial_subweights\[1\]. must have the '
         'structure'),
    ])
def test_initial_subweights_must_be_shaped_like_params(subweight, pattern):
  params = {'w': jnp.zeros(3), 'b': jnp.zeros(2)}
  optimizer = mso.multiscale(
      [0.1, 0.2], [1.0, 0.9], initial_subweights=[None, subweight])
  with pytest.raises(ValueError, match=pattern):
    optimizer.init(params)


def test_integer_and_bool_leaves_are_left_alone():
  params = {'w': jnp.ones(2), 'step': jnp.arange(3), 'flag': jnp.ones(2, bool)}
  for optimizer in (mso.multiscale([0.1, 0.2], [1.0, 0.5]),
                    mso.multiscale([0.1, 0.2], [1.0, 0.5],
                                   state_dtype=jnp.bfloat16)):
    state = optimizer.init(params)
    for subweights in state.subweights:
      assert subweights['step'].dtype == jnp.int32
      assert subweights['flag'].dtype == jnp.bool_
    grads = {'w': jnp.ones(2), 'step': jnp.zeros(3, jnp.int32),
             'flag': jnp.zeros(2, bool)}
    updates, state = jax.jit(optimizer.update)(grads, state, params)
    new_params = optax.apply_updates(params, updates)
    np.testing.assert_array_equal(new_params['step'], params['step'])
    np.testing.assert_array_equal(new_params['flag'], params['flag'])
    # 1 - 0.1 - 0.2, the fast part stored in bfloat16 at worst (unit
    # roundoff 2^-8 of 0.2).
    np.testing.assert_allclose(
        np.asarray(new_params['w'], np.float32), 0.7, rtol=0,
        atol=0.2 * 2.0**-8 + 1e-6)
    parts = mso.get_subweights(new_params, state)
    np.testing.assert_array_equal(parts.values[0]['step'], params['step'])


def test_python_float_params_and_updates():
  optimizer = mso.multiscale([0.1, 0.2], [1.0, 0.5])
  params = {'w': 1.0}
  state = optimizer.init(params)
  updates, state = optimizer.update({'w': 1.0}, state, params)
  np.testing.assert_allclose(updates['w'], -0.3, rtol=1e-6)
  updates, _ = jax.jit(optimizer.update)({'w': 1.0}, state, params)
  # Slow -0.1; fast 0.5 * (-0.2) - 0.2 = -0.3, a change of -0.1.
  np.testing.assert_allclose(updates['w'], -0.2, rtol=1e-6)


@pytest.mark.parametrize(
    'dtype', [jnp.float8_e4m3fn, jnp.float8_e5m2, jnp.int8, jnp.float4_e2m1fn])
def test_unsupported_state_dtypes_fail_at_construction(dtype):
  with pytest.raises(TypeError, match='state_dtype'):
    mso.multiscale([0.1, 0.2], [1.0, 0.5], state_dtype=dtype)


def test_donating_the_state_keeps_the_callers_initial_subweights():
  # A strongly typed array of the state's dtype: a cast to that dtype would
  # return the array itself.
  fast = {'w': jnp.asarray(np.full(4, 0.5, np.float32))}
  optimizer = mso.multiscale(
      [0.1, 0.2], [1.0, 0.9], initial_subweights=[None, fast])
  params = {'w': jnp.ones(4)}
  state = optimizer.init(params)

  @functools.partial(jax.jit, donate_argnums=(1,))
  def step(params, state):
    return optimizer.update(params, state, params)

  for _ in range(2):
    _, state = step(params, state)
  assert not fast['w'].is_deleted()
  np.testing.assert_array_equal(fast['w'], 0.5)


# --- get_subweights under optax wrappers -----------------------------------


def test_get_subweights_under_masked():
  params = {'train': jnp.ones(2), 'frozen': jnp.full(2, 3.0)}
  optimizer = optax.masked(
      mso.fast_weights(0.1, 0.5, 0.8), {'train': True, 'frozen': False})
  state = optimizer.init(params)
  updates, state = optimizer.update(
      {'train': jnp.ones(2), 'frozen': jnp.zeros(2)}, state, params)
  params = optax.apply_updates(params, updates)
  parts = mso.get_subweights(params, state)
  slow, fast = parts.values
  np.testing.assert_allclose(slow['train'], [0.9, 0.9], rtol=1e-6)
  np.testing.assert_allclose(fast['train'], [-0.5, -0.5], rtol=1e-6)
  assert isinstance(slow['frozen'], optax.MaskedNode)
  assert isinstance(fast['frozen'], optax.MaskedNode)


def test_get_subweights_under_multi_transform():
  params = {'a': jnp.ones(2), 'b': jnp.ones(3)}
  optimizer = optax.multi_transform(
      {'fast': mso.fast_weights(0.1, 0.5, 0.8),
       'slow': mso.multiscale([0.01, 0.02, 0.03], [1.0, 0.99, 0.9])},
      {'a': 'fast', 'b': 'slow'})
  state = optimizer.init(params)
  updates, state = optimizer.update(
      {'a': jnp.ones(2), 'b': jnp.ones(3)}, state, params)
  params = optax.apply_updates(params, updates)
  with pytest.raises(ValueError, match=r"found 2.*inner_states\['fast'\]"):
    mso.get_subweights(params, state)
  fast = mso.get_subweights(params, state.inner_states['fast'])
  assert fast.decays == (1.0, 0.8)
  np.testing.assert_allclose(fast.values[1]['a'], [-0.5, -0.5], rtol=1e-6)
  assert isinstance(fast.values[1]['b'], optax.MaskedNode)
  slow = mso.get_subweights(params, state.inner_states['slow'])
  assert slow.decays == (1.0, 0.99, 0.9)
  np.testing.assert_allclose(
      sum(value['b'] for value in slow.values), params['b'], rtol=1e-6)
