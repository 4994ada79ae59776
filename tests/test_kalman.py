"""Tests for the steady-state Kalman filter and Kalman learning rates."""

import helpers
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import Phase

import multiscale_optax as mso

# Timescales 4^i, unit stationary variance, r = 1: the gains quoted in the
# issue that introduced kalman_learning_rates.
ISSUE_DECAYS = np.exp(-1.0 / 4.0 ** np.arange(5))
ISSUE_GAINS = np.asarray([0.2861, 0.1784, 0.0985, 0.0545, 0.0339])


def numpy_riccati_iteration(decays, process_variances, noise, steps):
  """Textbook time iteration of the predicted-covariance recursion."""
  ones = np.ones(len(decays))
  transition = np.diag(decays)
  covariance = np.diag(process_variances)
  for _ in range(steps):
    gain = covariance @ ones / (ones @ covariance @ ones + noise)
    covariance = transition @ (
        covariance - np.outer(gain, ones @ covariance)) @ transition + np.diag(
            process_variances)
  return covariance


def lms_error_covariance(decays, process_variances, noise, gains,
                         own_coefficient, noise_coefficient):
  """Exact steady state of the LMS second-moment recursion (linear in S).

  S = A(S - K 1'S - S 1 K' + K K'(c_p 1'S1 + c_r r))A + Q.
  """
  num = len(decays)
  ones = np.ones(num)
  transition = np.diag(decays)

  def apply(matrix):
    total = ones @ matrix @ ones
    return transition @ (
        matrix - np.outer(gains, ones @ matrix)
        - np.outer(matrix @ ones, gains)
        + np.outer(gains, gains) * own_coefficient * total) @ transition

  basis = np.eye(num * num)
  operator = np.stack(
      [apply(column.reshape(num, num)).ravel() for column in basis], axis=1)
  constant = transition @ np.outer(gains, gains) @ transition * (
      noise_coefficient * noise) + np.diag(process_variances)
  solution = np.linalg.solve(np.eye(num * num) - operator, constant.ravel())
  return solution.reshape(num, num)


def distinct_decays(min_size=1, max_size=4, allow_one=True):
  timescales = st.lists(
      st.floats(0.5, 200.0), min_size=min_size, max_size=max_size,
      unique_by=lambda t: round(np.log(t), 1))
  return st.tuples(timescales, st.booleans()).map(
      lambda pair: np.concatenate([
          np.exp(-1.0 / np.asarray(pair[0])),
          [1.0] if (pair[1] and allow_one) else []]))


def test_gains_reproduce_known_values():
  with jax.enable_x64(True):
    kalman = mso.steady_state_kalman(ISSUE_DECAYS, 1 - ISSUE_DECAYS**2, 1.0)
  np.testing.assert_allclose(kalman.gains, ISSUE_GAINS, atol=5e-5)
  assert float(kalman.effective_noise_variance) == 1.0


@hypothesis.settings(max_examples=8, deadline=None)
@hypothesis.given(
    decays=distinct_decays(max_size=3, allow_one=False),
    variance_scale=st.floats(0.05, 5.0),
    noise=st.floats(0.05, 10.0))
def test_riccati_matches_textbook_iteration(decays, variance_scale, noise):
  process = variance_scale * (1 - decays**2)
  with jax.enable_x64(True):
    kalman = mso.steady_state_kalman(decays, process, noise)
  reference = numpy_riccati_iteration(decays, process, noise, steps=6000)
  np.testing.assert_allclose(
      kalman.prior_covariance, reference, rtol=1e-8, atol=1e-12)


@hypothesis.settings(max_examples=12, deadline=None)
@hypothesis.given(
    decays=distinct_decays(), variance_scale=st.floats(0.01, 5.0),
    noise=st.floats(0.01, 10.0))
def test_riccati_residual_vanishes(decays, variance_scale, noise):
  # Random walks (decay 1) included: the equation itself is the reference.
  process = variance_scale * np.where(decays < 1, 1 - decays**2, 0.01)
  with jax.enable_x64(True):
    kalman = mso.steady_state_kalman(decays, process, noise)
    covariance = np.asarray(kalman.prior_covariance)
  ones = np.ones(len(decays))
  gain = covariance @ ones / (ones @ covariance @ ones + noise)
  np.testing.assert_allclose(kalman.gains, gain, rtol=1e-10)
  transition = np.diag(decays)
  right = transition @ (
      covariance - np.outer(gain, ones @ covariance)) @ transition + np.diag(
          process)
  np.testing.assert_allclose(covariance, right, rtol=1e-9, atol=1e-13)
  assert np.all(np.linalg.eigvalsh(covariance) > 0)


def multiscale_predictions(rates, decays, targets):
  """One-step-ahead predictions of the multiscale learner with x = 1."""
  optimizer = mso.multiscale(rates, decays)
  weights = jnp.zeros((), targets.dtype)
  history = helpers.run_trajectory(
      optimizer, weights, (targets,),
      loss_fn=lambda weight, target: 0.5 * (weight - target) ** 2)
  return jnp.concatenate([weights[None], history[:-1]])


@hypothesis.settings(
    max_examples=4, deadline=None,
    phases=(Phase.explicit, Phase.reuse, Phase.generate))
@hypothesis.given(
    decays=distinct_decays(), variance_scale=st.floats(0.05, 5.0),
    noise=st.floats(0.05, 10.0), seed=st.integers(0, 2**16))
def test_multiscale_equals_steady_state_filter(
    decays, variance_scale, noise, seed):
  process = variance_scale * np.where(decays < 1, 1 - decays**2, 0.01)
  with jax.enable_x64(True):
    environment = mso.OneOverFEnvironment(
        decays=tuple(decays), process_variances=tuple(process),
        noise_variance=noise)
    sample = mso.sample_environment(
        environment, jax.random.key(seed), 300, dtype=jnp.float64)
    steady = mso.steady_state_kalman(decays, process, noise)
    kalman = mso.kalman_filter_predictions(
        environment, sample.inputs, sample.targets,
        initial_covariance=steady.prior_covariance)
    rates = mso.kalman_learning_rates(decays, process, noise)
    predictions = multiscale_predictions(rates, decays, sample.targets)
    np.testing.assert_allclose(
        rates, decays * np.asarray(steady.gains), rtol=1e-14)
    assert helpers.max_abs_difference(predictions, kalman.predictions) <= 1e-8


def test_multiscale_matches_time_varying_filter_after_convergence():
  with jax.enable_x64(True):
    environment = mso.OneOverFEnvironment.from_timescales(4.0 ** np.arange(5))
    decays = np.asarray(environment.decays)
    sample = mso.sample_environment(
        environment, jax.random.key(3), 8000, dtype=jnp.float64)
    kalman = mso.kalman_filter_predictions(
        environment, sample.inputs, sample.targets)
    rates = mso.kalman_learning_rates(
        decays, environment.process_variances, 1.0)
    predictions = multiscale_predictions(rates, decays, sample.targets)
    difference = np.abs(np.asarray(predictions - kalman.predictions))
    variances = np.asarray(kalman.prediction_variances)
    steady = mso.steady_state_kalman(
        decays, environment.process_variances, 1.0)
    steady_error = float(np.sum(steady.prior_covariance))
  # The exact filter starts from the stationary prior, so it differs early
  # on and the gap closes once its gain has converged.
  assert difference[:10].max() > 1e-3
  assert difference[6000:].max() <= 1e-8
  np.testing.assert_allclose(variances[-1], steady_error, rtol=1e-10)


@pytest.mark.parametrize('normalization', [False, True])
def test_effective_noise_is_the_lms_fixed_point(normalization):
  dim, noise = 10, 1.0
  process = 1 - ISSUE_DECAYS**2
  with jax.enable_x64(True):
    kalman = mso.steady_state_kalman(
        ISSUE_DECAYS, process, noise, input_dim=dim,
        input_normalization=normalization)
  gains = np.asarray(kalman.gains)
  if normalization:
    own, noise_coefficient = dim, dim / (dim - 2)
  else:
    own, noise_coefficient = dim + 2, 1.0
  exact = lms_error_covariance(
      ISSUE_DECAYS, process, noise, gains, own, noise_coefficient)
  # With these gains, the LMS learner's exact error covariance is the Riccati
  # solution for the effective noise.
  np.testing.assert_allclose(exact, kalman.prior_covariance, rtol=1e-9)
  prior_error = exact.sum()
  expected_noise = (
      noise * dim / (dim - 2) + (dim - 1) * prior_error if normalization
      else noise + (dim + 1) * prior_error)
  np.testing.assert_allclose(
      kalman.effective_noise_variance, expected_noise, rtol=1e-10)
  # And they are the best LMS gains: perturbing them raises the error.
  rng = np.random.default_rng(0)
  for _ in range(5):
    perturbed = gains * (1 + 0.1 * rng.standard_normal(gains.shape))
    error = lms_error_covariance(
        ISSUE_DECAYS, process, noise, perturbed, own, noise_coefficient).sum()
    assert error > prior_error


@pytest.mark.parametrize('normalization', [False, True])
def test_lms_noise_moments_by_monte_carlo(normalization):
  # E[x_i^2 e^2] (or with the d/|x|^2 factor squared) for x ~ N(0, I_d),
  # independent per-coordinate errors of variance p, noise of variance r.
  dim, prior_error, noise, count = 10, 0.7, 1.3, 400_000
  rng = np.random.default_rng(1)
  inputs = rng.standard_normal((count, dim))
  errors = np.sqrt(prior_error) * rng.standard_normal((count, dim))
  residual = np.sum(inputs * errors, axis=1) + np.sqrt(
      noise) * rng.standard_normal(count)
  weight = dim / np.sum(inputs**2, axis=1) if normalization else 1.0
  moment = np.mean((weight * inputs[:, 0] * residual) ** 2)
  gain_mean = np.mean(weight * inputs[:, 0] ** 2)
  if normalization:
    effective = noise * dim / (dim - 2) + (dim - 1) * prior_error
  else:
    effective = noise + (dim + 1) * prior_error
  np.testing.assert_allclose(moment, prior_error + effective, rtol=0.02)
  np.testing.assert_allclose(gain_mean, 1.0, rtol=0.01)


def test_lms_excess_loss_matches_prediction():
  dim = 10
  with jax.enable_x64(True):
    environment = mso.OneOverFEnvironment.from_timescales(
        [1.0, 8.0, 64.0], input_dim=dim)
    decays = np.asarray(environment.decays)
    kalman = mso.steady_state_kalman(
        decays, environment.process_variances, 1.0, input_dim=dim,
        input_normalization=True)
    rates = decays * np.asarray(kalman.gains)
    optimizer = optax.chain(
        mso.scale_by_input_norm(), mso.multiscale(rates, decays))
    keys = jax.random.split(jax.random.key(5), 4)
    samples = jax.vmap(lambda key: mso.sample_environment(
        environment, key, 4000, dtype=jnp.float64))(keys)

    def run(inputs, targets):
      def step(carry, observation):
        weights, state = carry
        x, y = observation
        prediction = x @ weights
        updates, state = optimizer.update(
            x * (prediction - y), state, weights, inputs=x)
        return (weights + updates, state), prediction
      weights = jnp.zeros(dim)
      return jax.lax.scan(
          step, (weights, optimizer.init(weights)), (inputs, targets))[1]

    predictions = jax.jit(jax.vmap(run))(samples.inputs, samples.targets)
    signal = jnp.sum(samples.inputs * samples.parameters, axis=-1)
    excess = float(jnp.mean(jnp.square(signal - predictions)[:, 500:]))
    predicted = dim * float(jnp.sum(kalman.prior_covariance))
  np.testing.assert_allclose(excess, predicted, rtol=0.05)


def test_jit_with_traced_hyperparameters():
  process = 1 - ISSUE_DECAYS**2
  with jax.enable_x64(True):
    for dim in (1, 10):
      eager = mso.kalman_learning_rates(
          ISSUE_DECAYS, process, 0.5, input_dim=dim)
      jitted = jax.jit(
          lambda decays, process, noise, dim=dim: mso.kalman_learning_rates(
              decays, process, noise, input_dim=dim))(
                  jnp.asarray(ISSUE_DECAYS), jnp.asarray(process), 0.5)
      np.testing.assert_allclose(jitted, eager, rtol=1e-12)


def test_float32_close_to_float64():
  process = 1 - ISSUE_DECAYS**2
  rates32 = mso.kalman_learning_rates(ISSUE_DECAYS, process, 1.0,
                                      input_dim=10)
  with jax.enable_x64(True):
    rates64 = mso.kalman_learning_rates(ISSUE_DECAYS, process, 1.0,
                                        input_dim=10)
  assert rates32.dtype == jnp.float32
  np.testing.assert_allclose(rates32, rates64, rtol=1e-4)


def test_random_walk_component():
  # A decay of 1 alone is the local-level model: K = P/(P + r) with
  # P = (q + sqrt(q^2 + 4 q r))/2.
  with jax.enable_x64(True):
    kalman = mso.steady_state_kalman([1.0], [0.2], 1.5)
  covariance = (0.2 + np.sqrt(0.2**2 + 4 * 0.2 * 1.5)) / 2
  np.testing.assert_allclose(kalman.prior_covariance[0, 0], covariance,
                             rtol=1e-12)
  np.testing.assert_allclose(kalman.gains[0], covariance / (covariance + 1.5),
                             rtol=1e-12)


@pytest.mark.parametrize(
    ('decays', 'process', 'noise', 'kwargs', 'match'),
    [
        ([0.5, 0.9], [0.1, -0.1], 1.0, {}, 'process_variances'),
        ([0.5, 0.9], [0.1, 0.1], -1.0, {}, 'noise_variance'),
        ([0.5, 0.9], [0.1, 0.1], 0.0, {}, 'noise_variance'),
        ([0.0, 0.9], [0.1, 0.1], 1.0, {}, 'decays'),
        ([-0.5, 0.9], [0.1, 0.1], 1.0, {}, 'decays'),
        ([0.5, 1.1], [0.1, 0.1], 1.0, {}, 'decays'),
        ([0.5, 0.9], [0.1], 1.0, {}, 'same length'),
        ([0.9, 0.9], [0.1, 0.1], 1.0, {}, 'distinct'),
        ([0.9, 1.0], [0.1, 0.0], 1.0, {}, 'positive'),
        ([0.5, 0.9], [0.1, 0.1], 1.0, {'input_dim': 0}, 'input_dim'),
        ([0.5, 0.9], [0.1, 0.1], 1.0,
         {'input_dim': 2, 'input_normalization': True}, 'input_normalization'),
        ([0.5, float('nan')], [0.1, 0.1], 1.0, {}, 'finite'),
    ])
def test_bad_inputs_raise(decays, process, noise, kwargs, match):
  with pytest.raises(ValueError, match=match):
    mso.kalman_learning_rates(decays, process, noise, **kwargs)


def test_bad_types_raise():
  with pytest.raises(TypeError, match='input_dim'):
    mso.kalman_learning_rates([0.5], [0.1], 1.0, input_dim=2.0)
  with pytest.raises(TypeError, match='input_normalization'):
    mso.kalman_learning_rates([0.5], [0.1], 1.0, input_normalization=1)


def test_scale_by_input_norm():
  optimizer = mso.scale_by_input_norm()
  grads = {'w': jnp.asarray([1.0, -2.0, 3.0])}
  state = optimizer.init(grads)
  inputs = jnp.asarray([1.0, 2.0, 2.0])
  updates, _ = optimizer.update(grads, state, inputs=inputs)
  np.testing.assert_allclose(updates['w'], grads['w'] * 3 / 9, rtol=1e-6)
  assert updates['w'].dtype == grads['w'].dtype
  with pytest.raises(TypeError, match='inputs'):
    optimizer.update(grads, state)
  chained = optax.chain(optimizer, mso.multiscale([0.1, 0.2], [1.0, 0.5]))
  chained_updates, _ = chained.update(
      grads, chained.init(grads), grads, inputs=inputs)
  plain = mso.multiscale([0.1, 0.2], [1.0, 0.5])
  expected, _ = plain.update(
      jax.tree.map(lambda g: g / 3, grads), plain.init(grads))
  np.testing.assert_allclose(chained_updates['w'], expected['w'], rtol=1e-6)


SWEEP_DECAYS = np.exp(-1.0 / 4.0 ** np.arange(5))  # timescales 4^0..4^4
SWEEP_NOISES = 10.0 ** np.arange(-8, 9, 2)


def test_float32_matches_float64_across_signal_to_noise():
  process = 1 - SWEEP_DECAYS**2
  eps32 = float(np.finfo(np.float32).eps)
  jitted = jax.jit(mso.kalman_learning_rates)
  for noise in SWEEP_NOISES:
    with jax.enable_x64(True):
      reference = np.asarray(
          mso.kalman_learning_rates(SWEEP_DECAYS, process, noise))
    # Concrete inputs are solved in float64 and rounded once: within
    # float32's half ulp of the float64 rates (conditioning 1).
    rates = mso.kalman_learning_rates(SWEEP_DECAYS, process, noise)
    assert rates.dtype == jnp.float32
    error = np.max(np.abs(np.asarray(rates, np.float64) - reference)
                   / reference)
    assert error <= eps32 / 2 * (1 + 1e-6), (noise, error)
    # Traced float32 inputs are solved in float32. Rounding the inputs
    # moves 1 - rho_j relatively by eps * rho_j / (1 - rho_j) <= eps * tau_j
    # and the solve stops at a residual of 100 m eps; the gains' relative
    # sensitivity to either is at most the Stein equation's conditioning
    # 1 / (1 - rho_max^2) <= tau_max (the slowest timescale, 256 steps),
    # so the error is at most (1 + 100 m) eps tau_max.
    traced = np.asarray(jitted(
        jnp.asarray(SWEEP_DECAYS, jnp.float32),
        jnp.asarray(process, jnp.float32), jnp.float32(noise)), np.float64)
    bound = (1 + 100 * 5) * eps32 * 4.0**4
    error = np.max(np.abs(traced - reference) / reference)
    assert error <= bound, (noise, error, bound)


def test_solver_reports_non_convergence(monkeypatch):
  from multiscale_optax._src import kalman as module
  process = 1 - SWEEP_DECAYS**2
  kalman = mso.steady_state_kalman(SWEEP_DECAYS, process, 1e-6)
  assert bool(kalman.converged)
  # One doubling step and no refinement cannot solve a 256-step problem:
  # concrete inputs raise, traced ones flag it and give NaN rates.
  monkeypatch.setattr(module, '_RICCATI_DOUBLING_STEPS', 1)
  monkeypatch.setattr(module, '_HEWER_STEPS', 0)
  jax.clear_caches()
  try:
    with pytest.raises(ValueError, match='did not converge'):
      mso.kalman_learning_rates(SWEEP_DECAYS, process, 1e-6)
    traced = jax.jit(mso.steady_state_kalman)(
        jnp.asarray(SWEEP_DECAYS), jnp.asarray(process), 1e-6)
    assert not bool(traced.converged)
    rates = jax.jit(mso.kalman_learning_rates)(
        jnp.asarray(SWEEP_DECAYS), jnp.asarray(process), 1e-6)
    assert np.all(np.isnan(np.asarray(rates)))
  finally:
    monkeypatch.undo()
    jax.clear_caches()


@pytest.mark.parametrize('magnitude', [300.0, 1e-4])
def test_scale_by_input_norm_in_low_precision(magnitude):
  # float16 squares overflow at 256 and underflow below 6e-8: 300 used to
  # give exactly 0 and 1e-4 gave inf. The LMS gradient x * e with e = 0.5.
  optimizer = mso.scale_by_input_norm()
  inputs64 = magnitude * np.array([1.0, -0.5, 0.25, 2.0])
  inputs = jnp.asarray(inputs64, jnp.float16)
  grads = {'w': inputs * jnp.float16(0.5)}
  updates, _ = optimizer.update(grads, optimizer.init(grads), inputs=inputs)
  assert updates['w'].dtype == jnp.float16
  # The float16 gradients and inputs, normalised exactly, then rounded
  # once to float16 (the computation runs in float32: its error is far
  # below float16's half ulp): within one float16 ulp.
  exact_inputs = np.asarray(inputs, np.float64)
  expected = np.asarray(grads['w'], np.float64) / np.mean(exact_inputs**2)
  np.testing.assert_allclose(
      np.asarray(updates['w'], np.float64), expected,
      rtol=float(np.finfo(np.float16).eps))


def test_scale_by_input_norm_zero_complex_and_integer_leaves():
  optimizer = mso.scale_by_input_norm()
  grads = {'w': jnp.asarray([1.0, -2.0]), 'count': jnp.arange(2)}
  state = optimizer.init(grads)
  # x = 0: the update passes through unscaled (documented), not inf/NaN.
  updates, _ = optimizer.update(grads, state, inputs=jnp.zeros(3))
  np.testing.assert_array_equal(updates['w'], grads['w'])
  np.testing.assert_array_equal(updates['count'], grads['count'])
  assert updates['count'].dtype == grads['count'].dtype
  # Complex inputs: |x|^2, not x^2 (which is 0 for x = (1 + i, 1 - i)
  # summed, and complex in general).
  inputs = jnp.asarray([1.0 + 1.0j, 1.0 - 1.0j])
  updates, _ = optimizer.update(grads, state, inputs=inputs)
  np.testing.assert_allclose(updates['w'], np.asarray(grads['w']) / 2.0,
                             rtol=1e-6)
  assert updates['w'].dtype == jnp.float32
  # Python-float updates (as optax accepts them) are scaled too.
  updates, _ = optimizer.update({'w': 3.0}, state, inputs=jnp.full(2, 2.0))
  np.testing.assert_allclose(updates['w'], 0.75)


def test_concrete_inputs_inside_a_callers_jit():
  # Python-list hyperparameters are constants inside a jitted function: the
  # float64 solve must still run (not be staged into the caller's trace).
  process = 1 - SWEEP_DECAYS**2
  inside = jax.jit(lambda: mso.kalman_learning_rates(
      SWEEP_DECAYS.tolist(), process.tolist(), 1e-6))()
  outside = mso.kalman_learning_rates(SWEEP_DECAYS, process, 1e-6)
  np.testing.assert_array_equal(inside, outside)
  gains = jax.jit(lambda scale: scale * mso.steady_state_kalman(
      SWEEP_DECAYS.tolist(), process.tolist(), 1e-6).gains)(1.0)
  np.testing.assert_array_equal(
      gains, mso.steady_state_kalman(SWEEP_DECAYS, process, 1e-6).gains)
