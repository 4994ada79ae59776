"""The learned prior scale of bayesian_multiscale (learn_prior)."""

from __future__ import annotations

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import multiscale_optax as mso

TIGHT = 1e-10
# A linear AR(1) stream: 4 inputs, each weight a sum of three AR(1)
# subweights (timescales 3, 30, 300), noise variance 1: the prior with
# c = 1 is the truth.
TIMESCALES = (3.0, 30.0, 300.0)
TRUTH = mso.AR1Prior.from_timescales(TIMESCALES, 1.0 / 3.0)


def _stream(seed, steps, dim=4):
  return helpers.ar1_regression_stream(seed, steps, TRUTH, dim=dim)


def _scaled(prior, factor):
  return mso.AR1Prior(
      prior.decays, tuple(factor * q for q in prior.process_variances),
      tuple(factor * v for v in prior.initial_variances))


def _exact_window_log_likelihood(prior, noise, inputs, targets, forget,
                                 profile):
  """log c -> the window's (profile) log-likelihood of the exact joint
  Kalman filter over all subweights (float64, differentiable in log c)."""
  decays = jnp.asarray(prior.decays)
  count, dim = len(prior.decays), inputs.shape[1]

  def log_likelihood(log_scale):
    scale = jnp.exp(log_scale)
    decay = jnp.repeat(decays, dim)
    process = scale * jnp.repeat(jnp.asarray(prior.process_variances), dim)
    mean = jnp.zeros(count * dim)
    covariance = jnp.diag(
        scale * jnp.repeat(jnp.asarray(prior.initial_variances), dim))

    def step(carry, example):
      mean, covariance = carry
      x, y = example
      row = jnp.tile(x, count)
      error = y - row @ mean
      innovation = noise + row @ covariance @ row
      gain = covariance @ row / innovation
      mean = decay * (mean + gain * error)
      covariance = decay[:, None] * (
          covariance - jnp.outer(gain, gain) * innovation) * decay[None]
      return (mean, covariance + jnp.diag(process)), (
          error**2 / innovation, jnp.log(innovation))

    _, (squared, logs) = jax.lax.scan(
        step, (mean, covariance), (inputs, targets))
    weights = forget ** jnp.arange(targets.shape[0])[::-1]
    if profile:
      total = jnp.sum(weights)
      noise_scale = jnp.sum(weights * squared) / total
      return -0.5 * (jnp.sum(weights * logs) + total * jnp.log(noise_scale)
                     + total)
    return -0.5 * jnp.sum(weights * (logs + squared))

  return log_likelihood


def _window_gradient(opt, inputs, targets, noise=1.0):
  """The learner's window gradient G after the stream."""
  run = helpers.online_regression(opt, inputs, targets, noise)
  return run.state.prior_learning.gradients


@pytest.mark.parametrize('mode', [True, 'per_weight'])
@pytest.mark.parametrize('outputs', [0, 3])
def test_first_observation_gradient_is_the_likelihood_gradient(
    outputs, mode):
  # Before any observation the means do not depend on c, and the
  # predictive covariance is exactly R + c X: the gradient is exact.
  with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    num = 5
    shape = (outputs, num) if outputs else (num,)
    jac = jnp.asarray(rng.normal(size=shape))
    error = jnp.asarray(rng.normal(size=outputs) if outputs else 1.3)
    opt = mso.bayesian_multiscale(
        [0.5, 0.9], [0.3, 0.1], 0.7, learn_prior=mode,
        prior_learning_rate=0.1)
    params = jnp.zeros(num)
    _, state = opt.update(params, opt.init(params), params, jacobian=jac,
                          residual=error)
    own = 0.3 / 0.75 + 0.1 / 0.19  # each weight's prior variance
    matrix = jac.reshape(max(outputs, 1), num)
    vector = jnp.reshape(error, (-1,))

    def log_likelihood(log_scales):
      covariance = 0.7 * jnp.eye(max(outputs, 1)) + (
          matrix * (own * jnp.exp(log_scales))) @ matrix.T
      return jax.scipy.stats.multivariate_normal.logpdf(
          vector, jnp.zeros_like(vector), covariance)

    expected = jax.grad(log_likelihood)(jnp.zeros(num))
    gradient = state.prior_learning.gradients
    if mode is True:
      np.testing.assert_allclose(gradient, jnp.sum(expected), atol=TIGHT)
      # The first normalised step is eta times the gradient's sign.
      np.testing.assert_allclose(
          state.log_process_scale, 0.1 * np.sign(jnp.sum(expected)),
          atol=TIGHT)
    else:
      np.testing.assert_allclose(gradient, expected, atol=TIGHT)
      np.testing.assert_allclose(
          state.log_process_scale, 0.1 * np.sign(expected), atol=TIGHT)


@pytest.mark.parametrize('profile', [False, True])
def test_window_gradient_is_exact_without_memory(profile):
  # Decays 0: every step's prior is c q afresh, so the predictive
  # covariance is exactly proportional to c and the means never depend on
  # it: the window's (profile) gradient is exact, at any c.
  with jax.enable_x64(True):
    prior = mso.AR1Prior([0.0, 0.0], [0.4, 1.1])
    inputs, targets = _stream(1, 60, dim=3)
    window = 20.0
    for scale in (0.1, 3.0):
      opt = mso.bayesian_multiscale(
          prior=_scaled(prior, scale), noise_variance=0.5, learn_prior=True,
          learn_noise_variance=profile, prior_learning_rate=0.0,
          prior_window=window)
      exact = jax.grad(_exact_window_log_likelihood(
          prior, 0.5, inputs, targets, 1.0 - 1.0 / window, profile))(
              jnp.log(scale))
      np.testing.assert_allclose(
          _window_gradient(opt, inputs, targets, 0.5), exact, rtol=1e-9,
          atol=TIGHT)


@pytest.mark.parametrize('profile', [False, True])
def test_window_gradient_follows_the_exact_filter(profile):
  # With memory the means' sensitivity is carried with dSigma/dlog c taken
  # as Sigma (the covariance's own sensitivity is dropped): the gradient
  # keeps the exact one's sign far from the truth, and changes sign in the
  # same decade of c, so the learned scale settles where the likelihood
  # peaks.
  with jax.enable_x64(True):
    inputs, targets = _stream(0, 300)
    forget = 0.99
    exact = _exact_window_log_likelihood(
        TRUTH, 1.0, inputs, targets, forget, profile)
    scales = np.logspace(-2.0, 2.0, 9)
    approximate, reference = [], []
    for scale in scales:
      opt = mso.bayesian_multiscale(
          prior=_scaled(TRUTH, scale), noise_variance=1.0,
          rank=3 * inputs.shape[1], learn_prior=True,
          learn_noise_variance=profile, prior_learning_rate=0.0)
      approximate.append(float(_window_gradient(opt, inputs, targets)))
      reference.append(float(jax.grad(exact)(jnp.log(scale))))
    approximate, reference = np.asarray(approximate), np.asarray(reference)
    assert approximate[0] > 0 and reference[0] > 0
    assert approximate[-1] < 0 and reference[-1] < 0
    # The first grid point where each turns negative: the same or the next.
    turn = np.argmax(approximate < 0)
    assert abs(turn - np.argmax(reference < 0)) <= 1


@pytest.mark.parametrize('profile', [False, True])
@pytest.mark.parametrize('start', [0.01, 100.0])
@pytest.mark.parametrize('rank', [0, 12])
def test_learned_scale_reaches_the_truth_from_far(start, profile, rank):
  # From 100 times too tight or too wide, the learned c ends within a
  # factor 3 of the truth (c = 1) after 1500 examples, and the late
  # predictions are as good as the filter's with the true prior.
  with jax.enable_x64(True):
    inputs, targets = _stream(0, 1500)
    opt = mso.bayesian_multiscale(
        prior=_scaled(TRUTH, start), noise_variance=1.0, rank=rank,
        learn_prior=True, learn_noise_variance=profile)
    run = helpers.online_regression(opt, inputs, targets, 1.0)
    predictions = run.predictions
    learned = start * float(np.exp(run.state.log_process_scale))
    assert 1.0 / 3.0 < learned < 3.0, learned
    truth = helpers.online_regression(
        mso.bayesian_multiscale(prior=TRUTH, noise_variance=1.0, rank=rank),
        inputs, targets, 1.0).predictions
    late = slice(500, None)
    assert np.mean((targets[late] - predictions[late]) ** 2) < 1.05 * (
        np.mean((targets[late] - truth[late]) ** 2))


def test_per_weight_scales_widen_where_the_target_drifts():
  # Five of twenty weights drift (AR(1), timescale 100); fifteen are
  # static. Each weight's learned scale says which.
  with jax.enable_x64(True):
    rng = np.random.default_rng(3)
    steps, dim = 3000, 20
    inputs = rng.normal(size=(steps, dim))
    weights = np.zeros(dim)
    weights[:5] = rng.normal(size=5)
    decay = np.exp(-1.0 / 100.0)
    targets = np.empty(steps)
    for t in range(steps):
      targets[t] = inputs[t] @ weights + 0.3 * rng.normal()
      weights[:5] = decay * weights[:5] + rng.normal(size=5) * np.sqrt(
          1.0 - decay**2)
    opt = mso.bayesian_multiscale(
        prior=mso.AR1Prior.from_timescales([100.0], 0.1), noise_variance=1.0,
        learn_prior='per_weight', learn_noise_variance=True)
    state = helpers.online_regression(
        opt, jnp.asarray(inputs), jnp.asarray(targets), 1.0).state
    scales = np.asarray(state.log_process_scale)
    assert scales[:5].min() > scales[5:].max() + np.log(10.0), scales


@pytest.mark.parametrize('mode', [True, 'per_weight'])
def test_every_step_is_bounded_by_the_learning_rate(mode):
  # An outlier every 50 steps, 1000 sigma: no step of any log scale
  # exceeds eta, and the state stays finite.
  inputs, targets = _stream(2, 400)
  targets = targets.at[::50].add(1000.0)
  rate = 0.05
  opt = mso.bayesian_multiscale(
      prior=TRUTH, noise_variance=1.0, learn_prior=mode,
      learn_noise_variance=True, prior_learning_rate=rate)
  run = helpers.online_regression(
      opt, inputs.astype(jnp.float32), targets.astype(jnp.float32), 1.0,
      collect=lambda state: state.log_process_scale)
  state = run.state
  steps = np.abs(np.diff(np.asarray(run.collected), axis=0))
  # float32 sums of log c and its step: a few ulps of |log c| + eta.
  assert steps.max() <= rate * (1.0 + 1e-5) + 1e-5
  assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(state))


def test_outlier_threshold_keeps_the_state_finite_and_the_scale_learning():
  inputs, targets = _stream(4, 600)
  targets = targets.at[300].add(1e6)
  opt = mso.bayesian_multiscale(
      prior=_scaled(TRUTH, 0.01), noise_variance=1.0, learn_prior=True,
      learn_noise_variance=True, outlier_threshold=5.0)
  state = helpers.online_regression(
      opt, inputs.astype(jnp.float32), targets.astype(jnp.float32),
      1.0).state
  assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(state))
  # Still learning: up from 100 times too tight.
  assert float(state.log_process_scale) > np.log(10.0)


def test_learned_noise_scale_is_the_window_mean_and_the_readers_use_it():
  with jax.enable_x64(True):
    inputs, targets = _stream(5, 200)
    opt = mso.bayesian_multiscale(
        prior=TRUTH, noise_variance=4.0, learn_prior=True,
        learn_noise_variance=True, prior_window=50.0)
    run = helpers.online_regression(opt, inputs, targets, 4.0)
    params, state = run.params, run.state
    learning = state.prior_learning
    rho = float(np.exp(state.log_noise_scale))
    np.testing.assert_allclose(
        rho, learning.squared_residuals / learning.window, rtol=1e-12)
    # The noise variance in use is 4 rho; the true one is 1.
    assert 0.5 < 4.0 * rho < 2.0
    belief = mso.get_bayesian_subweights(params, state)
    np.testing.assert_allclose(
        belief.variances[0], rho * state.variances[0], rtol=1e-12)


@pytest.mark.parametrize('kwargs, error, match', [
    (dict(learn_prior='global'), ValueError, 'learn_prior'),
    (dict(learn_prior=1), TypeError, 'learn_prior'),
    (dict(learn_prior=True, prior_window=0.5), ValueError, 'prior_window'),
    (dict(learn_prior=True, prior_learning_rate=-1.0), ValueError,
     'prior_learning_rate'),
    (dict(learn_noise_variance=True), ValueError, 'learn_prior'),
])
def test_construction_errors(kwargs, error, match):
  with pytest.raises(error, match=match):
    mso.bayesian_multiscale([0.5], [0.1], 1.0, **kwargs)


@pytest.mark.parametrize('mode', [True, 'per_weight'])
def test_a_learned_prior_needs_the_residual(mode):
  opt = mso.bayesian_multiscale([0.5], [0.1], 1.0, learn_prior=mode)
  params = jnp.zeros(3)
  with pytest.raises(ValueError, match='residual'):
    opt.update(params, opt.init(params), params, jacobian=params)


def test_a_state_built_for_another_learner_is_refused_by_name():
  params = {'w': jnp.zeros(3)}
  extra = {'jacobian': {'w': jnp.ones(3)}, 'residual': jnp.asarray(1.0)}
  states = {
      (rank, mode): mso.bayesian_multiscale(
          [0.5], [0.1], 1.0, rank=rank, learn_prior=mode).init(params)
      for rank in (0, 2, 3) for mode in (False, True, 'per_weight')}
  for (rank, mode), state in states.items():
    for (other_rank, other_mode) in states:
      opt = mso.bayesian_multiscale(
          [0.5], [0.1], 1.0, rank=other_rank, learn_prior=other_mode)
      if (rank, mode) == (other_rank, other_mode):
        opt.update(params, state, params, **extra)
        continue
      match = 'rank' if rank != other_rank else 'learn'
      with pytest.raises(ValueError, match=match):
        opt.update(params, state, params, **extra)


def test_per_weight_state_follows_the_params():
  params = {'w': jnp.zeros((3, 2), jnp.bfloat16), 'b': jnp.zeros(2),
            'steps': jnp.zeros((), jnp.int32)}
  opt = mso.bayesian_multiscale(
      [0.5, 0.9], [0.1, 0.1], 1.0, learn_prior='per_weight')
  state = opt.init(params)
  for tree in (state.log_process_scale, state.prior_learning.first_moments,
               *state.prior_tangents):
    assert jax.tree.structure(tree) == jax.tree.structure(params)
    assert tree['w'].shape == (3, 2) and tree['w'].dtype == jnp.float32
  grads = {'w': jnp.zeros((3, 2), jnp.bfloat16), 'b': jnp.zeros(2),
           'steps': jnp.zeros((), jnp.int32)}
  jacobian = {'w': jnp.ones((3, 2), jnp.bfloat16), 'b': jnp.ones(2),
              'steps': jnp.zeros((), jnp.int32)}
  updates, new_state = jax.jit(opt.update)(
      grads, state, params, jacobian=jacobian, residual=jnp.asarray(2.0))
  assert updates['w'].dtype == jnp.bfloat16
  for old, new in zip(jax.tree.leaves(state), jax.tree.leaves(new_state)):
    assert old.dtype == new.dtype and old.shape == new.shape
  scales = mso.get_bayesian_subweights(
      optax.apply_updates(params, updates), new_state).process_scale
  assert scales['w'].shape == (3, 2)
