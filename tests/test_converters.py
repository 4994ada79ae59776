"""Tests of the linear-optimizer converters (§5): momentum, AggMo, QHM, any."""

from __future__ import annotations

import helpers
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import multiscale_optax as mso

# --- Reference optimizers, written plainly from their papers --------------


def _reference_aggmo(learning_rate, betas):
  """AggMo (Lucas et al. 2019): v_j <- b_j v_j + g; dw = -(lr/K) sum v_j."""
  def init_fn(params):
    return tuple(jax.tree.map(jnp.zeros_like, params) for _ in betas)

  def update_fn(updates, state, params=None):
    del params
    state = tuple(
        jax.tree.map(lambda v, g, b=beta: b * v + g, buffer, updates)
        for beta, buffer in zip(betas, state))
    increment = jax.tree.map(
        lambda *vs: -learning_rate / len(betas) * sum(vs), *state)
    return increment, state

  return optax.GradientTransformation(init_fn, update_fn)


def _reference_qhm(learning_rate, nu, beta):
  """QHM (Ma & Yarats 2019): m <- b m + (1-b) g; dw = -lr((1-nu) g + nu m)."""
  def init_fn(params):
    return jax.tree.map(jnp.zeros_like, params)

  def update_fn(updates, state, params=None):
    del params
    state = jax.tree.map(lambda m, g: beta * m + (1 - beta) * g, state,
                         updates)
    increment = jax.tree.map(
        lambda m, g: -learning_rate * ((1 - nu) * g + nu * m), state, updates)
    return increment, state

  return optax.GradientTransformation(init_fn, update_fn)


def _reference_nesterov(learning_rate, momentum):
  """Nesterov as in optax.sgd: m <- b m + g; dw = -lr (g + b m)."""
  def init_fn(params):
    return jax.tree.map(jnp.zeros_like, params)

  def update_fn(updates, state, params=None):
    del params
    state = jax.tree.map(lambda m, g: momentum * m + g, state, updates)
    increment = jax.tree.map(
        lambda m, g: -learning_rate * (g + momentum * m), state, updates)
    return increment, state

  return optax.GradientTransformation(init_fn, update_fn)


@pytest.mark.parametrize('name', ['heavy_ball', 'nesterov', 'aggmo', 'qhm'])
def test_multiscale_form_matches_reference_on_mlp(name):
  with jax.enable_x64(True):
    params, batches = helpers.mlp_problem(220)
    if name == 'heavy_ball':
      reference = optax.sgd(0.05, momentum=0.8)
      spec = mso.from_momentum(0.05, 0.8)
    elif name == 'nesterov':
      reference = _reference_nesterov(0.05, 0.8)
      spec = mso.from_momentum(0.05, 0.8, nesterov=True)
    elif name == 'aggmo':
      reference = _reference_aggmo(0.1, [0.0, 0.5, 0.9])
      spec = mso.from_aggmo(0.1, [0.0, 0.5, 0.9])
    else:
      reference = _reference_qhm(0.3, 0.7, 0.9)
      spec = mso.from_qhm(0.3, 0.7, 0.9)
    expected = helpers.run_trajectory(reference, params, batches)
    actual = helpers.run_trajectory(
        mso.multiscale(spec.learning_rates, spec.decays), params, batches)
    assert helpers.max_abs_difference(
        jax.tree.map(lambda h: h[-1], expected), params) > 0.05
    assert helpers.max_abs_difference(expected, actual) <= 1e-10


def test_momentum_closed_forms_and_exact_slow_decay():
  lr, beta = 0.05, 0.9
  spec = mso.from_momentum(lr, beta)
  assert spec.decays[0] == 1.0  # exactly, so multiscale stores no slow weight
  np.testing.assert_allclose(spec.decays, [1.0, beta], rtol=1e-14)
  np.testing.assert_allclose(
      spec.learning_rates, [lr / (1 - beta), -lr * beta / (1 - beta)],
      rtol=1e-12)
  nesterov = mso.from_momentum(lr, beta, nesterov=True)
  np.testing.assert_allclose(
      nesterov.learning_rates, [lr / (1 - beta), -lr * beta**2 / (1 - beta)],
      rtol=1e-12)
  state = mso.multiscale(spec.learning_rates, spec.decays).init(jnp.zeros(3))
  assert len(state.subweights) == 1
  sgd = mso.from_momentum(lr, 0.0)
  np.testing.assert_allclose(sgd.learning_rates, [lr])
  np.testing.assert_array_equal(sgd.decays, [1.0])
  qhm = mso.from_qhm(lr, 0.7, beta)
  np.testing.assert_allclose(
      qhm.learning_rates, [lr, -lr * 0.7 * beta], rtol=1e-12)


def _iterate_linear(transition, gradient_input, readout, gradients, state):
  weights = []
  for gradient in gradients:
    state = transition @ state + gradient_input * gradient
    weights.append(readout @ state)
  return np.array(weights)


def _aggmo_system(learning_rate, betas):
  betas = np.asarray(betas, np.float64)
  count = len(betas)
  transition = np.zeros((count + 1, count + 1))
  transition[0, 0] = 1.0
  transition[0, 1:] = -learning_rate / count * betas
  transition[1:, 1:] = np.diag(betas)
  return (transition, np.concatenate([[-learning_rate], np.ones(count)]),
          np.eye(count + 1)[0])


@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(
    st.floats(0.01, 1.0),
    st.lists(st.floats(0.0, 0.99), min_size=1, max_size=5),
    st.integers(0, 2**16),
)
def test_property_aggmo_random_betas(learning_rate, betas, seed):
  rng = np.random.default_rng(seed)
  spec = mso.from_aggmo(learning_rate, betas)
  transition, gradient_input, readout = _aggmo_system(learning_rate, betas)
  gradients = rng.normal(size=80)
  # A state reached from zero buffers with a random weight.
  start = np.zeros(len(betas) + 1)
  start[0] = rng.normal()
  start = _iterate_linear_state(
      transition, gradient_input, rng.normal(size=5), start)
  expected = _iterate_linear(
      transition, gradient_input, readout, gradients, start)
  subweights = spec.subweights_from_state @ start
  actual = helpers.literal_multiscale_weights(
      spec.learning_rates, spec.decays, gradients, subweights)
  scale = max(1.0, np.abs(expected).max())
  np.testing.assert_allclose(actual, expected, atol=1e-10 * scale)
  # Distinct positive betas: every mode is kept and rank one, so the state
  # round-trips.
  if min(betas) > 1e-3 and len(set(betas)) == len(betas) and min(
      abs(a - b) for a in [*betas, 1.0] for b in [*betas, 1.0]
      if a != b) > 1e-3:
    np.testing.assert_allclose(
        spec.state_from_subweights @ subweights, start,
        atol=1e-9 * max(1.0, np.abs(start).max()))
  np.testing.assert_allclose(
      spec.subweights_from_state @ spec.state_from_subweights,
      np.eye(len(spec.decays)), atol=1e-9)


def _iterate_linear_state(transition, gradient_input, gradients, state):
  for gradient in gradients:
    state = transition @ state + gradient_input * gradient
  return state


@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(
    st.floats(0.01, 1.0), st.floats(-0.5, 1.5), st.floats(0.0, 0.99),
    st.integers(0, 2**16))
def test_property_qhm_random_hyperparameters(learning_rate, nu, beta, seed):
  rng = np.random.default_rng(seed)
  spec = mso.from_qhm(learning_rate, nu, beta)
  gradients = rng.normal(size=80)
  weight, buffer, weights = 0.4, 0.0, []
  for gradient in gradients:
    buffer = beta * buffer + (1 - beta) * gradient
    weight = weight - learning_rate * ((1 - nu) * gradient + nu * buffer)
    weights.append(weight)
  subweights = np.array(
      [0.4 if decay == 1.0 else 0.0 for decay in spec.decays])
  actual = helpers.literal_multiscale_weights(
      spec.learning_rates, spec.decays, gradients, subweights)
  np.testing.assert_allclose(
      actual, weights, atol=1e-10 * max(1.0, np.abs(weights).max()))


@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(
    st.lists(st.floats(-0.9, 0.999), min_size=1, max_size=5),
    st.integers(0, 2**16))
def test_property_random_diagonalisable_system(eigenvalues, seed):
  rng = np.random.default_rng(seed)
  values = np.array([1.0, *eigenvalues])
  size = len(values)
  basis = rng.normal(size=(size, size)) + 2.0 * np.eye(size)
  hypothesis.assume(np.linalg.cond(basis) < 1e3)
  transition = basis @ np.diag(values) @ np.linalg.inv(basis)
  gradient_input = rng.normal(size=size)
  readout = rng.normal(size=size)
  spec = mso.from_linear_dynamics(transition, gradient_input, readout)
  assert spec.decays[0] == 1.0
  assert np.all(np.diff(spec.decays) < 0)
  start = rng.normal(size=size)
  gradients = rng.normal(size=60)
  expected = _iterate_linear(
      transition, gradient_input, readout, gradients, start)
  actual = helpers.literal_multiscale_weights(
      spec.learning_rates, spec.decays, gradients,
      spec.subweights_from_state @ start)
  np.testing.assert_allclose(
      actual, expected, atol=1e-8 * max(1.0, np.abs(expected).max()))


def test_repeated_eigenvalues_merge_and_unobservable_unreachable_drop():
  # Two buffers with the same beta are one mode; each buffer acts like heavy
  # ball with rate lr/K: slow rate (lr/K)/(1-b), fast rate -(lr/K)b/(1-b).
  lr, count = 0.1, 3
  merged = mso.from_aggmo(lr, [0.9, 0.9, 0.5])
  np.testing.assert_allclose(merged.decays, [1.0, 0.9, 0.5], rtol=1e-12)
  per_buffer = lr / count
  np.testing.assert_allclose(
      merged.learning_rates,
      [per_buffer * (2 / 0.1 + 1 / 0.5), -2 * per_buffer * 0.9 / 0.1,
       -per_buffer * 0.5 / 0.5], rtol=1e-10)
  assert len(mso.from_aggmo(0.1, [0.0, 0.9]).decays) == 2
  unobservable = mso.from_linear_dynamics(
      np.diag([1.0, 0.5]), [-1.0, 1.0], [1.0, 0.0])
  np.testing.assert_array_equal(unobservable.decays, [1.0])
  unreachable = mso.from_linear_dynamics(
      [[1.0, 0.3], [0.0, 0.5]], [-1.0, 0.0], [1.0, 0.0])
  np.testing.assert_array_equal(unreachable.decays, [1.0])
  np.testing.assert_allclose(unreachable.learning_rates, [1.0])


def test_momentum_state_continues_exactly():
  with jax.enable_x64(True):
    params, (inputs, targets) = helpers.mlp_problem(200)
    sgd = optax.sgd(0.05, momentum=0.8)
    spec = mso.from_momentum(0.05, 0.8)
    grad_fn = jax.grad(helpers.mlp_loss)

    @jax.jit
    def first_half(params):
      def step(carry, batch):
        params, state = carry
        updates, state = sgd.update(grad_fn(params, *batch), state)
        return (optax.apply_updates(params, updates), state), None

      carry, _ = jax.lax.scan(
          step, (params, sgd.init(params)), (inputs[:100], targets[:100]))
      return carry

    mid_params, (trace_state, _) = first_half(params)
    initial = mso.state_to_subweights(spec, [mid_params, trace_state.trace])
    assert initial[0] is None
    switched = helpers.run_trajectory(
        mso.multiscale(spec.learning_rates, spec.decays,
                       initial_subweights=initial),
        mid_params, (inputs[100:], targets[100:]))
    full = helpers.run_trajectory(sgd, params, (inputs, targets))
    assert helpers.max_abs_difference(
        jax.tree.map(lambda h: h[100:], full), switched) <= 1e-10
    weight, trace = mso.subweights_to_state(spec, mid_params, initial)
    assert helpers.max_abs_difference(weight, mid_params) <= 1e-12
    assert helpers.max_abs_difference(trace, trace_state.trace) <= 1e-10


@pytest.mark.parametrize('transition, gradient_input, match', [
    ([[1.0, 1.0], [0.0, 1.0]], [0.0, 1.0], 'Jordan'),
    ([[1.1]], [1.0], 'unstable'),
    ([[0.5, -0.5], [0.5, 0.5]], [1.0, 0.0], 'complex'),
    ([[-1.0]], [1.0], '<= -1'),
    ([[1.0, 0.0], [0.0, 0.5]], [1.0], 'input'),
    ([[1.0, 0.0, 0.0], [0.0, 0.5, 0.0]], [1.0, 0.0, 0.0], 'square'),
    ([[float('nan')]], [1.0], 'finite'),
])
def test_from_linear_dynamics_refuses_with_reason(
    transition, gradient_input, match):
  readout = np.eye(len(gradient_input))[0] if len(
      np.asarray(transition)) == len(gradient_input) else [1.0, 0.0]
  with pytest.raises(ValueError, match=match):
    mso.from_linear_dynamics(transition, gradient_input, readout)


def test_converter_arguments_are_validated():
  with pytest.raises(ValueError, match=r'betas.*Jordan'):
    mso.from_aggmo(0.1, [0.9, 1.0])
  with pytest.raises(ValueError, match='betas'):
    mso.from_aggmo(0.1, [1.2])
  with pytest.raises(ValueError, match='momentum'):
    mso.from_momentum(0.1, 1.0)
  with pytest.raises(ValueError, match='beta'):
    mso.from_qhm(0.1, 0.7, -0.1)
  with pytest.raises(TypeError, match='concrete'):
    jax.jit(lambda t: mso.from_linear_dynamics(t, [1.0], [1.0]))(
        jnp.ones((1, 1)))
  spec = mso.from_momentum(0.1, 0.9)
  with pytest.raises(ValueError, match='coordinates'):
    mso.state_to_subweights(spec, [jnp.zeros(2)])
  with pytest.raises(ValueError, match='None'):
    mso.subweights_to_state(spec, jnp.zeros(2), [jnp.zeros(2), None])


def test_eigenvalue_clustering_is_scale_invariant():
  # Legitimate, distinct eigenvalues that the old ||T||-scaled tolerance
  # took for a Jordan block.
  slow = mso.from_momentum(0.1, 0.999999)
  np.testing.assert_array_equal(slow.decays, [1.0, 0.999999])
  np.testing.assert_allclose(
      slow.learning_rates, [0.1 / (1 - 0.999999), -0.1 * 0.999999 / (
          1 - 0.999999)], rtol=1e-9)
  # A learning rate of 1e6 (||T|| ~ 1e6) changes the units, not the modes.
  for learning_rate in (1e-6, 1.0, 1e6):
    spec = mso.from_momentum(learning_rate, 0.9)
    np.testing.assert_array_equal(spec.decays, [1.0, 0.9])
    np.testing.assert_allclose(
        spec.learning_rates / learning_rate, [10.0, -9.0], rtol=1e-12)
  aggmo = mso.from_aggmo(0.1, [0.9, 0.999999])
  np.testing.assert_array_equal(aggmo.decays, [1.0, 0.999999, 0.9])
  merged = mso.from_aggmo(1e6, [0.9, 0.9, 0.5])
  np.testing.assert_array_equal(merged.decays, [1.0, 0.9, 0.5])
  # True Jordan blocks are still refused, at any scale.
  for learning_rate in (0.1, 1e6):
    with pytest.raises(ValueError, match='Jordan'):
      mso.from_aggmo(learning_rate, [0.9, 1.0])


def test_tolerance_means_one_distance_and_decays_stay_in_range():
  # Within the tolerance of 1: exactly 1, never 1.0000001.
  spec = mso.from_linear_dynamics([[1 + 1e-7]], [1.0], [1.0], tolerance=1e-6)
  np.testing.assert_array_equal(spec.decays, [1.0])
  # Beyond it: unstable, loudly.
  with pytest.raises(ValueError, match='unstable'):
    mso.from_linear_dynamics([[1 + 1e-7]], [1.0], [1.0])
  # The tolerance's range is validated; 0.5 used to accept lambda = 1.4 and
  # 1.0 to refuse lambda = -0.3.
  for tolerance in (0.5, 1.0, 0.0, -1e-9):
    with pytest.raises(ValueError, match='tolerance'):
      mso.from_linear_dynamics([[1.4]], [1.0], [1.0], tolerance=tolerance)
  spec = mso.from_linear_dynamics([[-0.3]], [1.0], [1.0], tolerance=1e-3)
  np.testing.assert_array_equal(spec.decays, [-0.3])
  # Two eigenvalues 1e-7 apart: one mode at tolerance 1e-6, two at 1e-9.
  transition = np.diag([0.5, 0.5 + 1e-7])
  merged = mso.from_linear_dynamics(
      transition, [1.0, 1.0], [1.0, 1.0], tolerance=1e-6)
  assert len(merged.decays) == 1
  separate = mso.from_linear_dynamics(transition, [1.0, 1.0], [1.0, 1.0])
  assert len(separate.decays) == 2
  # Complex transitions are refused, not silently made real.
  with pytest.raises(TypeError, match='complex'):
    mso.from_linear_dynamics(np.array([[0.5 + 0.1j]]), [1.0], [1.0])
  with pytest.raises(TypeError, match='complex'):
    mso.from_linear_dynamics([[0.5]], jnp.array([1.0 + 1.0j]), [1.0])


# --- L2 Init (Kumar et al. 2023) ------------------------------------------


def _reference_l2_init(learning_rate, l2, preconditioner=None):
  """theta <- theta - lr (d + l2 (theta - theta_0)), theta_0 kept at init.

  ``d`` is the gradient, or ``preconditioner``'s output for it (the pull
  is added after the preconditioner: the decoupled form).
  """
  preconditioner = preconditioner or optax.identity()

  def init_fn(params):
    return params, preconditioner.init(params)

  def update_fn(updates, state, params):
    anchor, inner = state
    directions, inner = preconditioner.update(updates, inner, params)
    increment = jax.tree.map(
        lambda d, w, w0: -learning_rate * (d + l2 * (w - w0)),
        directions, params, anchor)
    return increment, (anchor, inner)

  return optax.GradientTransformation(init_fn, update_fn)


def _reference_adam_on_regularised_loss(learning_rate, l2):
  """Adam on L + (l2/2)|theta - theta_0|^2: the pull goes through Adam."""
  adam = optax.adam(learning_rate)

  def init_fn(params):
    return params, adam.init(params)

  def update_fn(updates, state, params):
    anchor, inner = state
    gradients = jax.tree.map(
        lambda g, w, w0: g + l2 * (w - w0), updates, params, anchor)
    increment, inner = adam.update(gradients, inner, params)
    return increment, (anchor, inner)

  return optax.GradientTransformation(init_fn, update_fn)


# Rounding bound of the float64 equivalence tests on the MLP: each step the
# two forms round a handful of float64 operations on weights of size <= 1.2
# differently, a few ulp (<= 1e-15) per step, so 220 steps accumulate
# <= ~2e-13 where the dynamics do not amplify it (measured: <= 1.4e-15 for
# SGD and for Adam). 1e-10 leaves a factor of 500 for amplification and is
# still eight orders below the pull's own effect on these runs (>= 0.2;
# each test asserts > 1e-2), so a missing, doubled or coupled pull fails.
_L2_INIT_TOLERANCE = 1e-10


def test_l2_init_is_sgd_plus_pull_to_init_on_mlp():
  with jax.enable_x64(True):
    params, batches = helpers.mlp_problem(220)
    learning_rate, l2 = 0.05, 0.3
    spec = mso.from_l2_init(learning_rate, l2)
    expected = helpers.run_trajectory(
        _reference_l2_init(learning_rate, l2), params, batches)
    actual = helpers.run_trajectory(
        mso.multiscale(spec.learning_rates, spec.decays), params, batches)
    sgd = helpers.run_trajectory(optax.sgd(learning_rate), params, batches)
    assert helpers.max_abs_difference(expected, sgd) > 1e-2
    assert helpers.max_abs_difference(expected, actual) <= _L2_INIT_TOLERANCE


def test_l2_init_after_adam_is_the_decoupled_form():
  with jax.enable_x64(True):
    params, batches = helpers.mlp_problem(220)
    learning_rate, l2 = 0.01, 0.5
    spec = mso.from_l2_init(learning_rate, l2)
    actual = helpers.run_trajectory(
        optax.chain(optax.scale_by_adam(),
                    mso.multiscale(spec.learning_rates, spec.decays)),
        params, batches)
    decoupled = helpers.run_trajectory(
        _reference_l2_init(learning_rate, l2, optax.scale_by_adam()),
        params, batches)
    coupled = helpers.run_trajectory(
        _reference_adam_on_regularised_loss(learning_rate, l2), params,
        batches)
    assert helpers.max_abs_difference(decoupled, actual) <= (
        _L2_INIT_TOLERANCE)
    # Not Adam on the regularised loss: there Adam normalises the pull too.
    assert helpers.max_abs_difference(coupled, actual) > 1e-2


def test_l2_init_state_continues_a_running_l2_init_exactly():
  with jax.enable_x64(True):
    params, (inputs, targets) = helpers.mlp_problem(200)
    learning_rate, l2 = 0.05, 0.3
    spec = mso.from_l2_init(learning_rate, l2)
    reference = _reference_l2_init(learning_rate, l2)
    full = helpers.run_trajectory(reference, params, (inputs, targets))
    mid_params = jax.tree.map(lambda path: path[99], full)
    # The reference's state (theta, theta_0) as subweights: theta_0 is the
    # permanent part (implied), theta - theta_0 the decaying one.
    initial = mso.state_to_subweights(spec, [mid_params, params])
    assert initial[0] is None
    switched = helpers.run_trajectory(
        mso.multiscale(spec.learning_rates, spec.decays,
                       initial_subweights=initial),
        mid_params, (inputs[100:], targets[100:]))
    assert helpers.max_abs_difference(
        jax.tree.map(lambda path: path[100:], full), switched) <= (
            _L2_INIT_TOLERANCE)
    weight, anchor = mso.subweights_to_state(spec, mid_params, initial)
    assert helpers.max_abs_difference(weight, mid_params) <= 1e-12
    assert helpers.max_abs_difference(anchor, params) <= 1e-12


@st.composite
def _l2_init_hyperparameters(draw):
  learning_rate = draw(st.floats(1e-3, 1.0))
  # learning_rate * l2 up to 1.7: the decay 1 - lr * l2 down to -0.7, so
  # the overshooting regime (negative decays) is covered too.
  l2 = draw(st.floats(0.0, 1.7 / learning_rate))
  return learning_rate, l2


@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(_l2_init_hyperparameters(), st.integers(0, 2**16))
def test_property_l2_init_random_hyperparameters(hyperparameters, seed):
  learning_rate, l2 = hyperparameters
  rng = np.random.default_rng(seed)
  steps, size = 60, 3
  # Online linear regression, loss (x.w - y)^2 / 2, |x| = 1/2: with
  # lr * l2 <= 1.7 every step contracts, so nothing overflows.
  inputs = rng.normal(size=(steps, size))
  inputs *= 0.5 / np.linalg.norm(inputs, axis=1, keepdims=True)
  targets = rng.normal(size=steps)
  anchor = rng.normal(size=size)
  expected, weight = [], anchor.copy()
  for x, y in zip(inputs, targets):
    gradient = (x @ weight - y) * x
    weight = weight - learning_rate * (gradient + l2 * (weight - anchor))
    expected.append(weight)
  expected = np.array(expected)
  spec = mso.from_l2_init(learning_rate, l2)
  with jax.enable_x64(True):
    optimizer = mso.multiscale(spec.learning_rates, spec.decays)
    params = jnp.asarray(anchor)
    state = optimizer.init(params)
    actual = []
    for x, y in zip(inputs, targets):
      gradient = (x @ np.asarray(params) - y) * x
      updates, state = optimizer.update(jnp.asarray(gradient), state)
      params = optax.apply_updates(params, updates)
      actual.append(np.asarray(params))
  # A few ulp per step over 60 contracting steps: far below 1e-12.
  np.testing.assert_allclose(
      actual, expected, rtol=0, atol=1e-12 * max(1.0, np.abs(expected).max()))
  # The closed form is the spectral form of the linear system
  # s = (theta, theta_0), T = [[1 - lr l2, lr l2], [0, 1]], b = (-lr, 0),
  # wherever from_linear_dynamics separates the two eigenvalues. Its
  # eigenvectors are computed with an error of about eps / (separation of
  # the eigenvalues) = 1e-16 / (lr l2); the closed form has none.
  pull = learning_rate * l2
  if pull == 0.0 or pull > 1e-6:
    general = mso.from_linear_dynamics(
        [[1.0 - pull, pull], [0.0, 1.0]], [-learning_rate, 0.0], [1.0, 0.0])
    eigenvector_error = 1e-12 + (1e-14 / pull if pull else 0.0)
    for field, value in zip(spec._fields, spec):
      np.testing.assert_allclose(
          value, getattr(general, field), rtol=eigenvector_error,
          atol=eigenvector_error * max(1.0, learning_rate), err_msg=field)


def test_l2_init_modes_at_the_edges():
  spec = mso.from_l2_init(0.1, 0.5)
  np.testing.assert_array_equal(spec.decays, [1.0, 0.95])
  np.testing.assert_array_equal(spec.learning_rates, [0.0, 0.1])
  # The permanent part (rate 0) is implied: one stored subweight.
  state = mso.multiscale(spec.learning_rates, spec.decays).init(jnp.zeros(3))
  assert len(state.subweights) == 1
  # No pull: plain SGD, one mode, as from_momentum(lr, 0).
  sgd = mso.from_l2_init(0.1, 0.0)
  np.testing.assert_array_equal(sgd.decays, [1.0])
  np.testing.assert_array_equal(sgd.learning_rates, [0.1])
  # A pull far below from_linear_dynamics' tolerance keeps its own mode.
  tiny = mso.from_l2_init(1e-4, 1e-8)
  np.testing.assert_array_equal(tiny.decays, [1.0, 1.0 - 1e-12])
  # lr * l2 = 1: back to theta_0 every step (decay 0); up to 2: overshoot.
  np.testing.assert_array_equal(mso.from_l2_init(0.5, 2.0).decays, [1.0, 0.0])
  np.testing.assert_allclose(
      mso.from_l2_init(1.0, 1.99).decays, [1.0, -0.99], rtol=1e-12)


@pytest.mark.parametrize('learning_rate, l2, error, match', [
    (0.0, 0.1, ValueError, r'`learning_rate` must lie in \(0.0, inf\]'),
    (-0.1, 0.1, ValueError, '`learning_rate`'),
    (float('inf'), 0.1, ValueError, '`learning_rate` must be finite'),
    (float('nan'), 0.1, ValueError, '`learning_rate` must be finite'),
    (0.1, -1e-3, ValueError, r'`l2` must lie in \[0.0, inf\]'),
    (0.1, float('inf'), ValueError, '`l2` must be finite'),
    (0.5, 4.0, ValueError, r'`learning_rate \* l2` must be < 2.*\(-1, 1\]'),
    (1.0, 3.0, ValueError, r'`learning_rate \* l2` must be < 2.*diverges'),
    (1e200, 1e200, ValueError, r'`learning_rate \* l2` must be < 2'),
    ('0.1', 0.1, TypeError, '`learning_rate` must be a real scalar'),
    (0.1, True, TypeError, '`l2` must be a real scalar'),
    (0.1, np.ones(2), TypeError, '`l2` must be a real scalar'),
])
def test_l2_init_arguments_are_validated(learning_rate, l2, error, match):
  with pytest.raises(error, match=match):
    mso.from_l2_init(learning_rate, l2)


def test_l2_init_refuses_traced_hyperparameters():
  with pytest.raises(TypeError, match='`l2` must be concrete'):
    jax.jit(lambda l2: mso.from_l2_init(0.1, l2))(jnp.asarray(0.5))
  with pytest.raises(TypeError, match='`learning_rate` must be concrete'):
    jax.jit(lambda lr: mso.from_l2_init(lr, 0.5))(jnp.asarray(0.1))
