"""Empirical Bayes on a warm-up window: mso.fit_prior."""

from __future__ import annotations

import functools

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import multiscale_optax as mso

TRUTH = mso.AR1Prior.from_timescales((3.0, 30.0, 300.0), 1.0 / 3.0)


def _stream(seed, steps, dim=4):
  return helpers.ar1_regression_stream(seed, steps, TRUTH, dim=dim)


def _linear_observe(params, batch):
  x, y = batch
  residual = y - x @ params
  return -x * residual, {'jacobian': x, 'residual': residual}


def _scaled(prior, factor):
  return mso.AR1Prior(
      prior.decays, tuple(factor * q for q in prior.process_variances),
      tuple(factor * v for v in prior.initial_variances))


def _profile_log_likelihood(prior, noise, inputs, targets):
  """The exact joint Kalman filter's profile log-likelihood (NumPy)."""
  decays = np.repeat(np.asarray(prior.decays), inputs.shape[1])
  process = np.repeat(np.asarray(prior.process_variances), inputs.shape[1])
  count = len(prior.decays)
  mean = np.zeros(decays.size)
  covariance = np.diag(np.repeat(np.asarray(prior.initial_variances),
                                 inputs.shape[1]))
  squared, logs = [], []
  for x, y in zip(np.asarray(inputs), np.asarray(targets)):
    row = np.tile(x, count)
    error = y - row @ mean
    innovation = noise + row @ covariance @ row
    gain = covariance @ row / innovation
    squared.append(error**2 / innovation)
    logs.append(np.log(innovation))
    mean = decays * (mean + gain * error)
    covariance = decays[:, None] * (
        covariance - np.outer(gain, gain) * innovation) * decays[None]
    covariance += np.diag(process)
  n = len(squared)
  rho = np.mean(squared)
  return -0.5 * (np.sum(logs) + n * np.log(rho) + n * (1 + np.log(2 * np.pi)))


def test_scores_are_the_exact_profile_log_likelihood():
  with jax.enable_x64(True):
    inputs, targets = _stream(0, 120)
    scales = np.asarray([0.1, 1.0, 10.0])
    fit = mso.fit_prior(_linear_observe, jnp.zeros(4), (inputs, targets),
                        TRUTH, 2.0, rank=12, scales=scales)
    expected = [_profile_log_likelihood(_scaled(TRUTH, c), 2.0, inputs,
                                        targets) for c in scales]
    np.testing.assert_allclose(fit.scores, expected, rtol=1e-10)


@pytest.mark.parametrize('rank', [0, 12])
def test_recovers_the_truth_from_a_misscaled_prior_and_noise(rank):
  # The prior given is 100 times too tight and the noise 10 times too
  # large; the fit restores both (only their ratio moves the means, so
  # they come back together).
  with jax.enable_x64(True):
    inputs, targets = _stream(1, 400)
    fit = mso.fit_prior(
        _linear_observe, jnp.zeros(4), (inputs, targets), _scaled(TRUTH, 0.01),
        10.0, rank=rank, scales=np.logspace(0.0, 4.0, 17))
    ratio = (fit.prior.process_variances[1] / fit.noise_variance) / (
        TRUTH.process_variances[1] / 1.0)
    assert 1.0 / 3.0 < ratio < 3.0, ratio
    assert 0.5 < fit.noise_variance < 2.0, fit.noise_variance
    assert not fit.at_grid_edge
    assert fit.prior.decays == TRUTH.decays


def test_slopes_give_a_table_and_a_tilted_prior():
  with jax.enable_x64(True):
    inputs, targets = _stream(2, 200)
    fit = mso.fit_prior(
        _linear_observe, jnp.zeros(4), (inputs, targets), TRUTH, 1.0,
        scales=[0.3, 1.0, 3.0], slopes=[-0.5, 0.0, 0.5])
    assert fit.scores.shape == (3, 3)
    weights = (np.asarray(TRUTH.timescales) / np.exp(np.mean(np.log(
        TRUTH.timescales)))) ** (-fit.slope)
    expected = fit.noise_scale * fit.process_scale * weights * np.asarray(
        TRUTH.process_variances)
    np.testing.assert_allclose(fit.prior.process_variances, expected,
                               rtol=1e-12)


def test_log_loss_scores_a_classifier():
  key_x, key_w = jax.random.split(jax.random.key(3))
  inputs = jax.random.normal(key_x, (150, 4))
  labels = jnp.argmax(inputs @ (3.0 * jax.random.normal(key_w, (4, 3))), -1)

  def apply(params, x):
    return x @ params['w']

  observe = functools.partial(mso.categorical_observation, apply)
  params = {'w': jnp.zeros((4, 3))}
  fit = mso.fit_prior(
      lambda p, batch: observe(p, *batch), params, (inputs, labels),
      mso.AR1Prior.from_timescales([100.0]), 1.0, score='log_loss',
      scales=[1e-4, 1e-2, 1.0])
  assert fit.noise_scale == 1.0 and fit.noise_variance == 1.0
  # A linear rule with margin: a prior that lets the weights move (c >=
  # 1e-2) predicts better than one that keeps them near zero.
  assert fit.process_scale >= 1e-2
  assert fit.scores[0] < fit.scores[-1]


def _window(steps=20):
  return _stream(3, steps)


@pytest.mark.parametrize('change, error, match', [
    (dict(batches=(jnp.zeros((0, 4)), jnp.zeros(0))), ValueError,
     'empty window'),
    (dict(scales=[1.0]), ValueError, 'one point'),
    (dict(scales=[1.0, -1.0]), ValueError, 'scales'),
    (dict(scales=[1.0, np.inf]), ValueError, 'scales'),
    (dict(prior=(0.9,)), TypeError, 'AR1Prior'),
    (dict(noise_variance=0.0), ValueError, 'noise_variance'),
    (dict(score='likelihood'), ValueError, 'score'),
    (dict(score='log_loss'), ValueError, 'ObservationInfo'),
    (dict(learn_prior=True), TypeError, 'learn_prior'),
    (dict(batches=(jnp.zeros((3, 4)), jnp.zeros(2))), ValueError,
     'leading time axis'),
])
def test_bad_input_is_refused_by_name(change, error, match):
  arguments = dict(observe=_linear_observe, params=jnp.zeros(4),
                   batches=_window(), prior=TRUTH, noise_variance=1.0)
  arguments.update(change)
  with pytest.raises(error, match=match):
    mso.fit_prior(**arguments)


def test_non_finite_scores_are_refused_with_the_grid_points():
  inputs, targets = _window()

  def broken(params, batch):
    grads, extra = _linear_observe(params, batch)
    extra['residual'] = extra['residual'] * jnp.nan
    return grads, extra

  with pytest.raises(ValueError, match=r'not finite.*scale 0\.1'):
    mso.fit_prior(broken, jnp.zeros(4), (inputs, targets), TRUTH, 1.0,
                  scales=[0.1, 1.0])


def test_a_pseudo_residual_cannot_be_profiled():
  def apply(params, x):
    return x @ params['w']

  inputs = jnp.ones((5, 4))
  labels = jnp.zeros(5, jnp.int32)

  def observe(params, batch):
    return mso.categorical_observation(apply, params, *batch,
                                       fisher='empirical')

  with pytest.raises(ValueError, match='pseudo-residual'):
    mso.fit_prior(observe, {'w': jnp.zeros((4, 3))}, (inputs, labels),
                  TRUTH, 1.0)
