"""Tests of the Benna–Fusi synapse and its modes (§4, Appendix)."""

from __future__ import annotations

import warnings

import helpers
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import multiscale_optax as mso

LEARNING_RATE = 0.1


def _transition(capacities, conductances, leak):
  """T of eqs. (2)-(3), written out entry by entry (float64 NumPy)."""
  c = np.asarray(capacities, np.float64)
  g = np.asarray(conductances, np.float64)
  n = len(c)
  couplings = np.concatenate([g, [leak]])
  matrix = np.zeros((n, n))
  for k in range(n):
    matrix[k, k] = 1.0 - couplings[k] / c[k]
    if k > 0:
      matrix[k, k] -= g[k - 1] / c[k]
      matrix[k, k - 1] = g[k - 1] / c[k]
    if k + 1 < n:
      matrix[k, k + 1] = g[k] / c[k]
  return matrix


def _reference_benna_fusi(capacities, conductances, leak, learning_rate,
                          initial_chain):
  """Eqs. (2)-(3) as u <- T u - d with the chain stacked on axis 0."""
  matrix = jnp.asarray(_transition(capacities, conductances, leak))
  first_capacity = float(capacities[0])

  def init_fn(params):
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *initial_chain)

  def update_fn(updates, state, params=None):
    del params

    def leaf(gradient, chain):
      new = jnp.tensordot(matrix, chain, axes=1)
      new = new.at[0].add(-learning_rate * gradient / first_capacity)
      return new[0] - chain[0], new

    pairs = jax.tree.map(leaf, updates, state)
    increments = jax.tree.map(lambda pair: pair[0], pairs,
                              is_leaf=lambda x: isinstance(x, tuple))
    new_state = jax.tree.map(lambda pair: pair[1], pairs,
                             is_leaf=lambda x: isinstance(x, tuple))
    return increments, new_state

  return optax.GradientTransformation(init_fn, update_fn)


def _random_chain(params, num_variables, key, spread=0.3):
  """u_1 = params, u_2..u_n = params + noise (a non-trivial chain state)."""
  chain = [params]
  for _ in range(num_variables - 1):
    key, subkey = jax.random.split(key)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(subkey, len(leaves))
    chain.append(treedef.unflatten([
        leaf + spread * jax.random.normal(k, leaf.shape, leaf.dtype)
        for leaf, k in zip(leaves, keys)]))
  return chain


@pytest.mark.parametrize('leak', [0.0, 0.01])
def test_benna_fusi_equals_multiscale_form_on_mlp(leak):
  with jax.enable_x64(True):
    capacities, conductances = mso.benna_fusi_defaults(8)
    params = helpers.mlp_params(jax.random.PRNGKey(0))
    batches = helpers.mlp_batches(jax.random.PRNGKey(1), 250)
    chain = _random_chain(params, 8, jax.random.PRNGKey(2))
    modes = mso.benna_fusi_modes(
        capacities, conductances, learning_rate=LEARNING_RATE, leak=leak)
    reference = helpers.run_trajectory(
        _reference_benna_fusi(
            capacities, conductances, leak, LEARNING_RATE, chain),
        params, batches)
    chain_form = helpers.run_trajectory(
        mso.benna_fusi(capacities, conductances, learning_rate=LEARNING_RATE,
                       leak=leak, initial_chain=chain),
        params, batches)
    multiscale_form = helpers.run_trajectory(
        mso.multiscale(
            modes.learning_rates, modes.decays,
            initial_subweights=mso.state_to_subweights(modes, chain)),
        params, batches)
    # The trajectory must actually move away from the start.
    assert helpers.max_abs_difference(
        jax.tree.map(lambda h: h[-1], reference), params) > 0.1
    assert helpers.max_abs_difference(reference, chain_form) <= 1e-10
    assert helpers.max_abs_difference(reference, multiscale_form) <= 1e-10


def test_modes_match_eigendecomposition_and_paper_facts():
  with jax.enable_x64(True):
    capacities, conductances = mso.benna_fusi_defaults(8)
    matrix = _transition(capacities, conductances, 0.0)
    modes = mso.benna_fusi_modes(capacities, conductances, learning_rate=0.3)
    vectors = np.asarray(modes.eigenvectors)
    inverse = np.asarray(modes.inverse_eigenvectors)
    decays = np.asarray(modes.decays)
    np.testing.assert_allclose(
        matrix @ vectors, vectors * decays[None, :], atol=1e-13)
    np.testing.assert_allclose(inverse @ vectors, np.eye(8), atol=1e-12)
    np.testing.assert_array_equal(vectors[0], np.ones(8))
    assert decays[0] == 1.0  # exactly: the conserved mode
    assert np.all(np.diff(decays) < 0) and decays[-1] > -1.0
    np.testing.assert_allclose(vectors[:, 0], np.ones(8), rtol=1e-10)
    np.testing.assert_allclose(
        np.asarray(modes.learning_rates), 0.3 * inverse[:, 0] / 1.0,
        rtol=1e-12)
    assert np.all(np.asarray(modes.learning_rates) > 0)
    expected_eigenvalues = np.sort(np.linalg.eigvals(matrix).real)[::-1]
    np.testing.assert_allclose(decays, expected_eigenvalues, atol=1e-13)
    leaky = mso.benna_fusi_modes(capacities, conductances, leak=0.01)
    assert float(leaky.decays[0]) < 1.0


def test_state_memory_multiscale_stores_one_fewer_variable():
  capacities, conductances = mso.benna_fusi_defaults(8)
  params = {'w': jnp.zeros((3, 2)), 'b': jnp.zeros(2)}
  modes = mso.benna_fusi_modes(capacities, conductances)
  # As NumPy arrays the decays are fixed, so the decay-1 mode is implied
  # (JAX-array decays may change, as under inject_hyperparams, and are all
  # stored).
  state = mso.multiscale(
      np.asarray(modes.learning_rates), np.asarray(modes.decays)).init(params)
  assert len(state.subweights) == 7
  leaky = mso.benna_fusi_modes(capacities, conductances, leak=0.01)
  assert len(mso.multiscale(
      np.asarray(leaky.learning_rates),
      np.asarray(leaky.decays)).init(params).subweights) == 8
  chain_state = mso.benna_fusi(capacities, conductances).init(params)
  assert len(chain_state.chain) == 8
  assert jax.tree.structure(chain_state.chain[3]) == jax.tree.structure(
      params)


def _iterate_chain(matrix, first_capacity, learning_rate, gradients, chain):
  weights = []
  for gradient in gradients:
    chain = matrix @ chain
    chain[0] -= learning_rate * gradient / first_capacity
    weights.append(chain[0])
  return np.array(weights)


@st.composite
def _chains(draw):
  n = draw(st.integers(2, 12))
  capacities = np.array(draw(st.lists(
      st.floats(0.3, 20.0), min_size=n, max_size=n)))
  fractions = np.array(draw(st.lists(
      st.floats(0.01, 0.45), min_size=n - 1, max_size=n - 1)))
  # Each coupling takes a fraction below 1/2 of its smaller neighbour, so
  # every variable's outflow is below 1 and the update is stable.
  conductances = fractions * np.minimum(capacities[:-1], capacities[1:])
  leak = draw(st.sampled_from([0.0, 0.0, 0.05]))
  leak = leak * capacities[-1]
  seed = draw(st.integers(0, 2**16))
  return capacities, conductances, leak, seed


_jitted_modes = jax.jit(mso.benna_fusi_modes)


@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(_chains())
def test_property_chain_equals_modes(chain_parameters):
  capacities, conductances, leak, seed = chain_parameters
  n = len(capacities)
  rng = np.random.default_rng(seed)
  with jax.enable_x64(True):
    # Jitted: one compilation per chain length instead of one per eager op.
    modes = _jitted_modes(
        jnp.asarray(capacities), jnp.asarray(conductances),
        learning_rate=0.7, leak=leak)
  matrix = _transition(capacities, conductances, leak)
  vectors = np.asarray(modes.eigenvectors)
  inverse = np.asarray(modes.inverse_eigenvectors)
  decays = np.asarray(modes.decays)
  assert (decays[0] == 1.0) == (leak == 0.0)
  assert np.all(decays < 1.0 + 1e-15) and np.all(decays > -1.0)
  np.testing.assert_allclose(
      matrix @ vectors, vectors * decays[None, :],
      atol=1e-10 * max(1.0, np.abs(vectors).max()))
  chain = rng.normal(size=n)
  gradients = rng.normal(size=60)
  expected = _iterate_chain(matrix, capacities[0], 0.7, gradients, chain.copy())
  actual = helpers.literal_multiscale_weights(
      np.asarray(modes.learning_rates), decays, gradients, inverse @ chain)
  np.testing.assert_allclose(
      actual, expected, atol=1e-10 * max(1.0, np.abs(expected).max()))
  if float(modes.condition_number) < 1e4:
    np.testing.assert_allclose(
        vectors @ (inverse @ chain), chain,
        atol=1e-10 * np.abs(chain).max())


def test_state_maps_round_trip_on_pytree():
  with jax.enable_x64(True):
    capacities, conductances = mso.benna_fusi_defaults(8)
    modes = mso.benna_fusi_modes(capacities, conductances)
    params = helpers.mlp_params(jax.random.PRNGKey(3))
    chain = _random_chain(params, 8, jax.random.PRNGKey(4))
    subweights = mso.state_to_subweights(
        modes, mso.BennaFusiState(jnp.zeros([], jnp.int32), tuple(chain)))
    assert subweights[0] is None and all(
        value is not None for value in subweights[1:])
    back = mso.subweights_to_state(modes, params, subweights)
    scale = max(float(jnp.max(jnp.abs(leaf)))
                for leaf in jax.tree.leaves(chain))
    assert helpers.max_abs_difference(tuple(chain), back) <= 1e-10 * scale


def test_switch_forms_mid_training_both_directions():
  with jax.enable_x64(True):
    capacities, conductances = mso.benna_fusi_defaults(8)
    modes = mso.benna_fusi_modes(
        capacities, conductances, learning_rate=LEARNING_RATE)
    params = helpers.mlp_params(jax.random.PRNGKey(5))
    inputs, targets = helpers.mlp_batches(jax.random.PRNGKey(6), 240)
    first = (inputs[:120], targets[:120])
    second = (inputs[120:], targets[120:])
    chain_opt = mso.benna_fusi(
        capacities, conductances, learning_rate=LEARNING_RATE)
    full = helpers.run_trajectory(chain_opt, params, (inputs, targets))
    grad_fn = jax.grad(helpers.mlp_loss)

    def run(optimizer, params, batches):
      def step(carry, batch):
        params, state = carry
        updates, state = optimizer.update(grad_fn(params, *batch), state)
        return (optax.apply_updates(params, updates), state), None

      carry, _ = jax.lax.scan(step, (params, optimizer.init(params)), batches)
      return carry

    # Chain -> multiscale.
    mid_params, chain_state = run(chain_opt, params, first)
    multiscale_opt = mso.multiscale(
        modes.learning_rates, modes.decays,
        initial_subweights=mso.state_to_subweights(modes, chain_state))
    end_params, _ = run(multiscale_opt, mid_params, second)
    last = jax.tree.map(lambda h: h[-1], full)
    assert helpers.max_abs_difference(end_params, last) <= 1e-10
    # Multiscale -> chain, through get_subweights (same order as the modes).
    # NumPy (fixed) decays: the decay-1 mode is the implied part, so the
    # subweights line up with the modes.
    ms_params, ms_state = run(
        mso.multiscale(np.asarray(modes.learning_rates),
                       np.asarray(modes.decays)), params, first)
    values = mso.get_subweights(ms_params, ms_state).values
    chain = mso.subweights_to_state(modes, ms_params, [None, *values[1:]])
    resumed = mso.benna_fusi(
        capacities, conductances, learning_rate=LEARNING_RATE,
        initial_chain=chain)
    end_params, _ = run(resumed, ms_params, second)
    assert helpers.max_abs_difference(end_params, last) <= 1e-10


def _eigh_error_bounds(modes, num_variables):
  """First-order error bounds of a float64 benna_fusi_modes, on any backend.

  Gamma has norm at most 1 (a symmetric stable transition), so a
  backward-stable eigh (LAPACK on CPU, cuSOLVER on GPU) returns the
  eigenvalues of Gamma + E with ||E|| <= c n eps (c = 10 covers the constant
  of every backend's algorithm): each eigenvalue moves by at most
  delta_value = c n eps (Weyl) and each unit eigenvector by at most
  delta_vector = c n eps / gap (Davis-Kahan), gap being the smallest
  distance between two eigenvalues.
  """
  eps = np.finfo(np.float64).eps
  decays = np.asarray(modes.decays)
  gap = np.min(-np.diff(decays)) if num_variables > 1 else 1.0
  delta_value = 10 * num_variables * eps
  return delta_value, delta_value / gap, gap


def test_jit_and_schedule_equivalence():
  with jax.enable_x64(True):
    capacities, conductances = mso.benna_fusi_defaults(6)
    eager = mso.benna_fusi_modes(capacities, conductances, leak=0.02)
    jitted = jax.jit(mso.benna_fusi_modes)(
        jnp.asarray(capacities), jnp.asarray(conductances), leak=0.02)
    delta_value, delta_vector, _ = _eigh_error_bounds(eager, 6)
    # Eager and jitted runs may compile differently; each lies within the
    # bounds of the exact decomposition, so they lie twice the bound apart.
    psi_first = np.sqrt(np.asarray(eager.learning_rates) * capacities[0])
    sqrt_b = np.sqrt(capacities / capacities[0])
    vectors = np.abs(np.asarray(eager.eigenvectors))
    bounds = {
        'decays': 2 * delta_value,
        # alpha_i = psi_1i^2 / C_1: |d alpha| <= 2 |psi_1i| |d psi| / C_1.
        'learning_rates': 2 * 2 * psi_first * delta_vector / capacities[0],
        # V_ki = psi_ki / (psi_1i b_k): the numerator's and the
        # denominator's relative errors add.
        'eigenvectors': 2 * delta_vector * (
            1.0 / sqrt_b[:, None] + vectors) / psi_first[None, :],
        # W_ik = psi_1i psi_ki b_k: |dW| <= (|psi_ki| + |psi_1i|) b_k d psi.
        'inverse_eigenvectors': 2 * 2 * delta_vector * sqrt_b[None, :],
    }
    for name, bound in bounds.items():
      difference = np.abs(
          np.asarray(getattr(eager, name)) - np.asarray(getattr(jitted, name)))
      assert np.all(difference <= bound), (name, difference, bound)
    # cond(V) moves relatively by at most 2 cond(V) ||dV|| / ||V||, with
    # ||dV||_2 <= n max |dV_ki|.
    relative_vector_error = 6 * np.max(bounds['eigenvectors']) / (
        np.linalg.norm(np.asarray(eager.eigenvectors), 2))
    np.testing.assert_allclose(
        eager.condition_number, jitted.condition_number,
        rtol=2 * float(eager.condition_number) * relative_vector_error)
    schedule = optax.linear_schedule(0.2, 0.01, 40)
    unit = mso.benna_fusi_modes(capacities, conductances)
    gradients = jnp.asarray(np.random.default_rng(0).normal(size=(60, 3)))
    chain_opt = mso.benna_fusi(capacities, conductances,
                               learning_rate=schedule)
    multiscale_opt = mso.multiscale(
        unit.learning_rates, unit.decays, learning_rate=schedule)
    trajectories = []
    for optimizer in (chain_opt, multiscale_opt):
      params, state = jnp.zeros(3), optimizer.init(jnp.zeros(3))
      update = jax.jit(optimizer.update)
      history = []
      for gradient in gradients:
        updates, state = update(gradient, state)
        params = params + updates
        history.append(params)
      trajectories.append(np.stack(history))
    # Both forms compute w_K = -sum_t eta_t h_{K-1-t} g_t, with the memory
    # kernel h_k = sum_i alpha_i lambda_i^k. The modes' errors move h_k by
    # at most sum_i (|d alpha_i| + k |alpha_i| d lambda); each of the K
    # steps of either recurrence adds at most (n + 2) eps times the largest
    # state, itself at most the drive sum_t eta_t |g_t| (h_k <= h_0 = 1/C_1
    # = 1 for the default chain).
    delta_value, delta_vector, _ = _eigh_error_bounds(unit, 6)
    steps = gradients.shape[0]
    rates = np.asarray(unit.learning_rates)
    kernel_error = np.sum(
        2 * np.sqrt(rates * capacities[0]) * delta_vector / capacities[0]
        + steps * np.abs(rates) * delta_value)
    drive = 0.2 * float(np.max(np.sum(np.abs(np.asarray(gradients)), axis=0)))
    eps = np.finfo(np.float64).eps
    bound = drive * kernel_error + 2 * steps * (6 + 2) * eps * drive
    difference = np.max(np.abs(trajectories[0] - trajectories[1]))
    assert difference <= bound, (difference, bound)
    # The trajectory moved: the comparison is not between two zeros.
    assert np.max(np.abs(trajectories[0])) > 100 * bound


def test_gradient_with_respect_to_capacities_and_conductances():
  with jax.enable_x64(True):
    capacities, conductances = mso.benna_fusi_defaults(5)
    lag = 40

    def kernel_value(capacities, conductances):
      modes = mso.benna_fusi_modes(capacities, conductances, leak=0.01)
      return mso.memory_kernel(
          modes.learning_rates, modes.decays, lag + 1)[lag]

    def direct_value(capacities, conductances):
      # e_1^T T^k e_1 / C_1 with T built in jnp: an independent route.
      n = capacities.shape[0]
      outflow = jnp.concatenate([conductances, jnp.array([0.01])])
      inflow = jnp.concatenate([jnp.zeros(1), conductances])
      matrix = (jnp.diag(1.0 - (inflow + outflow) / capacities)
                + jnp.diag(conductances / capacities[:-1], 1)
                + jnp.diag(conductances / capacities[1:], -1))
      power = jnp.linalg.matrix_power(matrix, lag)
      return power[0, 0] / capacities[0] * (n > 0)

    args = (jnp.asarray(capacities), jnp.asarray(conductances))
    grads = jax.grad(kernel_value, argnums=(0, 1))(*args)
    direct = jax.grad(direct_value, argnums=(0, 1))(*args)
    modes = mso.benna_fusi_modes(*args, leak=0.01)
    delta_value, delta_vector, gap = _eigh_error_bounds(modes, 5)
    eps = np.finfo(np.float64).eps
    rates = np.asarray(modes.learning_rates)
    # Value: the modes route errs by sum_i (|d alpha_i| + lag alpha_i
    # d lambda) (see test_jit_and_schedule_equivalence); the direct route
    # by its ceil(log2 lag) + 1 = 7 products of substochastic matrices
    # (entries in [0, 1], rows summing to at most 1), each adding at most
    # n eps per entry.
    value_bound = np.sum(
        2 * np.sqrt(rates * capacities[0]) * delta_vector / capacities[0]
        + lag * rates * delta_value) + 7 * 5 * eps / capacities[0]
    difference = abs(float(kernel_value(*args)) - float(direct_value(*args)))
    assert difference <= value_bound, (difference, value_bound)
    # Gradient: eigh's derivative divides eigenvector perturbations by the
    # gap once more (d psi_i = sum_j psi_j <psi_j, dGamma psi_i> /
    # (l_i - l_j)) and the kernel's lag-th power multiplies them by lag, so
    # its relative error is at most lag * delta_vector / gap.
    gradient_rtol = lag * delta_vector / gap
    for grad, other in zip(grads, direct):
      assert np.all(np.isfinite(grad))
      np.testing.assert_allclose(
          grad, other, rtol=gradient_rtol,
          atol=gradient_rtol * float(np.max(np.abs(other))))
    # Central differences of step h err by the truncation h^2 |f'''| / 6
    # plus twice the value's error bound divided by 2h.
    step = 1e-6
    value = abs(float(kernel_value(*args)))
    for which in range(2):
      for index in range(args[which].shape[0]):
        plus = [a for a in args]
        minus = [a for a in args]
        plus[which] = plus[which].at[index].add(step)
        minus[which] = minus[which].at[index].add(-step)
        numeric = (kernel_value(*plus) - kernel_value(*minus)) / (2 * step)
        # h_lag is a sum of lambda_i^lag terms and each lambda_i moves with
        # x at a relative rate of at most 1/x, so each derivative in x
        # brings down at most a factor lag / x: |f'''| <= (lag / x)^3 |f|.
        parameter = float(args[which][index])
        truncation = step**2 * (lag / parameter) ** 3 * value / 6
        bound = truncation + value_bound / step
        assert abs(float(grads[which][index]) - float(numeric)) <= bound, (
            which, index, grads[which][index], numeric, bound)


def test_condition_warning():
  with jax.enable_x64(True):
    capacities, conductances = mso.benna_fusi_defaults(8)
    with warnings.catch_warnings():
      warnings.simplefilter('error')
      modes = mso.benna_fusi_modes(capacities, conductances)
    assert float(modes.condition_number) < 10.0
    # Finite but ill-conditioned: u_1 barely coupled to a leaky u_2.
    with pytest.warns(UserWarning, match='condition number'):
      badly_scaled = mso.benna_fusi_modes([1.0, 1.0], [1e-7], leak=0.3)
    assert float(badly_scaled.condition_number) > 1e6
    # Documented: the round trip stays accurate while V is finite.
    chain = np.array([0.3, -1.2])
    round_trip = np.asarray(badly_scaled.eigenvectors) @ (
        np.asarray(badly_scaled.inverse_eigenvectors) @ chain)
    np.testing.assert_allclose(round_trip, chain, atol=1e-12)
    # Long default chain: slow eigenvectors underflow, V is not finite, but
    # the learning rates and decays still reproduce the chain's weight.
    long_capacities, long_conductances = mso.benna_fusi_defaults(28)
    with pytest.warns(UserWarning, match='not finite'):
      long_modes = mso.benna_fusi_modes(long_capacities, long_conductances)
    assert np.isinf(float(long_modes.condition_number))
    assert np.all(np.isfinite(np.asarray(long_modes.learning_rates)))
    assert np.sum(np.asarray(long_modes.decays) == 1.0) == 1
    gradients = np.random.default_rng(1).normal(size=200)
    expected = _iterate_chain(
        _transition(long_capacities, long_conductances, 0.0), 1.0, 1.0,
        gradients, np.zeros(28))
    actual = helpers.literal_multiscale_weights(
        np.asarray(long_modes.learning_rates),
        np.asarray(long_modes.decays), gradients, np.zeros(28))
    np.testing.assert_allclose(actual, expected, atol=1e-10)
    # No warning (and no error) when traced.
    with warnings.catch_warnings():
      warnings.simplefilter('error')
      jax.jit(mso.benna_fusi_modes)(
          jnp.asarray(long_capacities), jnp.asarray(long_conductances))


def test_single_variable_chain_is_sgd_or_leaky_sgd():
  with jax.enable_x64(True):
    modes = mso.benna_fusi_modes([2.0], [], learning_rate=0.5)
    np.testing.assert_allclose(modes.learning_rates, [0.25])
    np.testing.assert_array_equal(modes.decays, [1.0])
    leaky = mso.benna_fusi_modes([2.0], [], leak=0.5)
    np.testing.assert_allclose(leaky.decays, [0.75])
    opt = mso.benna_fusi([2.0], [], learning_rate=0.5, leak=0.5)
    params = jnp.ones(2)
    state = opt.init(params)
    updates, state = opt.update(jnp.ones(2), state)
    np.testing.assert_allclose(params + updates, 0.75 - 0.25)


@pytest.mark.parametrize('kwargs, match', [
    (dict(capacities=[1.0, 0.0], conductances=[0.1]), 'capacities'),
    (dict(capacities=[1.0, -2.0], conductances=[0.1]), 'capacities'),
    (dict(capacities=[1.0, 2.0], conductances=[0.0]), 'conductances'),
    (dict(capacities=[1.0, 2.0], conductances=[-0.1]), 'conductances'),
    (dict(capacities=[1.0, 2.0], conductances=[0.1, 0.1]), 'conductances'),
    (dict(capacities=[1.0, 2.0, 4.0], conductances=[0.1]), 'conductances'),
    (dict(capacities=[], conductances=[]), 'capacities'),
    (dict(capacities=[1.0, 1.0], conductances=[1.5]), 'conductances'),
    (dict(capacities=[1.0], conductances=[], leak=2.5), 'leak'),
    (dict(capacities=[1.0, 2.0], conductances=[0.1], leak=-0.1), 'leak'),
    (dict(capacities=[1.0, float('nan')], conductances=[0.1]),
     'capacities'),
])
@pytest.mark.parametrize('constructor', [mso.benna_fusi, mso.benna_fusi_modes])
def test_bad_input_raises_at_construction(constructor, kwargs, match):
  kwargs = dict(kwargs)
  capacities = kwargs.pop('capacities')
  conductances = kwargs.pop('conductances')
  with pytest.raises(ValueError, match=match):
    constructor(capacities, conductances, **kwargs)


def test_unstable_message_explains():
  with pytest.raises(ValueError, match=r'unstable.*<= -1'):
    mso.benna_fusi([1.0, 1.0], [1.5])
  with pytest.raises(ValueError, match='initial_chain'):
    mso.benna_fusi([1.0, 2.0], [0.1], initial_chain=[None])
  with pytest.raises(TypeError, match='num_variables'):
    mso.benna_fusi_defaults(2.0)
  with pytest.raises(ValueError, match='num_variables'):
    mso.benna_fusi_defaults(0)


def test_optax_integration_dtype_abstract_init_donation():
  capacities, conductances = mso.benna_fusi_defaults(4)
  opt = mso.benna_fusi(capacities, conductances, learning_rate=0.1,
                       state_dtype=jnp.bfloat16)
  params = {'w': jnp.ones((4, 3), jnp.bfloat16), 'b': jnp.zeros(3)}
  abstract = jax.eval_shape(opt.init, params)
  state = opt.init(params)
  assert jax.tree.map(lambda x: (x.shape, x.dtype), abstract) == jax.tree.map(
      lambda x: (x.shape, x.dtype), state)
  assert all(leaf.dtype == jnp.bfloat16
             for leaf in jax.tree.leaves(state.chain))

  @jax.jit
  def step(params, state, grads):
    updates, state = opt.update(grads, state, params, unused_extra=1.0)
    return optax.apply_updates(params, updates), state

  step = jax.jit(step, donate_argnums=(0, 1))
  grads = jax.tree.map(jnp.ones_like, params)
  new_params, new_state = step(params, state, grads)
  assert jax.tree.map(lambda x: x.dtype, new_params) == {
      'w': jnp.bfloat16, 'b': jnp.float32}
  assert jax.tree.structure(new_state) == jax.tree.structure(state)
  # The params track the stored (bfloat16) u_1 exactly.
  assert float(new_params['b'][0]) == float(
      jnp.asarray(-0.1, jnp.bfloat16))
  assert float(new_params['b'][0]) == float(new_state.chain[0]['b'][0])


def test_inject_hyperparams_learning_rate():
  capacities, conductances = mso.benna_fusi_defaults(4)
  injected = optax.inject_hyperparams(
      mso.benna_fusi, static_args=('capacities', 'conductances'))(
          capacities=tuple(capacities), conductances=tuple(conductances),
          learning_rate=0.1)
  direct = mso.benna_fusi(capacities, conductances, learning_rate=0.1)
  gradients = np.random.default_rng(2).normal(size=(5, 3)).astype(np.float32)
  results = []
  for optimizer in (injected, direct):
    params = jnp.zeros(3)
    state = optimizer.init(params)
    update = jax.jit(optimizer.update)
    for gradient in gradients:
      updates, state = update(jnp.asarray(gradient), state)
      params = params + updates
    results.append(params)
  np.testing.assert_allclose(results[0], results[1], rtol=1e-6, atol=1e-7)


def test_narrow_state_is_stored_through_an_explicit_rounding():
  # XLA:GPU may delete a float32 -> bfloat16 -> float32 round trip inside a
  # fusion, so the increment (stored u_1 minus old u_1) would not be the
  # change actually stored. The storage goes through reduce_precision,
  # which XLA keeps; this CPU test fails if that rounding is removed.
  capacities, conductances = mso.benna_fusi_defaults(3)
  params = {'w': jnp.ones((4, 3)), 'b': jnp.zeros(3, jnp.bfloat16)}
  for state_dtype, expected in ((jnp.bfloat16, 3 * 2), (None, 3)):
    opt = mso.benna_fusi(
        capacities, conductances, learning_rate=0.1, state_dtype=state_dtype)
    state = opt.init(params)
    lowered = jax.jit(opt.update).lower(params, state).as_text()
    # One rounding per narrow chain variable and leaf: bfloat16 state for
    # both leaves, or (state_dtype None) only the bfloat16 leaf's chain.
    assert lowered.count('reduce_precision') == expected, state_dtype
  wide = mso.benna_fusi(capacities, conductances, state_dtype=jnp.float32)
  lowered = jax.jit(wide.update).lower(
      params, wide.init(params)).as_text()
  assert 'reduce_precision' not in lowered


def test_complex_params_train_a_complex_chain():
  with jax.enable_x64(True):
    capacities, conductances = mso.benna_fusi_defaults(3)
    params = jnp.array([1.0 + 2.0j, -0.5j])
    gradients = jnp.asarray(
        np.random.default_rng(3).normal(size=(20, 2, 2)) @ np.array([1, 1j]))
    opt = mso.benna_fusi(capacities, conductances, learning_rate=0.3)
    real_opt = mso.benna_fusi(capacities, conductances, learning_rate=0.3)
    state = opt.init(params)
    assert all(leaf.dtype == jnp.complex128 for leaf in state.chain)
    real_state = real_opt.init(params.real)
    imag_state = real_opt.init(params.imag)
    for gradient in gradients:
      updates, state = opt.update(gradient, state)
      real_updates, real_state = real_opt.update(gradient.real, real_state)
      imag_updates, imag_state = real_opt.update(gradient.imag, imag_state)
      params = params + updates
      # The chain is linear with real coefficients: the real and imaginary
      # parts are two independent real chains (same float64 operations).
      np.testing.assert_array_equal(updates.real, real_updates)
      np.testing.assert_array_equal(updates.imag, imag_updates)
    assert np.all(np.abs(np.asarray(params.imag) - [2.0, -0.5]) > 1e-3)
  with pytest.raises(TypeError, match='imaginary part'):
    mso.benna_fusi(capacities, conductances, state_dtype=jnp.float32).init(
        jnp.array([1j], jnp.complex64))
  with pytest.raises(TypeError, match='complex'):
    mso.benna_fusi(capacities, conductances, state_dtype=jnp.complex64).init(
        jnp.ones(2))
  with pytest.raises(TypeError, match='imaginary part'):
    mso.benna_fusi(
        capacities, conductances,
        initial_chain=[None, jnp.array([1j, 0.0]), None]).init(jnp.ones(2))


def test_initial_chain_is_checked_against_params():
  capacities, conductances = mso.benna_fusi_defaults(3)
  params = {'w': jnp.ones(3), 'b': jnp.zeros(2)}
  wrong_shape = {'w': jnp.ones((3, 1)), 'b': jnp.zeros(2)}
  with pytest.raises(ValueError, match=r"initial_chain\[1\].*\(3, 1\).*'w'"):
    mso.benna_fusi(capacities, conductances,
                   initial_chain=[None, wrong_shape, None]).init(params)
  with pytest.raises(ValueError, match=r'initial_chain\[2\].*tree structure'):
    mso.benna_fusi(capacities, conductances,
                   initial_chain=[None, None, {'w': jnp.ones(3)}]).init(params)
  # A scalar does not broadcast either.
  with pytest.raises(ValueError, match=r'initial_chain\[0\].*shape \(\)'):
    mso.benna_fusi(
        capacities, conductances,
        initial_chain=[{'w': 1.0, 'b': jnp.zeros(2)}, None, None]).init(params)


def test_initial_chain_survives_donating_the_state():
  capacities, conductances = mso.benna_fusi_defaults(3)
  params = jnp.ones(4)
  second = jnp.full(4, 2.0)
  opt = mso.benna_fusi(capacities, conductances,
                       initial_chain=[None, second, None])
  state = opt.init(params)
  step = jax.jit(opt.update, donate_argnums=(1,))
  _, state = step(jnp.ones(4), state)
  _, state = step(jnp.ones(4), state)
  # The state's leaves were copies: the caller's arrays stay alive.
  assert not second.is_deleted() and not params.is_deleted()
  np.testing.assert_array_equal(second, 2.0)


def test_integer_bool_and_python_float_leaves_like_optax():
  capacities, conductances = mso.benna_fusi_defaults(3)
  opt = mso.benna_fusi(capacities, conductances, learning_rate=0.5)
  params = {'w': jnp.ones(2), 'count': jnp.arange(2),
            'mask': jnp.array([True, False]), 'scalar': 1.0}
  state = opt.init(params)
  assert state.chain[1]['count'].dtype == jnp.int32
  grads = {'w': jnp.ones(2), 'count': jnp.arange(2),
           'mask': jnp.array([True, True]), 'scalar': 2.0}
  updates, state = jax.jit(opt.update)(grads, state)
  new_params = optax.apply_updates(params, updates)
  # Integer and boolean leaves are left alone (the chain does not train
  # them); Python floats train like 0-d float arrays.
  np.testing.assert_array_equal(new_params['count'], params['count'])
  np.testing.assert_array_equal(new_params['mask'], params['mask'])
  np.testing.assert_allclose(new_params['w'], 0.5)
  np.testing.assert_allclose(new_params['scalar'], 0.0)
  with pytest.raises(TypeError, match='float8'):
    mso.benna_fusi(capacities, conductances, state_dtype=jnp.float8_e4m3fn)


def test_modes_under_jit_nan_rate_and_extreme_scales():
  with jax.enable_x64(True):
    # Python-list inputs closed over by jax.jit: the condition-number
    # warning must not call float() on a tracer.
    modes = jax.jit(lambda: mso.benna_fusi_modes([1.0, 2.0, 4.0], [0.1, 0.1]))()
    np.testing.assert_allclose(modes.decays[0], 1.0)
    with pytest.raises(ValueError, match='learning_rate'):
      mso.benna_fusi_modes([1.0, 2.0], [0.1], learning_rate=float('nan'))
    with pytest.raises(ValueError, match='learning_rate'):
      mso.benna_fusi([1.0, 2.0], [0.1], learning_rate=float('nan'))
    # The modes depend only on the ratios of C and g: scaled chains give
    # the same decays (products of capacities used to under/overflow).
    reference = mso.benna_fusi_modes([1.0, 1.0], [0.1])
    for scale in (1e-200, 1e200):
      scaled = mso.benna_fusi_modes([scale, scale], [0.1 * scale])
      np.testing.assert_allclose(
          scaled.decays, reference.decays, rtol=4 * np.finfo(float).eps)
    # Subnormal inputs are flushed to zero by XLA: refused by name.
    with pytest.raises(ValueError, match=r'capacities\[0\].*smallest normal'):
      mso.benna_fusi_modes([1e-310, 1e-310], [1e-311])
    # Couplings so weak that a decay rounds to 1: refused, not a second
    # permanent subweight.
    with pytest.raises(ValueError, match='rounds to 1'):
      mso.benna_fusi_modes([1.0, 1.0], [1e-17])
    with pytest.raises(ValueError, match='rounds to 1'):
      mso.benna_fusi_modes([1.0], [], leak=1e-17)
    with pytest.raises(ValueError, match='rounds to 1'):
      mso.benna_fusi_modes(*mso.benna_fusi_defaults(32))
  with pytest.raises(ValueError, match='rounds to 1'):
    mso.benna_fusi_modes(*mso.benna_fusi_defaults(14))
