"""Tests of AR1Prior: the checked AR(1) prior and its three consumers."""

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import multiscale_optax as mso


def test_stationary_variances_are_q_over_one_minus_gamma_squared():
  with jax.enable_x64(True):
    decays = np.exp(-1.0 / np.asarray([1.0, 10.0, 1e3, 1e6]))
    process = np.asarray([0.3, 0.2, 1e-3, 1e-6])
    prior = mso.AR1Prior(decays, process)
    # In float64 with the factored form: agrees with the exact value (from
    # expm1, with no cancellation) to ~1e-10 even for a 1e6-step timescale.
    one_minus_squared = -np.expm1(-2.0 / np.asarray([1.0, 10.0, 1e3, 1e6]))
    np.testing.assert_allclose(
        prior.stationary_variances, process / one_minus_squared, rtol=1e-10)
    assert prior.initial_variances == prior.stationary_variances


def test_from_timescales_is_the_one_over_f_prior():
  with jax.enable_x64(True):
    timescales = mso.log_spaced_timescales(1.0, 1e4, 5)
    prior = mso.AR1Prior.from_timescales(timescales, 0.3)
    np.testing.assert_allclose(
        prior.decays, mso.decays_from_timescales(timescales), rtol=1e-15)
    np.testing.assert_allclose(prior.stationary_variances, 0.3, rtol=1e-10)
    assert prior.initial_variances == (0.3,) * 5
    np.testing.assert_allclose(prior.timescales, timescales, rtol=1e-10)
    per_component = mso.AR1Prior.from_timescales([2.0, 20.0], [1.0, 4.0])
    np.testing.assert_allclose(
        per_component.stationary_variances, [1.0, 4.0], rtol=1e-10)
    # The environment's 1/f prior is this prior.
    environment = mso.OneOverFEnvironment.from_timescales(
        timescales, component_variance=0.3)
    assert environment.prior == prior


def test_one_random_walk_rule_for_priors_learners_and_environments():
  # A random walk has no stationary variance: by default it starts at its
  # mean, in a prior, a learner and an environment alike.
  prior = mso.AR1Prior([0.5, 1.0], [0.75, 0.1])
  assert prior.initial_variances == (1.0, 0.0)
  assert prior == mso.AR1Prior([0.5, 1.0], [0.75, 0.1], [1.0, 0.0])
  assert prior.stationary_variances == (1.0, float('inf'))
  assert prior.timescales[1] == float('inf')
  environment = mso.OneOverFEnvironment((0.5, 1.0), (0.75, 0.1))
  assert environment.prior == prior
  params = jnp.zeros(3)
  loose = mso.bayesian_multiscale([0.5, 1.0], [0.75, 0.1], 1.0).init(params)
  given = mso.bayesian_multiscale(prior=prior, noise_variance=1.0).init(
      params)
  for first, second in zip(loose.variances, given.variances, strict=True):
    np.testing.assert_array_equal(first, second)
  np.testing.assert_array_equal(loose.variances[1], np.zeros(3))
  # An uncertain start is given explicitly.
  assert mso.AR1Prior([1.0], [0.1], [2.0]).initial_variances == (2.0,)


@pytest.mark.parametrize(('kwargs', 'error', 'match'), [
    (dict(decays=[1.5], process_variances=[0.1]), ValueError,
     r'decays\[0\].*\(-1.0, 1.0\]'),
    (dict(decays=[-1.0], process_variances=[0.1]), ValueError, 'decays'),
    (dict(decays=[0.5], process_variances=[-0.1]), ValueError,
     r'process_variances\[0\].*\[0.0, inf\)'),
    (dict(decays=[0.5], process_variances=[np.nan]), ValueError,
     'process_variances.*finite'),
    (dict(decays=[0.5, 0.9], process_variances=[0.1]), ValueError,
     'same length'),
    (dict(decays=[0.5], process_variances=[0.1], initial_variances=[-1.0]),
     ValueError, r'initial_variances\[0\]'),
    (dict(decays=[0.5], process_variances=[0.1],
          initial_variances=[1.0, 2.0]), ValueError, 'same length'),
    (dict(decays=0.5, process_variances=[0.1]), ValueError, 'decays'),
    (dict(decays=['a'], process_variances=[0.1]), TypeError, 'decays'),
    (dict(decays=[0.5], process_variances=None), TypeError,
     'process_variances'),
])
def test_bad_values_raise_naming_the_argument(kwargs, error, match):
  with pytest.raises(error, match=match):
    mso.AR1Prior(**kwargs)


def test_from_timescales_checks_its_arguments():
  with pytest.raises(ValueError, match='timescales'):
    mso.AR1Prior.from_timescales([0.0, 1.0])
  with pytest.raises(ValueError, match='timescales'):
    mso.AR1Prior.from_timescales([float('inf')])
  with pytest.raises(ValueError, match='stationary_variances'):
    mso.AR1Prior.from_timescales([1.0], 0.0)
  with pytest.raises(ValueError, match='same length'):
    mso.AR1Prior.from_timescales([1.0, 2.0], [1.0])


def test_kalman_rates_are_identical_from_the_prior():
  with jax.enable_x64(True):
    decays, process = [0.9, 0.99, 1.0], [0.1, 0.01, 0.001]
    prior = mso.AR1Prior(decays, process, [1.0, 1.0, 0.0])
    for input_dim in (1, 5):
      plain = mso.kalman_learning_rates(
          decays, process, 0.5, input_dim=input_dim)
      typed = mso.kalman_learning_rates(
          prior=prior, noise_variance=0.5, input_dim=input_dim)
      np.testing.assert_array_equal(typed, plain)
    kalman = mso.steady_state_kalman(prior=prior, noise_variance=0.5)
    np.testing.assert_array_equal(
        kalman.gains, mso.steady_state_kalman(decays, process, 0.5).gains)


def test_kalman_rates_from_a_traced_prior():
  decays, process = jnp.asarray([0.5, 0.9]), jnp.asarray([0.2, 0.05])

  @jax.jit
  def rates(decays, process):
    return mso.kalman_learning_rates(
        prior=mso.AR1Prior(decays, process), noise_variance=1.0)

  np.testing.assert_allclose(
      rates(decays, process), mso.kalman_learning_rates(decays, process, 1.0),
      rtol=1e-5)


def _run(opt, steps=5):
  inputs = jnp.asarray([[1.0, -0.5, 2.0], [0.3, 0.2, -1.0]] * 3)[:steps]
  run = helpers.online_regression(opt, inputs, jnp.ones(steps), 1.0)
  return run.params, run.state


def test_bayesian_learner_is_identical_from_the_prior():
  with jax.enable_x64(True):
    decays, process = [0.5, 0.99], [0.75, 0.0199]
    for initial in (None, [2.0, 0.5]):
      plain = _run(mso.bayesian_multiscale(
          decays, process, 0.5, initial_variances=initial))
      typed = _run(mso.bayesian_multiscale(
          prior=mso.AR1Prior(decays, process, initial), noise_variance=0.5))
      for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(typed)):
        np.testing.assert_array_equal(a, b)
    # The default initial variances are the stationary ones.
    state = mso.bayesian_multiscale(
        prior=mso.AR1Prior(decays, process), noise_variance=0.5).init(
            jnp.zeros(1))
    np.testing.assert_allclose(
        [v[0] for v in state.variances], [1.0, 1.0], rtol=1e-10)


def test_bayesian_learner_under_inject_hyperparams_with_a_prior():
  prior = mso.AR1Prior([0.5, 0.9], [0.75, 0.19])
  injected = optax.inject_hyperparams(mso.bayesian_multiscale)(
      prior=prior, noise_variance=1.0)
  plain = mso.bayesian_multiscale(prior=prior, noise_variance=1.0)
  params_injected, _ = _run(injected)
  params_plain, _ = _run(plain)
  np.testing.assert_allclose(params_injected, params_plain, rtol=1e-6)


def test_environment_from_prior_equals_plain_arguments():
  prior = mso.AR1Prior([0.5, 0.9], [0.75, 0.19], [0.3, 2.0])
  environment = mso.OneOverFEnvironment.from_prior(
      prior, noise_variance=0.7, input_dim=3)
  plain = mso.OneOverFEnvironment(
      (0.5, 0.9), (0.75, 0.19), noise_variance=0.7, input_dim=3,
      initial_variances=(0.3, 2.0))
  assert environment == plain
  assert environment.prior == prior
  with pytest.raises(TypeError, match='prior'):
    mso.OneOverFEnvironment.from_prior((0.5, 0.9))
  # The environment's own conditions still apply (decays in (0, 1]).
  with pytest.raises(ValueError, match='decays'):
    mso.OneOverFEnvironment.from_prior(mso.AR1Prior([-0.5], [0.1]))


@pytest.mark.parametrize('call', [
    lambda prior: mso.kalman_learning_rates(
        [0.5], [0.1], 1.0, prior=prior),
    lambda prior: mso.bayesian_multiscale(
        prior=prior, noise_variance=1.0, initial_variances=[1.0]),
    lambda prior: mso.kalman_learning_rates(prior=prior),
    lambda prior: mso.bayesian_multiscale(
        prior=(0.5,), noise_variance=1.0),
    lambda prior: mso.kalman_learning_rates(noise_variance=1.0),
])
def test_prior_and_loose_arguments_do_not_mix(call):
  with pytest.raises(TypeError):
    call(mso.AR1Prior([0.5], [0.1]))


def test_prior_is_a_hashable_pytree():
  prior = mso.AR1Prior([0.5, 0.9], [0.75, 0.19])
  assert hash(prior) == hash(mso.AR1Prior((0.5, 0.9), (0.75, 0.19)))
  leaves, treedef = jax.tree.flatten(prior)
  assert len(leaves) == 6
  doubled = jax.tree.map(lambda leaf: 2 * leaf, prior)
  assert doubled.process_variances == (1.5, 0.38)
  assert jax.tree.unflatten(treedef, leaves) == prior
