"""Tests for the drifting 1/f environments and the exact Kalman filter."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import multiscale_optax as mso


def textbook_kalman(decays, process, noise, initial, inputs, targets):
  """The Kalman filter as written in textbooks, on the joint state (numpy)."""
  num_steps, dim = inputs.shape
  num = len(decays)
  transition = np.kron(np.eye(dim), np.diag(decays))
  process_noise = np.kron(np.eye(dim), np.diag(process))
  mean = np.zeros(dim * num)
  covariance = np.kron(np.eye(dim), np.diag(initial))
  predictions = np.zeros(num_steps)
  variances = np.zeros(num_steps)
  for t in range(num_steps):
    observation = np.kron(inputs[t], np.ones(num))[None, :]
    predictions[t] = (observation @ mean)[0]
    innovation_covariance = observation @ covariance @ observation.T + noise
    variances[t] = innovation_covariance[0, 0] - noise
    gain = covariance @ observation.T @ np.linalg.inv(innovation_covariance)
    mean = mean + gain[:, 0] * (targets[t] - predictions[t])
    covariance = (np.eye(dim * num) - gain @ observation) @ covariance
    mean = transition @ mean
    covariance = transition @ covariance @ transition.T + process_noise
  return predictions, variances


@pytest.mark.parametrize('dim', [1, 3])
def test_filter_matches_textbook_implementation(dim):
  environment = mso.OneOverFEnvironment(
      decays=(0.3, 0.9, 1.0), process_variances=(0.5, 0.1, 0.01),
      noise_variance=0.7, input_dim=dim, initial_variances=(0.6, 0.5, 2.0))
  with jax.enable_x64(True):
    sample = mso.sample_environment(
        environment, jax.random.key(dim), 200, dtype=jnp.float64)
    output = mso.kalman_filter_predictions(
        environment, sample.inputs, sample.targets)
    predictions = np.asarray(output.predictions)
    variances = np.asarray(output.prediction_variances)
  expected, expected_variances = textbook_kalman(
      np.asarray(environment.decays), np.asarray(environment.process_variances),
      environment.noise_variance, np.asarray(environment.initial_variances),
      np.asarray(sample.inputs), np.asarray(sample.targets))
  np.testing.assert_allclose(predictions, expected, rtol=1e-10, atol=1e-10)
  np.testing.assert_allclose(variances, expected_variances, rtol=1e-10)


def test_sample_is_seeded_and_typed():
  environment = mso.OneOverFEnvironment.from_timescales(
      [1.0, 10.0], input_dim=4)
  first = mso.sample_environment(environment, jax.random.key(0), 50)
  again = mso.sample_environment(environment, jax.random.key(0), 50)
  other = mso.sample_environment(environment, jax.random.key(1), 50)
  for leaf, same, different in zip(first, again, other, strict=True):
    assert leaf.dtype == jnp.float32
    np.testing.assert_array_equal(leaf, same)
    assert not np.array_equal(leaf, different)
  assert first.inputs.shape == (50, 4)
  assert first.targets.shape == (50,)
  assert first.parameters.shape == (50, 4)
  with jax.enable_x64(True):
    sample64 = mso.sample_environment(
        environment, jax.random.key(0), 50, dtype=jnp.float64)
    assert all(leaf.dtype == jnp.float64 for leaf in sample64)


def test_scalar_environment_has_unit_inputs():
  environment = mso.OneOverFEnvironment.from_timescales([2.0])
  sample = mso.sample_environment(environment, jax.random.key(0), 30)
  np.testing.assert_array_equal(sample.inputs, np.ones((30, 1)))


def test_sample_statistics():
  # Two components: stationary variance 1 each (from_timescales), noise 0.5.
  environment = mso.OneOverFEnvironment.from_timescales(
      [1.0, 20.0], noise_variance=0.5, input_dim=3)
  with jax.enable_x64(True):
    samples = jax.vmap(lambda key: mso.sample_environment(
        environment, key, 20_000, dtype=jnp.float64))(
            jax.random.split(jax.random.key(7), 4))
    parameters = np.asarray(samples.parameters)
    inputs = np.asarray(samples.inputs)
    residuals = np.asarray(
        samples.targets - jnp.sum(samples.inputs * samples.parameters, -1))
  np.testing.assert_allclose(parameters.var(), 2.0, rtol=0.05)
  np.testing.assert_allclose(residuals.var(), 0.5, rtol=0.02)
  np.testing.assert_allclose(inputs.var(), 1.0, rtol=0.02)
  assert abs(inputs.mean()) < 0.01
  # Lag-k autocovariance of a sum of AR(1)s: sum_j v_j rho_j^k.
  decays = np.asarray(environment.decays)
  for lag in (1, 5, 20):
    covariance = np.mean(parameters[:, lag:] * parameters[:, :-lag])
    np.testing.assert_allclose(
        covariance, np.sum(decays**lag), rtol=0.1, atol=0.02)


def test_filter_variance_predicts_excess_loss():
  environment = mso.OneOverFEnvironment.from_timescales(
      [1.0, 8.0, 64.0], input_dim=2)
  with jax.enable_x64(True):
    samples = jax.vmap(lambda key: mso.sample_environment(
        environment, key, 3000, dtype=jnp.float64))(
            jax.random.split(jax.random.key(2), 4))
    output = jax.vmap(
        lambda x, y: mso.kalman_filter_predictions(environment, x, y))(
            samples.inputs, samples.targets)
    signal = jnp.sum(samples.inputs * samples.parameters, axis=-1)
    excess = float(jnp.mean(jnp.square(signal - output.predictions)))
    expected = float(jnp.mean(output.prediction_variances))
    signal_power = float(jnp.mean(jnp.square(signal)))
  np.testing.assert_allclose(excess, expected, rtol=0.05)
  # The filter beats the naive predictor 0 by far.
  assert excess < 0.6 * signal_power


def test_random_walk_environment_starts_at_zero():
  environment = mso.OneOverFEnvironment(
      decays=(0.5, 1.0), process_variances=(0.75, 0.01))
  assert environment.initial_variances == (1.0, 0.0)
  assert environment.timescales[1] == float('inf')
  sample = mso.sample_environment(environment, jax.random.key(0), 100)
  output = mso.kalman_filter_predictions(
      environment, sample.inputs, sample.targets)
  assert np.all(np.isfinite(output.predictions))


def test_environment_is_static_and_hashable():
  first = mso.OneOverFEnvironment.from_timescales([1.0, 4.0])
  second = mso.OneOverFEnvironment.from_timescales(np.asarray([1.0, 4.0]))
  assert first == second
  assert hash(first) == hash(second)
  assert first.num_components == 2
  np.testing.assert_allclose(first.timescales, [1.0, 4.0])


@pytest.mark.parametrize(
    ('kwargs', 'match'),
    [
        ({'decays': (0.5, 0.9), 'process_variances': (0.1, -0.1)},
         'process_variances'),
        ({'decays': (0.5, 1.5), 'process_variances': (0.1, 0.1)}, 'decays'),
        ({'decays': (0.0, 0.5), 'process_variances': (0.1, 0.1)}, 'decays'),
        ({'decays': (0.5, 0.9), 'process_variances': (0.1,)}, 'same length'),
        ({'decays': (0.5, 0.9), 'process_variances': (0.1, 0.1),
          'noise_variance': -1.0}, 'noise_variance'),
        ({'decays': (0.5, 0.9), 'process_variances': (0.1, 0.1),
          'input_dim': 0}, 'input_dim'),
        ({'decays': (0.5, 0.9), 'process_variances': (0.1, 0.1),
          'initial_variances': (0.1, -1.0)}, 'initial_variances'),
        ({'decays': (0.5, 0.9), 'process_variances': (0.1, 0.1),
          'initial_variances': (0.1,)}, 'same length'),
    ])
def test_bad_environment_raises(kwargs, match):
  with pytest.raises(ValueError, match=match):
    mso.OneOverFEnvironment(**kwargs)


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match='timescales'):
    mso.OneOverFEnvironment.from_timescales([1.0, -2.0])
  with pytest.raises(ValueError, match='component_variance'):
    mso.OneOverFEnvironment.from_timescales([1.0], component_variance=-1.0)
  environment = mso.OneOverFEnvironment.from_timescales([1.0, 4.0],
                                                        input_dim=2)
  with pytest.raises(ValueError, match='num_steps'):
    mso.sample_environment(environment, jax.random.key(0), 0)
  with pytest.raises(TypeError, match='environment'):
    mso.sample_environment(None, jax.random.key(0), 5)
  with pytest.raises(TypeError, match='dtype'):
    mso.sample_environment(environment, jax.random.key(0), 5, dtype=jnp.int32)
  sample = mso.sample_environment(environment, jax.random.key(0), 5)
  with pytest.raises(ValueError, match='shapes'):
    mso.kalman_filter_predictions(
        environment, sample.inputs[:, :1], sample.targets)
  with pytest.raises(ValueError, match='initial_covariance'):
    mso.kalman_filter_predictions(
        environment, sample.inputs, sample.targets,
        initial_covariance=jnp.eye(3))
