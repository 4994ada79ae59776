"""bayesian_multiscale is right or loudly refused on every input.

Each test below failed on the learner before its hardening (silently wrong
results, a poisoned state, or a cryptic crash) and states the behaviour that
replaced it.
"""

from __future__ import annotations

import math
import warnings

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import multiscale_optax as mso


def _linear_step(opt, x, y, noise=1.0, **extra):
  """One observation of y = x.w for params w (a vector)."""

  def step(params, state):
    prediction = x @ params
    grads = -x * (y - prediction) / noise
    updates, state = opt.update(
        grads, state, params, jacobian=x, residual=y - prediction, **extra)
    return optax.apply_updates(params, updates), state
  return step


def _finite(tree) -> bool:
  """Every inexact leaf is finite (but the innovation variance, which is
  NaN until the first observation and may overflow to inf with S)."""
  if isinstance(tree, mso.BayesianMultiscaleState):
    tree = tree._replace(innovation_variance=jnp.zeros([]))
  return all(bool(jnp.all(jnp.isfinite(leaf)))
             for leaf in jax.tree.leaves(tree)
             if jnp.issubdtype(leaf.dtype, jnp.inexact))


# §1.1 The scalar path checks the shape of `observation_covariance`.
@pytest.mark.parametrize('covariance', [
    jnp.ones((1, 1)), jnp.ones(3), jnp.ones((3, 3))])
def test_scalar_observation_covariance_must_be_a_scalar(covariance):
  opt = mso.bayesian_multiscale([0.9], [0.19], 1.0)
  params = jnp.zeros(3)
  state = opt.init(params)
  with pytest.raises(ValueError, match=r'observation_covariance.*shape'):
    opt.update(jnp.ones(3), state, params, jacobian=jnp.ones(3),
               residual=jnp.asarray(1.0), observation_covariance=covariance)


def test_multi_output_observation_covariance_must_be_n_by_n():
  opt = mso.bayesian_multiscale([0.9], [0.19], 1.0)
  params = jnp.zeros(3)
  state = opt.init(params)
  with pytest.raises(ValueError, match=r'shape \(2, 2\)'):
    opt.update(jnp.ones(3), state, params, jacobian=jnp.ones((2, 3)),
               residual=jnp.ones(2), observation_covariance=jnp.ones(2))


# §1.2 Narrow state keeps decaying; the covariance relaxes and fits.
@pytest.mark.parametrize('state_dtype', [jnp.bfloat16, jnp.float16])
def test_narrow_means_keep_decaying(state_dtype):
  decay, steps = 0.9999, 2000
  opt = mso.bayesian_multiscale([decay], [1e-4], 1.0, state_dtype=state_dtype)
  params = jnp.zeros(2)
  state = opt.init(params)
  state = state._replace(means=(jnp.ones(2, state_dtype),))
  zero = jnp.zeros(2)

  @jax.jit
  def run(state):
    def body(state, _):
      _, state = opt.update(zero, state, params, jacobian=zero)
      return state, None
    return jax.lax.scan(body, state, None, length=steps)[0]

  belief = mso.get_bayesian_subweights(params, run(state))
  expected = decay ** steps  # 0.819
  # One storage rounding of the final value (the scale carries the decay).
  bound = 2 * float(jnp.finfo(state_dtype).eps) * expected
  np.testing.assert_allclose(
      np.asarray(belief.means[0], np.float64), expected, rtol=0, atol=bound)


@pytest.mark.parametrize('state_dtype', [jnp.bfloat16, jnp.float16])
def test_narrow_state_variances_relax_in_float32(state_dtype):
  decay, process, steps = 0.9999, 0.336 * (1 - 0.9999 ** 2), 2000
  opt = mso.bayesian_multiscale(
      [decay], [process], 1.0, initial_variances=[0.0625],
      state_dtype=state_dtype)
  params = jnp.zeros(2)
  state = opt.init(params)
  assert state.variances[0].dtype == jnp.float32
  zero = jnp.zeros(2)

  def body(state, _):
    _, state = opt.update(zero, state, params, jacobian=zero)
    return state, None
  state = jax.jit(lambda s: jax.lax.scan(body, s, None, length=steps)[0])(
      state)
  stationary = process / (1 - decay ** 2)
  expected = stationary + (0.0625 - stationary) * decay ** (2 * steps)
  # float32 per-step roundings of values <= 0.34, summed over the steps.
  np.testing.assert_allclose(np.asarray(state.variances[0]), expected,
                             rtol=0, atol=steps * 0.34 * 2 ** -23)


def test_float16_state_holds_large_variances():
  opt = mso.bayesian_multiscale([0.9999], [100.0], 1.0,
                                state_dtype=jnp.float16)
  params = jnp.zeros(2)
  state = opt.init(params)
  _, state = opt.update(jnp.zeros(2), state, params, jacobian=jnp.ones(2))
  assert _finite(state)
  assert float(state.variances[0][0]) > 65504


# §1.3 One outlier cannot poison the learned prior scale.
def _calibrated_stream(steps, seed=0):
  rng = np.random.default_rng(seed)
  inputs = rng.normal(size=(steps, 4))
  weights = np.zeros(4)
  targets = []
  for x in inputs:
    weights = 0.99 * weights + rng.normal(size=4) * math.sqrt(0.0199)
    targets.append(x @ weights + rng.normal())
  return jnp.asarray(inputs, jnp.float32), jnp.asarray(targets, jnp.float32)


def _run(targets, inputs, **options):
  opt = mso.bayesian_multiscale([0.99], [0.0199], 1.0, **options)
  run = helpers.online_regression(
      opt, inputs, targets, 1.0, collect=lambda state: state.log_process_scale)
  return np.asarray(run.collected), np.asarray((targets - run.predictions) ** 2)


_OUTLIER_AT = 300
_AFTER = slice(_OUTLIER_AT + 1, _OUTLIER_AT + 201)


@pytest.mark.parametrize('sigmas', [100.0, 1000.0])
def test_an_outlier_moves_the_learned_scale_a_bounded_step(sigmas):
  inputs, targets = _calibrated_stream(600)
  at = _OUTLIER_AT
  outlier = targets.at[at].add(sigmas * 5.0)  # S is about 25 here
  scales, losses = _run(outlier, inputs, learn_prior=True)
  assert np.all(np.isfinite(scales)) and np.all(np.isfinite(losses))
  jump = scales[at] - scales[at - 1]
  # One normalised step: at most eta = 0.03 (the default); in all, the
  # outlier's share of the steps that follow is at most about 20 eta
  # (prior_learning's module docstring), so the scale stays within a
  # factor of 10^3 (6.9 in log) of where it was.
  assert 0.0 < jump <= 0.03 + 1e-6
  assert np.max(np.abs(scales[at:] - scales[at - 1])) < np.log(1e3)
  # The outlier's damage is the Kalman mean's, not the learned prior's:
  # with a fixed prior the next 200 steps lose as much or more.
  _, fixed_losses = _run(outlier, inputs)
  assert losses[_AFTER].mean() <= fixed_losses[_AFTER].mean()


@pytest.mark.parametrize('sigmas', [100.0, 1000.0])
def test_outlier_threshold_makes_the_update_robust(sigmas):
  inputs, targets = _calibrated_stream(600)
  at = _OUTLIER_AT
  baseline_scales, baseline_losses = _run(
      targets, inputs, learn_prior=True, outlier_threshold=5.0)
  outlier = targets.at[at].add(sigmas * 5.0)
  scales, losses = _run(
      outlier, inputs, learn_prior=True, outlier_threshold=5.0)
  assert scales[at] - scales[at - 1] <= 0.03 + 1e-6
  # The clipped outlier's share of the normalised steps that follow is at
  # most about 20 eta = 0.6 in all (prior_learning's module docstring),
  # and the next 200 steps' loss is close to the run without the outlier.
  assert abs(scales[at + 30] - baseline_scales[at + 30]) < 20 * 0.03
  # The clipped outlier still makes the largest step a calibrated
  # observation makes (5 sigma), a few per cent of loss over 200 steps.
  assert losses[_AFTER].mean() < 1.15 * baseline_losses[_AFTER].mean()
  # Without an outlier the threshold (5 sigma) leaves the filter exact.
  _, exact_losses = _run(targets, inputs, learn_prior=True)
  np.testing.assert_allclose(exact_losses, baseline_losses, rtol=1e-5)


def test_outlier_threshold_needs_the_residual():
  opt = mso.bayesian_multiscale([0.9], [0.19], 1.0, outlier_threshold=5.0)
  params = jnp.zeros(2)
  with pytest.raises(ValueError, match=r'outlier_threshold.*residual'):
    opt.update(jnp.zeros(2), opt.init(params), params, jacobian=jnp.ones(2))
  with pytest.raises(ValueError, match='outlier_threshold'):
    mso.bayesian_multiscale([0.9], [0.19], 1.0, outlier_threshold=0.0)


# §1.4 A non-finite observation cannot corrupt the belief.
def _multi_output_update(opt, state, params, jacobian, residual):
  return opt.update(jnp.zeros_like(params), state, params,
                    jacobian=jacobian, residual=residual)


@pytest.mark.parametrize('bad', ['residual', 'jacobian_entry', 'covariance'])
@pytest.mark.parametrize('rank', [0, 2])
def test_a_non_finite_observation_is_skipped_and_counted(bad, rank):
  opt = optax.apply_if_finite(
      mso.bayesian_multiscale([0.5, 0.99], [0.75, 0.02], 1.0, rank=rank), 3)
  params = jnp.arange(4.0)
  state = opt.init(params)
  jacobian = jnp.ones((2, 4))
  residual = jnp.ones(2)
  covariance = jnp.eye(2)
  if bad == 'residual':
    residual = residual.at[1].set(jnp.nan)
  elif bad == 'jacobian_entry':
    jacobian = jacobian.at[0, 2].set(jnp.nan)
  else:
    covariance = covariance.at[0, 1].set(jnp.inf)

  @jax.jit
  def step(params, state, jacobian, residual, covariance):
    updates, state = opt.update(
        jnp.zeros(4), state, params, jacobian=jacobian, residual=residual,
        observation_covariance=covariance)
    return optax.apply_updates(params, updates), state

  new_params, new_state = step(params, state, jacobian, residual, covariance)
  inner = new_state.inner_state
  assert _finite(new_params) and _finite(inner)
  assert int(new_state.notfinite_count) == 0  # the grads were finite
  assert int(inner.skipped_observations) == 1
  # Only the prior's prediction was applied: the variances relaxed, the
  # means (zero) stayed.
  for variances in inner.variances:
    np.testing.assert_allclose(variances, variances[0])
  np.testing.assert_array_equal(new_params, params)
  # The state is usable: a good observation next is learned from.
  new_params, newer_state = step(
      new_params, new_state, jnp.ones((2, 4)), jnp.ones(2), jnp.eye(2))
  assert int(newer_state.inner_state.skipped_observations) == 1
  assert not np.allclose(new_params, params)


def test_a_traced_covariance_that_is_not_positive_definite_is_skipped():
  opt = mso.bayesian_multiscale([0.9], [0.19], 1.0)
  params = jnp.zeros(2)
  state = opt.init(params)
  indefinite = jnp.asarray([[1.0, 2.0], [2.0, 1.0]])
  updates, state = jax.jit(
      lambda state, covariance: opt.update(
          jnp.zeros(2), state, params, jacobian=jnp.zeros((2, 2)),
          residual=jnp.ones(2), observation_covariance=covariance))(
              state, indefinite)
  assert int(state.skipped_observations) == 1
  assert _finite(state) and _finite(updates)


def test_a_huge_finite_jacobian_does_not_overflow():
  opt = mso.bayesian_multiscale([0.9], [0.19], 1.0)
  params = jnp.zeros(3, jnp.float32)
  state = opt.init(params)
  jacobian = jnp.asarray([3e19, 1.0, 0.0], jnp.float32)
  step = _linear_step(opt, jacobian, jnp.asarray(1.0, jnp.float32))
  params, state = jax.jit(step)(params, state)
  assert _finite(state) and _finite(params)
  assert int(state.skipped_observations) == 0
  # The observed weight's posterior variance collapses (J^2 v >> r), so
  # the prediction leaves only q = 0.19; the others keep theirs (J = 1:
  # v - v^2/S with S ~ 1e39 leaves v = 1, and 0.81 + 0.19 = 1).
  np.testing.assert_allclose(state.variances[0][0], 0.19, rtol=1e-6)
  np.testing.assert_allclose(state.variances[0][1:], 1.0, rtol=1e-6)


# §1.5 1 - gamma keeps its precision at long timescales.
@pytest.mark.parametrize('timescale', [1e6, 1e7, 1e8])
def test_long_timescales_decay_at_their_rate(timescale):
  decay = float(np.exp(-1.0 / timescale))
  steps = 1000
  opt = mso.bayesian_multiscale(
      [decay], [1.0 - decay ** 2], 1.0, initial_variances=[0.0])
  params = jnp.zeros(2, jnp.float32)
  state = opt.init(params)
  state = state._replace(means=(jnp.ones(2, jnp.float32),))
  zero = jnp.zeros(2, jnp.float32)

  def body(state, _):
    _, state = opt.update(zero, state, params, jacobian=zero)
    return state, None
  state = jax.jit(lambda s: jax.lax.scan(body, s, None, length=steps)[0])(
      state)
  belief = mso.get_bayesian_subweights(params, state)
  decayed = 1.0 - decay ** steps  # about 1e-3 ... 1e-5
  # The scale carries the decay to ~2^-40 per step; one float32 rounding of
  # the mean (2^-24 relative to 1) bounds the error of 1 - mu.
  np.testing.assert_allclose(1.0 - np.asarray(belief.means[0], np.float64),
                             decayed, rtol=0, atol=2 ** -23)
  # The variance grows from 0 towards 1 at rate 1 - gamma^2, each step one
  # float32 rounding of a value <= 2e-3 (2.4e-10 each).
  grown = 1.0 - decay ** (2 * steps)
  np.testing.assert_allclose(np.asarray(state.variances[0], np.float64),
                             grown, rtol=1e-3)


# §1.6 Complex params are refused.
def test_complex_params_are_refused_at_init():
  opt = mso.bayesian_multiscale([0.9], [0.19], 1.0)
  with pytest.raises(TypeError, match='complex'):
    opt.init({'w': jnp.zeros(2, jnp.complex64)})


def test_a_complex_jacobian_is_refused():
  opt = mso.bayesian_multiscale([0.9], [0.19], 1.0)
  params = jnp.zeros(2)
  state = opt.init(params)
  with pytest.raises(TypeError, match='jacobian'):
    opt.update(jnp.zeros(2), state, params,
               jacobian=jnp.ones(2, jnp.complex64))


# §1.8 Narrow injected decays are refused with the remedy.
def test_injected_decays_in_bfloat16_are_refused_with_the_remedy():
  params = jnp.zeros(2, jnp.bfloat16)
  injected = optax.inject_hyperparams(mso.bayesian_multiscale)(
      np.asarray([0.5, 0.999]), np.asarray([0.75, 0.002]), 1.0)
  with pytest.raises(TypeError, match=r'hyperparam_dtype=jnp\.float32'):
    injected.init(params)
  with pytest.raises(TypeError, match='hyperparam_dtype'):
    jax.jit(injected.init)(params)


def test_injected_decays_in_float32_work_with_bfloat16_params():
  params = jnp.zeros(2, jnp.bfloat16)
  injected = optax.inject_hyperparams(
      mso.bayesian_multiscale, hyperparam_dtype=jnp.float32)(
          np.asarray([0.5, 0.999]), np.asarray([0.75, 0.002]), 1.0)
  plain = mso.bayesian_multiscale([0.5, 0.999], [0.75, 0.002], 1.0)
  for opt in (injected, plain):
    state = jax.jit(opt.init)(params)
    updates, state = jax.jit(opt.update)(
        jnp.ones(2, jnp.bfloat16), state, params,
        jacobian=jnp.ones(2, jnp.bfloat16))
    assert _finite(updates) and updates.dtype == jnp.bfloat16
  decay = np.float64(np.float32(0.999))
  np.testing.assert_allclose(
      np.asarray(jax.jit(injected.init)(params).inner_state.variances[1]),
      np.float32(0.002) / ((1 - decay) * (1 + decay)), rtol=1e-6)


# §2 Validation.
@pytest.mark.parametrize('covariance, match', [
    (0.0, 'positive definite'),
    (-0.5, 'positive definite'),
    (np.nan, 'finite'),
])
def test_bad_scalar_observation_covariance_is_refused(covariance, match):
  opt = mso.bayesian_multiscale([0.9], [0.19], 1.0)
  params = jnp.zeros(2)
  with pytest.raises(ValueError, match=match):
    opt.update(jnp.zeros(2), opt.init(params), params,
               jacobian=jnp.zeros(2), observation_covariance=covariance)


@pytest.mark.parametrize('covariance, match', [
    ([[1.0, 2.0], [2.0, 1.0]], 'positive definite'),
    ([[1.0, 0.5], [0.0, 1.0]], 'symmetric'),
])
def test_bad_observation_covariance_matrix_is_refused(covariance, match):
  opt = mso.bayesian_multiscale([0.9], [0.19], 1.0)
  params = jnp.zeros(2)
  with pytest.raises(ValueError, match=match):
    opt.update(jnp.zeros(2), opt.init(params), params,
               jacobian=jnp.ones((2, 2)), residual=jnp.ones(2),
               observation_covariance=jnp.asarray(covariance))


def test_float8_state_dtype_is_refused_at_construction():
  with pytest.raises(TypeError, match='state_dtype'):
    mso.bayesian_multiscale([0.9], [0.19], 1.0, state_dtype=jnp.float8_e4m3fn)


def test_injected_initial_variances_warn_that_changes_have_no_effect():
  injected = optax.inject_hyperparams(mso.bayesian_multiscale)(
      np.asarray([0.9]), np.asarray([0.19]), 1.0,
      initial_variances=np.asarray([2.0]))
  params = jnp.zeros(2)
  state = injected.init(params)
  with pytest.warns(UserWarning, match=r'initial_variances.*read only by init'):
    injected.update(jnp.zeros(2), state, params, jacobian=jnp.zeros(2))
  static = optax.inject_hyperparams(
      mso.bayesian_multiscale, static_args=('initial_variances',))(
          np.asarray([0.9]), np.asarray([0.19]), 1.0,
          initial_variances=(2.0,))
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    static.update(jnp.zeros(2), static.init(params), params,
                  jacobian=jnp.zeros(2))


@pytest.mark.parametrize('field', ['means', 'variances', 'factors'])
def test_a_state_leaf_of_a_broadcastable_wrong_shape_is_refused(field):
  opt = mso.bayesian_multiscale([0.9], [0.19], 1.0, rank=2)
  params = jnp.zeros(2)
  state = opt.init(params)
  wrong = {'means': jnp.zeros(1), 'variances': jnp.ones(1),
           'factors': jnp.zeros((1, 2))}[field]
  state = state._replace(**{field: (wrong,)})
  with pytest.raises(ValueError, match=f'state.{field}'):
    opt.update(jnp.zeros(2), state, params, jacobian=jnp.zeros(2))


def test_rank_and_variance_update_are_checked():
  with pytest.raises(ValueError, match='rank'):
    mso.bayesian_multiscale([0.9], [0.19], 1.0, rank=-1)
  with pytest.raises(TypeError, match='rank'):
    mso.bayesian_multiscale([0.9], [0.19], 1.0, rank=1.5)
  with pytest.raises(ValueError, match='variance_update'):
    mso.bayesian_multiscale([0.9], [0.19], 1.0, variance_update='exact')
  with pytest.raises(ValueError, match='rank=0'):
    mso.bayesian_multiscale([0.9], [0.19], 1.0, rank=3,
                            variance_update='mean_field')


# §3 No cryptic crashes.
def test_an_empty_pytree_is_handled_like_optax():
  opt = mso.bayesian_multiscale([0.9], [0.19], 1.0)
  state = opt.init({})
  updates, state = opt.update({}, state, {}, jacobian={})
  assert updates == {} and int(state.count) == 1


def test_int_and_bool_leaves_are_left_alone():
  opt = mso.bayesian_multiscale([0.9], [0.19], 1.0)
  params = {'w': jnp.zeros(2), 'steps': jnp.zeros((), jnp.int32),
            'mask': jnp.ones(2, bool)}
  state = opt.init(params)
  grads = {'w': jnp.ones(2), 'steps': jnp.zeros((), jnp.int32),
           'mask': jnp.zeros(2, bool)}
  jacobian = {'w': jnp.ones(2), 'steps': jnp.zeros((), jnp.int32),
              'mask': jnp.zeros(2, bool)}
  updates, state = jax.jit(opt.update)(grads, state, params,
                                       jacobian=jacobian)
  assert int(updates['steps']) == 0 and not bool(jnp.any(updates['mask']))
  assert float(jnp.abs(updates['w']).sum()) > 0


def test_zero_outputs_observe_nothing_and_predict():
  opt = mso.bayesian_multiscale([0.5], [0.75], 1.0)
  params = jnp.zeros(2)
  state = opt.init(params)
  updates, new_state = opt.update(
      jnp.zeros(2), state, params, jacobian=jnp.zeros((0, 2)),
      residual=jnp.zeros(0))
  np.testing.assert_array_equal(updates, 0.0)
  np.testing.assert_allclose(new_state.variances[0], 0.25 * 1.0 + 0.75)
  assert int(new_state.skipped_observations) == 0


def test_python_float_jacobian_leaves_are_accepted():
  opt = mso.bayesian_multiscale([0.5], [0.75], 1.0)
  params = {'a': jnp.zeros(()), 'b': jnp.zeros(())}
  state = opt.init(params)
  updates, _ = opt.update({'a': -1.0, 'b': 0.0}, state, params,
                          jacobian={'a': 1.0, 'b': 0.0})
  np.testing.assert_allclose(updates['a'], 0.5 * 1.0 / 2.0)


@pytest.mark.parametrize('compatible', [False, True])
def test_masked_with_and_without_masked_extra_args(compatible):
  params = {'w': jnp.zeros(3), 'frozen': jnp.ones(2)}
  mask = {'w': True, 'frozen': False}
  opt = optax.masked(mso.bayesian_multiscale([0.5], [0.75], 1.0), mask,
                     mask_compatible_extra_args=compatible)
  state = opt.init(params)
  jacobian = {'w': jnp.ones(3), 'frozen': jnp.ones(2)}
  grads = {'w': -jnp.ones(3), 'frozen': jnp.ones(2)}
  updates, state = opt.update(grads, state, params, jacobian=jacobian)
  # S = 1 + 3 v: the masked weights take no part.
  np.testing.assert_allclose(updates['w'], 0.5 * 1.0 / 4.0)
  np.testing.assert_array_equal(updates['frozen'], grads['frozen'])
  belief = mso.get_bayesian_subweights(params, state)
  assert isinstance(belief.means[0]['frozen'], optax.MaskedNode)
  np.testing.assert_allclose(belief.variances[0]['w'], 0.25 * 0.75 + 0.75)


def test_traced_process_variances_with_concrete_decays_give_the_default():
  # The stationary initial variance q / (1 - gamma^2) with q traced (a
  # prior scale tuned under jit) and gamma concrete.
  params = jnp.zeros(2)

  @jax.jit
  def initial(scale):
    opt = mso.bayesian_multiscale([0.5], scale * jnp.asarray([0.75]), 1.0)
    return opt.init(params).variances[0]

  np.testing.assert_allclose(initial(2.0), 2.0, rtol=1e-6)


# §3 Cases found by probing the beliefs as a demanding user would.
def test_full_rank_keeps_its_precision_in_float32():
  # Two constant weights, r = 1e-4, 10^4 float32 steps. The exact marginal
  # variances fall to about r / t = 1e-8; diag(D) - UU^T with D at the
  # prior's scale (1) cannot hold them in float32, so the full-rank belief
  # deflates D. It must learn as well as the diagonal one: the late MSE / r
  # of both is 1 + O(P/t) for a calibrated filter.
  rng = np.random.default_rng(0)
  steps, noise = 10_000, 1e-4
  inputs = rng.normal(size=(steps, 2)).astype(np.float32)
  targets = (inputs @ np.asarray([0.7, -1.3])
             + rng.normal(size=steps) * np.sqrt(noise)).astype(np.float32)
  results = {}
  for rank in (0, 2, 4):
    opt = mso.bayesian_multiscale([1.0], [0.0], noise,
                                  initial_variances=[1.0], rank=rank)
    run = helpers.online_regression(
        opt, jnp.asarray(inputs), jnp.asarray(targets), noise)
    errors = np.asarray(targets - run.predictions)[-2000:]
    variances = mso.get_bayesian_subweights(run.params, run.state).variances
    results[rank] = (np.mean(errors**2) / noise, np.asarray(variances[0]))
  for rank in (2, 4):
    mse, variance = results[rank]
    # Within 5% of the diagonal's MSE (the chi-square spread of 2000
    # residuals is 3%), and the marginal variances within a factor 3 of
    # r / t (they were 4e-5 before the deflation).
    assert mse < 1.05 * results[0][0], (rank, mse, results[0][0])
    assert np.all(variance < 3.0 * noise / steps), (rank, variance)


def test_injected_outlier_threshold_runs_under_jit():
  injected = optax.inject_hyperparams(mso.bayesian_multiscale)(
      decays=[0.9], process_variances=[0.19], noise_variance=1.0,
      outlier_threshold=3.0)
  plain = mso.bayesian_multiscale([0.9], [0.19], 1.0, outlier_threshold=3.0)
  params = jnp.zeros(2)
  extra = {'jacobian': jnp.ones(2), 'residual': jnp.asarray(50.0)}
  updates, state = jax.jit(injected.update)(
      jnp.zeros(2), injected.init(params), params, **extra)
  expected, _ = plain.update(jnp.zeros(2), plain.init(params), params,
                             **extra)
  np.testing.assert_allclose(updates, expected, rtol=1e-6)
  assert float(state.hyperparams['outlier_threshold']) == 3.0


def test_a_state_for_another_rank_is_refused_by_its_rank():
  params = jnp.zeros(2)
  state = mso.bayesian_multiscale([0.9], [0.19], 1.0, rank=3).init(params)
  opt = mso.bayesian_multiscale([0.9], [0.19], 1.0, rank=2)
  with pytest.raises(ValueError, match=r'built for rank 3.*has rank 2'):
    opt.update(jnp.zeros(2), state, params, jacobian=jnp.ones(2))
  diagonal = mso.bayesian_multiscale([0.9], [0.19], 1.0).init(params)
  with pytest.raises(ValueError, match=r'diagonal belief.*rank 2'):
    opt.update(jnp.zeros(2), diagonal, params, jacobian=jnp.ones(2))


@pytest.mark.parametrize('rank', [0, 2])
@pytest.mark.parametrize('learn_prior', [False, True, 'per_weight'])
def test_an_empty_params_leaf_is_carried(rank, learn_prior):
  # optax.adam takes a (0,)-shaped leaf; so does the Bayesian learner, and
  # the other leaves learn as they would without it.
  opt = mso.bayesian_multiscale([0.5, 0.9], [0.3, 0.1], 1.0, rank=rank,
                                learn_prior=learn_prior)
  with_empty = {'w': jnp.zeros(3), 'empty': jnp.zeros((0,))}
  extra = {'jacobian': {'w': jnp.arange(1.0, 4.0), 'empty': jnp.zeros((0,))},
           'residual': jnp.asarray(1.5)}
  updates, _ = jax.jit(opt.update)(
      with_empty, opt.init(with_empty), with_empty, **extra)
  assert updates['empty'].shape == (0,)
  alone, _ = opt.update({'w': jnp.zeros(3)}, opt.init({'w': jnp.zeros(3)}),
                        None, jacobian={'w': extra['jacobian']['w']},
                        residual=extra['residual'])
  np.testing.assert_allclose(updates['w'], alone['w'], rtol=1e-6)
  only_empty = {'empty': jnp.zeros((0,))}
  updates, _ = opt.update(only_empty, opt.init(only_empty), None,
                          jacobian=only_empty, residual=jnp.asarray(1.0))
  assert updates['empty'].shape == (0,)


def test_params_holding_tuples_are_learned():
  # eqx.nn.MLP keeps its layers in a tuple: the jacobian's leaves must be
  # matched to the params' leaves through any container.
  opt = mso.bayesian_multiscale([0.9], [0.19], 1.0)
  params = (jnp.zeros(3), {'layers': (jnp.zeros(2), jnp.zeros(()))})
  jacobian = (jnp.arange(3.0), {'layers': (jnp.ones(2), jnp.ones(()))})
  updates, _ = opt.update(params, opt.init(params), params,
                          jacobian=jacobian, residual=jnp.asarray(1.0))
  flat = mso.bayesian_multiscale([0.9], [0.19], 1.0)
  expected, _ = flat.update(
      jnp.zeros(6), flat.init(jnp.zeros(6)), None,
      jacobian=jnp.asarray([0.0, 1.0, 2.0, 1.0, 1.0, 1.0]),
      residual=jnp.asarray(1.0))
  np.testing.assert_allclose(
      jnp.concatenate([updates[0], updates[1]['layers'][0],
                       updates[1]['layers'][1][None]]), expected, rtol=1e-6)
