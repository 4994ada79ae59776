"""Tests of the Bayesian multiscale learner and its observation helpers."""

from __future__ import annotations

import re
import textwrap

import helpers
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import multiscale_optax as mso

# float64 equivalence tests run a few dozen steps of the same arithmetic in
# two orders; each step has relative rounding error of a few ulps (2.2e-16)
# amplified at most by the number of steps and the condition of S (<= 1e3
# here), so 1e-10 leaves a margin of > 1e2.
TIGHT = 1e-10


def normal_stream(seed, steps, dim):
  """Float64 standard-normal inputs ``(steps, dim)`` and targets
  ``(steps,)`` from ``jax.random.key(seed)``."""
  key_x, key_y = jax.random.split(jax.random.key(seed))
  return (jax.random.normal(key_x, (steps, dim), jnp.float64),
          jax.random.normal(key_y, (steps,), jnp.float64))


def run_scalar(opt, inputs, targets, noise_variance, params=None,
               with_residual=False):
  """Online learning of y = x.w + v; returns predictions, params, state."""
  run = helpers.online_regression(
      opt, inputs, targets, noise_variance, params=params,
      extra_args=('jacobian', 'residual') if with_residual else ('jacobian',))
  return run.predictions, run.params, run.state


def scalar_kalman(decay, process_variance, noise_variance, initial_variance,
                  inputs, targets):
  """The textbook scalar Kalman filter of w' = decay w + N(0, q)."""
  mean, variance = 0.0, initial_variance
  predictions = []
  for x, y in zip(np.asarray(inputs)[:, 0], np.asarray(targets)):
    predictions.append(x * mean)
    innovation = x * x * variance + noise_variance
    gain = variance * x / innovation
    mean = mean + gain * (y - x * mean)
    variance = variance - gain * x * variance
    mean = decay * mean
    variance = decay * decay * variance + process_variance
  return np.asarray(predictions)


def diagonal_reference(decays, process, noise, initial, jacobians, targets,
                       covariance=None, rule='others_as_noise'):
  """Literal NumPy form of the diagonal EKF for a linear model y = J w.

  ``jacobians``: (steps, C, P); ``targets``: (steps, C); ``rule``: the
  ``variance_update``. Returns the predictions (steps, C) and the final
  means and variances (k, P).
  """
  k = len(decays)
  num = jacobians.shape[-1]
  means = np.zeros((k, num))
  variances = np.tile(np.asarray(initial, float)[:, None], (1, num))
  predictions = []
  for jac, y in zip(jacobians, targets):
    outputs = jac.shape[0]
    weights = means.sum(axis=0)
    prediction = jac @ weights
    predictions.append(prediction)
    noise_matrix = (noise * np.eye(outputs) if covariance is None
                    else covariance)
    innovation = noise_matrix + sum(
        jac @ np.diag(variances[i]) @ jac.T for i in range(k))
    inverse = np.linalg.inv(innovation)
    error = y - prediction
    new_means, new_variances = np.empty_like(means), np.empty_like(variances)
    precision = np.diag(jac.T @ inverse @ jac)
    totals = variances.sum(axis=0)
    for i in range(k):
      gain = np.diag(variances[i]) @ jac.T @ inverse
      posterior_mean = means[i] + gain @ error
      if rule == 'moment_matching':
        posterior_var = variances[i] - variances[i] ** 2 * precision
      elif rule == 'mean_field':
        posterior_var = 1.0 / (1.0 / variances[i] + np.diag(
            jac.T @ np.linalg.inv(noise_matrix) @ jac))
      elif rule == 'weight_marginal':
        posterior_var = variances[i] * (1.0 - totals * precision)
      else:
        posterior_var = 1.0 / (
            1.0 / variances[i] + precision / (1.0 - totals * precision))
      new_means[i] = decays[i] * posterior_mean
      new_variances[i] = decays[i] ** 2 * posterior_var + process[i]
    means, variances = new_means, new_variances
  return np.asarray(predictions), means, variances


def test_one_weight_one_timescale_is_the_scalar_kalman_filter():
  with jax.enable_x64(True):
    inputs, targets = normal_stream(0, 60, 1)
    targets = targets * 2.0
    opt = mso.bayesian_multiscale([0.9], [0.19], 0.5)
    predictions, _, _ = run_scalar(opt, inputs, targets, 0.5)
    expected = scalar_kalman(0.9, 0.19, 0.5, 1.0, inputs, targets)
    np.testing.assert_allclose(predictions, expected, rtol=0, atol=TIGHT)


@jax.jit
def traced_scalar_run(decays, process, noise, initial, inputs, targets):
  """run_scalar with traced hyperparameters: one compilation per shape."""
  opt = mso.bayesian_multiscale(
      decays, process, noise, initial_variances=initial)
  return run_scalar(opt, inputs, targets, noise)[0]


@pytest.mark.filterwarnings('ignore:`initial_variances` is read only')
@hypothesis.settings(max_examples=15, deadline=None)
@hypothesis.given(
    decay=st.floats(-0.99, 1.0),
    process=st.floats(1e-3, 10.0),
    noise=st.floats(1e-2, 10.0),
    initial=st.floats(1e-2, 10.0),
    seed=st.integers(0, 2**16),
)
def test_scalar_kalman_property(decay, process, noise, initial, seed):
  with jax.enable_x64(True):
    inputs, targets = normal_stream(seed, 30, 1)
    predictions = traced_scalar_run(
        jnp.asarray([decay]), jnp.asarray([process]), jnp.asarray(noise),
        jnp.asarray([initial]), inputs, targets)
    expected = scalar_kalman(decay, process, noise, initial, inputs, targets)
    # Relative to the scale of the predictions (|y| ~ 1, gains <= 1).
    scale = 1.0 + np.max(np.abs(expected))
    np.testing.assert_allclose(predictions, expected, rtol=0,
                               atol=TIGHT * scale)


@pytest.mark.parametrize('with_residual', [False, True])
@pytest.mark.parametrize(
    'rule', ['others_as_noise', 'moment_matching', 'mean_field',
             'weight_marginal'])
def test_k_timescales_match_literal_reference(with_residual, rule):
  with jax.enable_x64(True):
    decays = [0.3, 0.9, 0.99, 1.0]
    process = [0.5, 0.1, 0.02, 0.001]
    initial = [0.7, 0.5, 0.3, 0.2]
    inputs, targets = normal_stream(1, 50, 1)
    opt = mso.bayesian_multiscale(
        decays, process, 0.8, initial_variances=initial,
        variance_update=rule)
    predictions, params, state = run_scalar(
        opt, inputs, targets, 0.8, with_residual=with_residual)
    expected, means, variances = diagonal_reference(
        decays, process, 0.8, initial, np.asarray(inputs)[:, None, :],
        np.asarray(targets)[:, None], rule=rule)
    np.testing.assert_allclose(predictions, expected[:, 0], atol=TIGHT)
    np.testing.assert_allclose(
        np.stack(state.means)[:, :], means, atol=TIGHT)
    np.testing.assert_allclose(
        np.stack(state.variances), variances, atol=TIGHT)
    np.testing.assert_allclose(params, means.sum(axis=0), atol=TIGHT)


@jax.jit
def multi_output_run(decays, process, noise, jacobians, targets, covariance):
  """Online learning of y = J w + v (C outputs) with traced hyperparameters.
  """
  opt = mso.bayesian_multiscale(decays, process, noise)

  def step(carry, jac_y):
    params, state = carry
    jac, y = jac_y
    prediction = jac @ params
    error = y - prediction
    grads = -jac.T @ jnp.linalg.solve(covariance, error)
    updates, state = opt.update(
        grads, state, params, jacobian=jac, residual=error,
        observation_covariance=covariance)
    return (optax.apply_updates(params, updates), state), prediction

  params = jnp.zeros(jacobians.shape[-1], jacobians.dtype)
  (params, state), predictions = jax.lax.scan(
      step, (params, opt.init(params)), (jacobians, targets))
  return predictions, state.variances


@pytest.mark.filterwarnings('ignore:`initial_variances` is read only')
@hypothesis.settings(max_examples=10, deadline=None)
@hypothesis.given(
    decays=st.lists(st.floats(-0.9, 0.999), min_size=1, max_size=3),
    scale=st.floats(0.01, 3.0),
    noise=st.floats(0.05, 5.0),
    seed=st.integers(0, 2**16),
)
def test_d_dim_and_multi_output_match_literal_reference(
    decays, scale, noise, seed):
  with jax.enable_x64(True):
    k = len(decays)
    process = [scale * (1.0 - d * d) for d in decays]
    rng = np.random.default_rng(seed)
    outputs, num, steps = 3, 4, 12
    jacobians = rng.normal(size=(steps, outputs, num))
    targets = rng.normal(size=(steps, outputs))
    a = rng.normal(size=(outputs, outputs))
    covariance = noise * np.eye(outputs) + 0.1 * a @ a.T
    predictions, variances_out = multi_output_run(
        jnp.asarray(decays), jnp.asarray(process), jnp.asarray(noise),
        jnp.asarray(jacobians), jnp.asarray(targets),
        jnp.asarray(covariance))
    expected, _, variances = diagonal_reference(
        decays, process, noise, [scale] * k, jacobians, targets, covariance)
    bound = TIGHT * (1.0 + np.max(np.abs(expected)))
    np.testing.assert_allclose(predictions, expected, atol=bound)
    np.testing.assert_allclose(np.stack(variances_out), variances,
                               atol=TIGHT * (1.0 + scale))
    # d-dimensional scalar output (C = 1, params-shaped Jacobian).
    initial = jnp.full(k, scale)
    predictions_1 = traced_scalar_run(
        jnp.asarray(decays), jnp.asarray(process), jnp.asarray(noise),
        initial, jnp.asarray(jacobians[:, 0, :]),
        jnp.asarray(targets[:, 0]))
    expected_1, _, _ = diagonal_reference(
        decays, process, noise, [scale] * k, jacobians[:, :1, :],
        targets[:, :1])
    np.testing.assert_allclose(
        predictions_1, expected_1[:, 0],
        atol=TIGHT * (1.0 + np.max(np.abs(expected_1))))


def test_linear_model_recovers_static_weights():
  # A static target: decay 1, no process noise; the diagonal filter is then
  # a (diagonalised) Bayesian linear regression and must converge.
  with jax.enable_x64(True):
    key_x, key_w, key_v = jax.random.split(jax.random.key(3), 3)
    dim, steps = 5, 400
    truth = jax.random.normal(key_w, (dim,), jnp.float64)
    inputs = jax.random.normal(key_x, (steps, dim), jnp.float64)
    targets = inputs @ truth + 0.1 * jax.random.normal(
        key_v, (steps,), jnp.float64)
    opt = mso.bayesian_multiscale([1.0], [0.0], 0.01,
                                  initial_variances=[1.0])
    _, params, _ = run_scalar(opt, inputs, targets, 0.01)
    # Posterior sd after 400 observations is about 0.1/sqrt(400) = 0.005.
    np.testing.assert_allclose(params, truth, atol=0.05)


def test_multi_output_with_one_row_equals_scalar_path():
  with jax.enable_x64(True):
    inputs, targets = normal_stream(4, 20, 3)
    opt = mso.bayesian_multiscale([0.5, 0.95], [0.3, 0.05], 0.7)
    scalar, _, _ = run_scalar(opt, inputs, targets, 0.7)

    def step(carry, observation):
      params, state = carry
      x, y = observation
      prediction = x @ params
      updates, state = opt.update(
          jnp.zeros(3), state, params, jacobian=x[None],
          residual=jnp.reshape(y - prediction, (1,)))
      return (optax.apply_updates(params, updates), state), prediction

    params = jnp.zeros(3)
    _, rows = jax.jit(lambda carry, data: jax.lax.scan(step, carry, data))(
        (params, opt.init(params)), (inputs, targets))
    np.testing.assert_allclose(rows, scalar, atol=TIGHT)


def apply_mlp(params, inputs):
  hidden = jnp.tanh(inputs @ params['w1'] + params['b1'])
  return hidden @ params['w2'] + params['b2']


def mlp_params(key, dims=(3, 5, 2), dtype=jnp.float64):
  k1, k2 = jax.random.split(key)
  return {
      'w1': jax.random.normal(k1, dims[:2], dtype) / np.sqrt(dims[0]),
      'b1': jnp.zeros(dims[1], dtype),
      'w2': jax.random.normal(k2, dims[1:], dtype) / np.sqrt(dims[1]),
      'b2': jnp.zeros(dims[2], dtype),
  }


def test_gaussian_observation_batch_matches_manual_jacobian():
  with jax.enable_x64(True):
    params = mlp_params(jax.random.key(5))
    inputs = jax.random.normal(jax.random.key(6), (4, 3), jnp.float64)
    targets = jax.random.normal(jax.random.key(7), (4, 2), jnp.float64)
    info, grads, extra = jax.jit(
        mso.gaussian_observation, static_argnums=0)(
            apply_mlp, params, inputs, targets, 0.5)
    jac = jax.jit(jax.jacrev(lambda p: apply_mlp(p, inputs).reshape(-1)))(
        params)
    for name in params:
      np.testing.assert_allclose(extra['jacobian'][name], jac[name],
                                 atol=TIGHT)

    def loss(p):
      return 0.5 * jnp.sum((targets - apply_mlp(p, inputs))**2) / 0.5

    np.testing.assert_allclose(info.loss, loss(params), atol=TIGHT)
    expected_grads = jax.jit(jax.grad(loss))(params)
    for name in params:
      np.testing.assert_allclose(grads[name], expected_grads[name],
                                 atol=TIGHT)
    assert extra['residual'].shape == (8,)
    assert extra['observation_covariance'].shape == (8, 8)
    opt = mso.bayesian_multiscale([0.9, 0.999], [0.019, 0.002], 0.5)
    state = opt.init(params)
    updates, state = jax.jit(opt.update)(grads, state, params, **extra)
    assert all(np.all(np.isfinite(u)) for u in jax.tree.leaves(updates))


def test_categorical_observation_is_the_softmax_ekf():
  with jax.enable_x64(True):
    params = mlp_params(jax.random.key(8), dims=(3, 4, 3))
    inputs = jax.random.normal(jax.random.key(9), (2, 3), jnp.float64)
    labels = jnp.asarray([0, 2])
    info, grads, extra = jax.jit(
        mso.categorical_observation, static_argnums=0)(
            apply_mlp, params, inputs, labels, epsilon=1e-3)
    probs = jax.nn.softmax(apply_mlp(params, inputs), axis=-1)
    jac = jax.jit(jax.jacrev(lambda p: jax.nn.softmax(
        apply_mlp(p, inputs), axis=-1).reshape(-1)))(params)
    for name in params:
      np.testing.assert_allclose(extra['jacobian'][name], jac[name],
                                 atol=TIGHT)
    onehot = jax.nn.one_hot(labels, 3, dtype=jnp.float64)
    np.testing.assert_allclose(extra['residual'],
                               (onehot - probs).reshape(-1), atol=TIGHT)

    def block(p):
      return jnp.diag(p) - jnp.outer(p, p) + 1e-3 * jnp.eye(3)

    expected = jax.scipy.linalg.block_diag(block(probs[0]), block(probs[1]))
    np.testing.assert_allclose(extra['observation_covariance'], expected,
                               atol=TIGHT)
    np.testing.assert_allclose(
        info.loss, -jnp.sum(onehot * jnp.log(probs)), atol=TIGHT)

    def ce(p):
      return -jnp.sum(
          onehot * jax.nn.log_softmax(apply_mlp(p, inputs), axis=-1))

    expected_grads = jax.jit(jax.grad(ce))(params)
    for name in params:
      np.testing.assert_allclose(grads[name], expected_grads[name],
                                 atol=TIGHT)


def test_categorical_update_does_not_depend_on_epsilon_along_ones():
  # e and the rows of H^T are orthogonal to the all-ones direction of each
  # example, so adding a multiple of 1 1^T to R changes nothing.
  with jax.enable_x64(True):
    params = mlp_params(jax.random.key(10), dims=(3, 4, 3))
    inputs = jax.random.normal(jax.random.key(11), (3,), jnp.float64)
    _, grads, extra = jax.jit(
        mso.categorical_observation, static_argnums=0)(
            apply_mlp, params, inputs, jnp.asarray(1))
    opt = mso.bayesian_multiscale([0.9], [0.19], 1.0)
    state = opt.init(params)
    update = jax.jit(opt.update)
    first, _ = update(grads, state, params, **extra)
    shifted = dict(extra)
    shifted['observation_covariance'] = (
        extra['observation_covariance'] + 5.0 * jnp.ones((3, 3)))
    second, _ = update(grads, state, params, **shifted)
    for name in params:
      # S's condition number is at most ~1e4 here: 1e4 * eps * |update|.
      np.testing.assert_allclose(first[name], second[name], atol=1e-11)


def test_learning_the_prior_moves_the_scale_towards_the_truth():
  # q scaled by 10 (or 0.1) from the generating one: the learned process
  # scale must shrink (grow). 3000 steps at rate 0.02: the drift of log c
  # is ~ eta/4 per step at the start, far above the noise (sd ~ sqrt(eta)).
  with jax.enable_x64(True):
    env = mso.OneOverFEnvironment.from_timescales([1.0, 10.0, 100.0])
    sample = mso.sample_environment(env, jax.random.key(12), 3000,
                                    dtype=jnp.float64)
    q = np.asarray(env.process_variances)
    for factor in (10.0, 0.1):
      opt = mso.bayesian_multiscale(
          env.decays, factor * q, 1.0, learn_prior=True,
          prior_learning_rate=0.02)
      _, _, state = jax.jit(lambda x, y, opt=opt: run_scan(opt, x, y))(
          sample.inputs, sample.targets)
      scale = float(np.exp(state.log_process_scale))
      assert abs(np.log(scale * factor)) < 0.5 * abs(np.log(factor)), scale


def run_scan(opt, inputs, targets):
  run = helpers.online_regression(opt, inputs, targets, 1.0)
  return run.predictions, run.params, run.state


def test_jit_inject_hyperparams_and_no_recompilation():
  with jax.enable_x64(True):
    inputs, targets = normal_stream(13, 10, 2)
    plain = mso.bayesian_multiscale([0.5, 0.9], [0.3, 0.05], 0.7)
    injected = optax.inject_hyperparams(mso.bayesian_multiscale)(
        decays=jnp.asarray([0.5, 0.9]),
        process_variances=jnp.asarray([0.3, 0.05]), noise_variance=0.7)
    expected, _, _ = run_scalar(plain, inputs, targets, 0.7)
    params = jnp.zeros(2)
    state = injected.init(params)
    update = jax.jit(injected.update)
    predictions = []
    for x, y in zip(inputs, targets):
      prediction = x @ params
      predictions.append(prediction)
      updates, state = update(-x * (y - prediction) / 0.7, state, params,
                              jacobian=x)
      params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(jnp.stack(predictions), expected, atol=TIGHT)
    assert update._cache_size() == 1


def test_apply_if_finite_skips_nan_steps():
  opt = optax.apply_if_finite(
      mso.bayesian_multiscale([0.9], [0.19], 1.0), max_consecutive_errors=3)
  params = jnp.zeros(2)
  state = opt.init(params)
  x = jnp.asarray([1.0, jnp.nan])
  updates, new_state = opt.update(-x, state, params, jacobian=x)
  assert np.all(np.asarray(updates) == 0.0)
  np.testing.assert_array_equal(
      new_state.inner_state.variances[0], state.inner_state.variances[0])
  assert int(new_state.notfinite_count) == 1


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_dtypes_are_preserved(dtype):
  params = {'w': jnp.zeros(3, dtype)}
  opt = mso.bayesian_multiscale([0.5, 0.99], [0.75, 0.0199], 1.0)
  state = opt.init(params)
  x = {'w': jnp.ones(3, dtype)}
  updates, new_state = jax.jit(opt.update)(
      {'w': -jnp.ones(3, dtype)}, state, params, jacobian=x)
  assert updates['w'].dtype == dtype
  for old, new in zip(jax.tree.leaves(state), jax.tree.leaves(new_state)):
    assert old.dtype == new.dtype and old.shape == new.shape
  # S = 1 + 3 * 2 = 7 (stationary variances 1); update of each weight
  # = 0.5 * 1/7 + 0.99 * 1/7.
  np.testing.assert_allclose(
      np.asarray(updates['w'], np.float32), (0.5 + 0.99) / 7.0,
      rtol=float(jnp.finfo(dtype).eps) * 4)


def test_state_dtype_and_abstract_init():
  params = {'w': jax.ShapeDtypeStruct((4,), jnp.float32)}
  opt = mso.bayesian_multiscale([0.9], [0.19], 1.0, state_dtype=jnp.bfloat16)
  state = jax.eval_shape(opt.init, params)
  assert state.means[0]['w'].dtype == jnp.bfloat16
  # The covariance is kept in at least float32 (it must keep relaxing).
  assert state.variances[0]['w'].dtype == jnp.float32


def test_get_bayesian_subweights():
  params = jnp.asarray([1.0, 2.0])
  opt = mso.bayesian_multiscale([0.5, 0.9], [0.75, 0.19], 2.0)
  state = opt.init(params)
  x = jnp.asarray([1.0, 0.0])
  updates, state = opt.update(-x, state, params, jacobian=x)
  params = optax.apply_updates(params, updates)
  belief = mso.get_bayesian_subweights(params, state)
  np.testing.assert_allclose(belief.decays, [0.5, 0.9], rtol=1e-7)
  np.testing.assert_allclose(belief.prior_mean, [1.0, 2.0], rtol=1e-6)
  # S = 2 + 1 * (1 + 1) = 4; Je = -r grads = 2.
  np.testing.assert_allclose(belief.means[0], [0.5 * 2 / 4, 0.0], rtol=1e-6)
  np.testing.assert_allclose(belief.means[1], [0.9 * 2 / 4, 0.0], rtol=1e-6)
  np.testing.assert_allclose(
      belief.learning_rates[1], 0.9 * np.asarray(belief.variances[1]) / 4.0,
      rtol=1e-6)



def test_the_state_keeps_the_decays_of_the_last_update():
  # get_bayesian_subweights(params, state) reads the rates' decays from the
  # state; under inject_hyperparams they follow the hyperparameters.
  opt = optax.inject_hyperparams(mso.bayesian_multiscale)(
      decays=jnp.asarray([0.5, 0.9]), process_variances=[0.75, 0.19],
      noise_variance=1.0)
  params = jnp.zeros(2)
  state = opt.init(params)
  belief = mso.get_bayesian_subweights(params, state)
  np.testing.assert_allclose(belief.decays, [0.5, 0.9], rtol=1e-7)
  state.hyperparams['decays'] = jnp.asarray([0.25, 0.8])
  x = jnp.asarray([1.0, 0.0])
  _, state = opt.update(-x, state, params, jacobian=x)
  belief = mso.get_bayesian_subweights(params, state)
  np.testing.assert_allclose(belief.decays, [0.25, 0.8], rtol=1e-7)
  np.testing.assert_allclose(
      belief.learning_rates[0],
      0.25 * np.asarray(belief.variances[0]) / state.inner_state
      .innovation_variance, rtol=1e-6)


@pytest.mark.parametrize('kwargs, error, match', [
    (dict(decays=[1.5], process_variances=[0.1], noise_variance=1.0),
     ValueError, 'decays'),
    (dict(decays=[0.5], process_variances=[-0.1], noise_variance=1.0),
     ValueError, 'process_variances'),
    (dict(decays=[0.5], process_variances=[0.1], noise_variance=0.0),
     ValueError, 'noise_variance'),
    (dict(decays=[0.5, 0.9], process_variances=[0.1], noise_variance=1.0),
     ValueError, 'same length'),
    (dict(decays=[0.5], process_variances=[0.1], noise_variance=1.0,
          learn_prior=1), TypeError, 'learn_prior'),
    (dict(decays=[0.5], process_variances=[0.1], noise_variance=1.0,
          learn_noise_variance=True), ValueError, 'learn_prior'),
    (dict(decays=[0.5], process_variances=[0.1], noise_variance=1.0,
          initial_variances=[-1.0]), ValueError, 'initial_variances'),
    (dict(decays=[0.5], process_variances=[0.1], noise_variance=1.0,
          state_dtype=jnp.int32), TypeError, 'state_dtype'),
])
def test_construction_errors(kwargs, error, match):
  with pytest.raises(error, match=match):
    mso.bayesian_multiscale(**kwargs)


def test_update_errors():
  opt = mso.bayesian_multiscale([0.5], [0.1], 1.0)
  params = jnp.zeros(3)
  state = opt.init(params)
  with pytest.raises(ValueError, match='jacobian'):
    opt.update(params, state, params)
  with pytest.raises(ValueError, match='jacobian'):
    opt.update(params, state, params, jacobian=jnp.zeros((2, 3)))
  learner = mso.bayesian_multiscale([0.5], [0.1], 1.0, learn_prior=True)
  with pytest.raises(ValueError, match='residual'):
    learner.update(params, learner.init(params), params, jacobian=params)


def test_categorical_stream_with_learned_prior_learns():
  # Softmax regression on a fixed linear rule: the online accuracy over the
  # second half must beat chance (1/3) by a wide margin, and stay finite.
  key_x, key_w = jax.random.split(jax.random.key(20))
  inputs = jax.random.normal(key_x, (300, 4))
  truth = jax.random.normal(key_w, (4, 3)) * 3.0
  labels = jnp.argmax(inputs @ truth, axis=-1)

  def apply_fn(params, x):
    return x @ params['w']

  opt = mso.bayesian_multiscale(
      [0.99, 0.999], [0.01 * (1 - 0.99**2), 0.1 * (1 - 0.999**2)], 1.0,
      learn_prior=True)

  def step(carry, observation):
    params, state = carry
    x, label = observation
    info, grads, extra = mso.categorical_observation(
        apply_fn, params, x, label)
    updates, state = opt.update(grads, state, params, **extra)
    correct = jnp.argmax(info.predictions) == label
    return (optax.apply_updates(params, updates), state), correct

  params = {'w': jnp.zeros((4, 3))}
  (params, state), correct = jax.jit(
      lambda carry, data: jax.lax.scan(step, carry, data))(
          (params, opt.init(params)), (inputs, labels))
  assert np.all(np.isfinite(params['w']))
  assert np.isfinite(float(state.log_process_scale))
  # Chance is 1/3; a linear rule with margin is learned within 150 steps.
  assert float(jnp.mean(correct[150:])) > 0.8


def test_bfloat16_state_tracks_float32_state():
  # The stored means and variances are rounded to bfloat16 every step
  # (relative error 2^-8 each); after 200 steps of a contracting filter the
  # predictions must stay within a few percent of the float32-state run.
  key_x, key_y = jax.random.split(jax.random.key(21))
  inputs = jax.random.normal(key_x, (200, 4))
  targets = jnp.cumsum(0.1 * jax.random.normal(key_y, (200,)))
  results = {}
  for dtype in (jnp.float32, jnp.bfloat16):
    opt = mso.bayesian_multiscale(
        [0.9, 0.99], [0.19, 0.0199], 0.1, state_dtype=dtype)
    results[dtype], _, state = run_scalar(opt, inputs, targets, 0.1)
    assert state.means[0].dtype == dtype
  np.testing.assert_allclose(results[jnp.bfloat16], results[jnp.float32],
                             atol=0.05 * float(jnp.max(jnp.abs(targets))))


def test_state_structure_is_stable_under_cond():
  opt = mso.bayesian_multiscale([0.9, 0.99], [0.19, 0.0199], 1.0)
  params = {'a': jnp.zeros(3), 'b': jnp.zeros((2, 2))}
  state = opt.init(params)
  _, new_state = opt.update(
      params, state, params, jacobian=jax.tree.map(jnp.ones_like, params))
  chosen = jax.lax.cond(True, lambda: state, lambda: new_state)
  assert jax.tree.structure(chosen) == jax.tree.structure(state)


_SHARDING_SCRIPT = textwrap.dedent('''
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    import multiscale_optax as mso

    mesh = Mesh(np.asarray(jax.devices()).reshape(4, 2), ('data', 'model'))
    shardings = {
        'kernel': NamedSharding(mesh, P('data', 'model')),
        'bias': NamedSharding(mesh, P('model')),
    }
    params = jax.device_put({
        'kernel': jnp.ones((64, 32), jnp.float32),
        'bias': jnp.ones(32, jnp.float32),
    }, shardings)
    opt = mso.bayesian_multiscale([0.9, 0.99], [0.19, 0.0199], 1.0)
    state = opt.init(params)
    for tree in (*state.means, *state.variances):
      for name, leaf in tree.items():
        assert leaf.sharding.is_equivalent_to(shardings[name], leaf.ndim), (
            'init', name, leaf.sharding)

    def step(params, state, grads):
      updates, state = opt.update(grads, state, params, jacobian=grads)
      return optax.apply_updates(params, updates), state

    grads = jax.tree.map(lambda p: 0.01 * jnp.ones_like(p), params)
    jitted = jax.jit(step, donate_argnums=(0, 1))
    for _ in range(2):
      params, state = jitted(params, state, grads)
    for tree in (*state.means, *state.variances, params):
      for name, leaf in tree.items():
        assert leaf.sharding.is_equivalent_to(shardings[name], leaf.ndim), (
            name, leaf.sharding)
    print('SHARDING-OK')
''')


def test_state_is_sharded_like_the_params():
  # S is one reduction over the whole network, so the step has one scalar
  # all-reduce; every params-shaped array must keep its param's sharding.
  helpers.run_on_eight_cpu_devices(_SHARDING_SCRIPT)


def _state_copies(opt, params, sizes=()):
  """The copies of params-sized state arrays in the compiled donated step
  (and, with ``sizes``, every copy of an array of one of those sizes).

  On XLA:CPU a copy is an extra read and write of the array per step: the
  step reads an old state array after the loop that overwrites it in place
  could have run, so XLA copies it first (or writes a new value to a
  temporary and copies that into the state).
  """
  state = opt.init(params)
  jacobian = jax.tree.map(jnp.ones_like, params)

  def step(params, state, jacobian, grads):
    updates, state = opt.update(grads, state, params, jacobian=jacobian,
                                residual=jnp.ones(()))
    return optax.apply_updates(params, updates), state

  text = jax.jit(step, donate_argnums=(0, 1)).lower(
      params, state, jacobian, params).compile().as_text()
  entry = text[text.index('\nENTRY'):]
  # The shape is the first word after ' = ' (f32[] for a scalar).
  def size(line):
    shape = line.split(' = ')[1].split(' ')[0]
    return int(np.prod([int(d) for d in re.findall(r'\d+', shape.split(
        '[', 1)[1].split(']')[0])]))
  return [line.strip() for line in entry.splitlines()
          if (' copy(%state_' in line
              and not line.split(' = ')[1].split(' ')[0].endswith('[]'))
          or (' copy(' in line and size(line) in sizes)]


_TAU_ONE = float(np.exp(-1.0))
_DECAY_SETS = {
    'k1': [0.9], 'k1_tau1': [_TAU_ONE], 'k1_zero': [0.0],
    'k1_negative': [-0.5], 'k4': [0.5 ** (1 / 4 ** i) for i in range(4)],
    'k4_tau1': [_TAU_ONE, 0.9, 0.99, 0.999],
    'k4_zero': [0.0, 0.9, 0.99, 0.999], 'k2_zero': [0.0, 0.9],
    'k2_negative': [-0.3, 0.99]}


@pytest.mark.parametrize('storage', [None, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize('name', sorted(_DECAY_SETS))
def test_donated_state_is_updated_in_place(name, storage):
  # Every decay (below 1/2, 0, negative), leaves of different shapes and
  # narrow storage: no state array is copied before it is overwritten.
  decays = _DECAY_SETS[name]
  opt = mso.bayesian_multiscale(
      decays, [max(1 - d * d, 1e-3) for d in decays], 1.0,
      state_dtype=storage)
  params = {'kernel': jnp.zeros((8, 16)), 'bias': jnp.zeros(16),
            'scale': jnp.zeros(())}
  assert not _state_copies(opt, params)


@pytest.mark.parametrize('rank', [1, 3])
@pytest.mark.parametrize('name', ['k1', 'k4_tau1', 'k2_negative'])
def test_donated_low_rank_state_is_updated_in_place(name, rank):
  # The truncation writes the new factor as a rank-N update of the old one,
  # in place: no state array (factor included) is copied first.
  decays = _DECAY_SETS[name]
  opt = mso.bayesian_multiscale(
      decays, [max(1 - d * d, 1e-3) for d in decays], 1.0, rank=rank)
  params = {'kernel': jnp.zeros((8, 16)), 'bias': jnp.zeros(16)}
  assert not _state_copies(opt, params, sizes=(8 * 16 * rank, 16 * rank))


@pytest.mark.parametrize('learn_prior', [False, True])
@pytest.mark.parametrize('num', [1, 2, 4])
def test_donated_means_are_updated_in_place(num, learn_prior):
  # The params' increment is read from the new means (not the old ones);
  # every variance's loop is ordered after the loops that read the old
  # variances (the new means, sensitivities and, with one subweight, the
  # params' increment), so nothing is copied.
  decays = [0.5 ** (1 / 4 ** i) for i in range(num)]
  opt = mso.bayesian_multiscale(decays, [1 - d * d for d in decays], 1.0,
                                learn_prior=learn_prior)
  assert not _state_copies(opt, jnp.zeros(4096))


def test_state_copies_finds_a_copied_state():
  # The check above can fail: a traced decay reads the old means, and the
  # increment that does so is written out before the means are overwritten;
  # this test's own step reads an old mean after its update instead.
  opt = mso.bayesian_multiscale([0.9, 0.99], [0.19, 0.02], 1.0)
  params = jnp.zeros(64)
  state = opt.init(params)

  def step(params, state, jacobian, grads):
    updates, new_state = opt.update(grads, state, params, jacobian=jacobian,
                                    residual=jnp.ones(()))
    return optax.apply_updates(params, updates) + state.means[0], new_state

  text = jax.jit(step, donate_argnums=(0, 1)).lower(
      params, state, params, params).compile().as_text()
  assert ' copy(%state_means_0' in text


@pytest.mark.parametrize('storage', [None, jnp.float32])
def test_every_decay_matches_traced_decays_in_float64(storage):
  # Concrete decays take the in-place forms (the increment read from the new
  # mean; 0 for a zero decay); traced ones (inject_hyperparams) read the old
  # means. Both are the same filter.
  with jax.enable_x64(True):
    decays = [0.0, _TAU_ONE, -0.4, 0.99]
    variances = [0.5, 0.3, 0.2, 0.02]
    plain = mso.bayesian_multiscale(decays, variances, 0.7,
                                    state_dtype=storage)
    injected = optax.inject_hyperparams(
        mso.bayesian_multiscale, static_args=('state_dtype',))(
            decays=jnp.asarray(decays),
            process_variances=jnp.asarray(variances), noise_variance=0.7,
            state_dtype=storage)
    keys = jax.random.split(jax.random.key(3), 3)
    params = {'kernel': jax.random.normal(keys[0], (3, 2), jnp.float64),
              'bias': jnp.zeros(2, jnp.float64)}
    inputs = jax.random.normal(keys[1], (12, 3), jnp.float64)
    targets = jax.random.normal(keys[2], (12, 2), jnp.float64)
    results = []
    for opt in (plain, injected):
      current, state = params, opt.init(params)
      for x, y in zip(inputs, targets):
        # One output: y[0] of the linear model.
        residual = y[0] - (x @ current['kernel'] + current['bias'])[0]
        jacobian = {'kernel': jnp.zeros((3, 2)).at[:, 0].set(x),
                    'bias': jnp.asarray([1.0, 0.0])}
        grads = jax.tree.map(
            lambda j, r=residual: -j * r / 0.7, jacobian)
        updates, state = jax.jit(opt.update)(grads, state, current,
                                             jacobian=jacobian)
        current = optax.apply_updates(current, updates)
      inner = getattr(state, 'inner_state', state)
      results.append((current, inner.means, inner.variances))
    for first, second in zip(*(jax.tree.leaves(r) for r in results)):
      np.testing.assert_allclose(first, second, rtol=TIGHT, atol=TIGHT)
    # The zero-decay subweight holds nothing between steps.
    assert all(np.all(leaf == 0) for leaf in jax.tree.leaves(
        results[0][1][0]))
