"""The beliefs of the Bayesian multiscale learner: diagonal rules and rank L.

The low-rank belief :math:`\\mathrm{diag}(D) - UU^\\top` over all subweights
must equal the joint (full-covariance) extended Kalman filter once its rank
reaches the number of subweights, stay positive definite by construction,
and work with every option of the diagonal learner.
"""

from __future__ import annotations

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import multiscale_optax as mso

# Full-rank equivalence: both sides do O(40) steps of the same Kalman
# update in float64 in different orders; each step has relative rounding of
# a few ulps amplified by the condition of S (< 1e4 here), so 1e-8 is a
# bound with a margin of ~1e3.
FULL_RANK_TOLERANCE = 1e-8


def joint_ekf(decays, process, noise, initial, jacobians, targets):
  """Literal NumPy joint Kalman filter of y = J w, w = sum_i omega_i.

  ``jacobians``: (steps, N, P). Returns predictions (steps, N), the final
  means (k, P) and the final covariance (kP, kP).
  """
  k, size = len(decays), jacobians.shape[-1]
  decay_vector = np.repeat(np.asarray(decays, float), size)
  noise_vector = np.repeat(np.asarray(process, float), size)
  means = np.zeros(k * size)
  covariance = np.diag(np.repeat(np.asarray(initial, float), size))
  predictions = []
  for jac, y in zip(jacobians, targets):
    observation = np.tile(jac, (1, k))
    prediction = observation @ means
    predictions.append(prediction)
    innovation = observation @ covariance @ observation.T + noise * np.eye(
        jac.shape[0])
    gain = covariance @ observation.T @ np.linalg.inv(innovation)
    means = means + gain @ (y - prediction)
    covariance = covariance - gain @ innovation @ gain.T
    means = decay_vector * means
    covariance = (decay_vector[:, None] * covariance * decay_vector[None, :]
                  + np.diag(noise_vector))
  return np.asarray(predictions), means.reshape(k, size), covariance


def run_linear(opt, jacobians, targets, noise, residual=True):
  """Online learning of y = J w (N outputs) with the learner ``opt``."""
  params = jnp.zeros(jacobians.shape[-1], jacobians.dtype)

  def step(carry, observation):
    params, state = carry
    jac, y = observation
    prediction = jac @ params
    error = y - prediction
    grads = -jac.T @ error / noise
    extra = {'residual': error} if residual else {}
    if jac.shape[0] == 1 and not residual:
      jac = jac[0]
    updates, state = opt.update(grads, state, params, jacobian=jac, **extra)
    return (optax.apply_updates(params, updates), state), prediction

  (params, state), predictions = jax.jit(
      lambda carry, data: jax.lax.scan(step, carry, data))(
          (params, opt.init(params)), (jacobians, targets))
  return predictions, params, state


def _stream(seed, steps, outputs, size, scale=1.0):
  rng = np.random.default_rng(seed)
  jacobians = rng.normal(size=(steps, outputs, size)) * scale
  targets = rng.normal(size=(steps, outputs)) * 2.0
  return jacobians, targets


def _covariance(state, k, size):
  """The state's covariance diag(D) - U U^T over the kP subweights."""
  diagonal = np.concatenate([np.asarray(v, np.float64)
                             for v in state.variances])
  if not state.factors:
    return np.diag(diagonal)
  factor = np.concatenate(
      [np.asarray(f, np.float64) for f in state.factors], axis=0)
  return np.diag(diagonal) - factor @ factor.T


@pytest.mark.parametrize('outputs, residual', [(1, False), (1, True),
                                               (3, True)])
@pytest.mark.parametrize('extra_rank', [0, 4])
def test_full_rank_equals_the_joint_ekf(outputs, residual, extra_rank):
  decays, process, noise = [0.5, 0.95, -0.3], [0.3, 0.05, 0.1], 0.4
  initial = [q / (1 - g * g) for g, q in zip(decays, process)]
  size = 4
  with jax.enable_x64(True):
    jacobians, targets = _stream(0, 40, outputs, size)
    expected, means, covariance = joint_ekf(
        decays, process, noise, initial, jacobians, targets)
    opt = mso.bayesian_multiscale(decays, process, noise,
                                  rank=len(decays) * size + extra_rank)
    predictions, _, state = run_linear(
        opt, jnp.asarray(jacobians), jnp.asarray(targets), noise, residual)
    np.testing.assert_allclose(predictions, expected, rtol=0,
                               atol=FULL_RANK_TOLERANCE)
    belief = mso.get_bayesian_subweights(jnp.zeros(size), state)
    np.testing.assert_allclose(np.stack(belief.means), means, rtol=0,
                               atol=FULL_RANK_TOLERANCE)
    np.testing.assert_allclose(_covariance(state, 3, size), covariance,
                               rtol=0, atol=FULL_RANK_TOLERANCE)
    np.testing.assert_allclose(
        np.stack(belief.variances), np.diag(covariance).reshape(3, size),
        rtol=0, atol=FULL_RANK_TOLERANCE)


@hypothesis.settings(max_examples=10, deadline=None)
@hypothesis.given(
    decays=st.lists(st.floats(-0.9, 0.99), min_size=1, max_size=3),
    noise=st.floats(0.05, 5.0),
    seed=st.integers(0, 2 ** 16))
def test_property_full_rank_equals_the_joint_ekf(decays, noise, seed):
  process = [0.1 + 0.2 * i for i in range(len(decays))]
  initial = [q / (1 - g * g) for g, q in zip(decays, process)]
  size = 3
  with jax.enable_x64(True):
    jacobians, targets = _stream(seed, 25, 2, size)
    expected, _, _ = joint_ekf(decays, process, noise, initial, jacobians,
                               targets)
    opt = mso.bayesian_multiscale(decays, process, noise,
                                  rank=len(decays) * size)
    predictions, _, _ = run_linear(
        opt, jnp.asarray(jacobians), jnp.asarray(targets), noise)
    # S's condition grows as 1/noise; the bound scales with it.
    np.testing.assert_allclose(predictions, expected, rtol=0,
                               atol=FULL_RANK_TOLERANCE / min(noise, 1.0))


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.float64])
@pytest.mark.parametrize('rank', [1, 2, 3, 4, 5])
def test_low_rank_stays_positive_definite_with_a_random_walk(rank, dtype):
  # TrumpApproval's hard case: a random-walk component of variance 100,
  # inputs of very different scales, a drifting target.
  steps, size = 1500, 6
  rng = np.random.default_rng(rank)
  inputs = rng.normal(size=(steps, 1, size)) * np.asarray(
      [1.0, 10.0, 0.1, 3.0, 30.0, 1.0])
  weights = np.cumsum(rng.normal(size=(steps, size)) * 0.3, axis=0)
  targets = np.sum(inputs[:, 0] * weights, axis=1, keepdims=True) + (
      rng.normal(size=(steps, 1)))
  with jax.enable_x64(dtype == jnp.float64):
    opt = mso.bayesian_multiscale(
        [1.0, 0.99, 0.9], [1.0, 0.1, 0.1], 1.0,
        initial_variances=[100.0, 1.0, 1.0], rank=rank)
    predictions, _, state = run_linear(
        opt, jnp.asarray(inputs, dtype), jnp.asarray(targets, dtype), 1.0)
    assert np.all(np.isfinite(predictions))
    assert int(state.skipped_observations) == 0
    covariance = _covariance(state, 3, size)
    assert np.linalg.eigvalsh(covariance)[0] > 0.0
    # By construction: the largest eigenvalue of U^T D^-1 U is below 1.
    factor = np.concatenate(
        [np.asarray(f, np.float64) for f in state.factors], axis=0)
    diagonal = np.concatenate([np.asarray(v, np.float64)
                               for v in state.variances])
    assert np.linalg.eigvalsh(factor.T @ (factor / diagonal[:, None]))[
        -1] < 1.0


def test_low_rank_with_learned_prior_and_n_outputs_matches_full_rank():
  # Rank >= kP with learn_prior: the same learned scale and predictions as
  # the joint filter would give, i.e. rank kP and kP + 2 agree.
  with jax.enable_x64(True):
    jacobians, targets = _stream(3, 60, 2, 3)
    runs = []
    for rank in (6, 8):
      opt = mso.bayesian_multiscale(
          [0.9, 0.5], [0.19, 0.75], 0.5, rank=rank, learn_prior=True,
          learn_noise_variance=True, prior_learning_rate=0.05)
      predictions, _, state = run_linear(
          opt, jnp.asarray(jacobians), jnp.asarray(targets), 0.5)
      runs.append((predictions, state.log_process_scale,
                   state.log_noise_scale))
    for first, second in zip(*runs):
      np.testing.assert_allclose(first, second, rtol=0,
                                 atol=FULL_RANK_TOLERANCE)
    assert abs(float(runs[0][1])) > 1e-3  # the scale was learned


def test_get_bayesian_subweights_reports_marginal_variances():
  with jax.enable_x64(True):
    jacobians, targets = _stream(5, 10, 1, 3)
    opt = mso.bayesian_multiscale([0.9, 0.5], [0.19, 0.75], 0.5, rank=2)
    _, params, state = run_linear(
        opt, jnp.asarray(jacobians), jnp.asarray(targets), 0.5)
    belief = mso.get_bayesian_subweights(params, state)
    covariance = _covariance(state, 2, 3)
    np.testing.assert_allclose(
        np.stack(belief.variances), np.diag(covariance).reshape(2, 3),
        rtol=1e-12)
    np.testing.assert_allclose(
        belief.learning_rates[0],
        0.9 * belief.variances[0] / state.innovation_variance, rtol=1e-12)


def _diagonal_reference(rule, decays, process, noise, jacobians, targets):
  """Literal NumPy form of the three diagonal rules (scalar outputs)."""
  k, size = len(decays), jacobians.shape[-1]
  means = np.zeros((k, size))
  variances = np.tile(
      np.asarray([q / (1 - g * g) for g, q in zip(decays, process)])[:, None],
      (1, size))
  predictions = []
  for jac, y in zip(jacobians[:, 0], targets[:, 0]):
    prediction = jac @ means.sum(axis=0)
    predictions.append(prediction)
    totals = variances.sum(axis=0)
    innovation = noise + np.sum(jac * jac * totals)
    means = means + variances * jac * (y - prediction) / innovation
    if rule == 'moment_matching':
      variances = variances - (variances * jac) ** 2 / innovation
    elif rule == 'mean_field':
      variances = 1.0 / (1.0 / variances + jac * jac / noise)
    elif rule == 'weight_marginal':
      variances = variances * (1.0 - totals * jac * jac / innovation)
    else:
      others = innovation - jac * jac * totals
      variances = 1.0 / (1.0 / variances + jac * jac / others)
    means = np.asarray(decays)[:, None] * means
    variances = (np.asarray(decays)[:, None] ** 2 * variances
                 + np.asarray(process)[:, None])
  return np.asarray(predictions)


@pytest.mark.parametrize('rule', ['moment_matching', 'mean_field',
                                  'others_as_noise', 'weight_marginal'])
def test_diagonal_rules_follow_their_formulas(rule):
  decays, process, noise = [0.95, 0.6], [0.0975, 0.64], 0.3
  with jax.enable_x64(True):
    jacobians, targets = _stream(11, 50, 1, 4)
    expected = _diagonal_reference(rule, decays, process, noise, jacobians,
                                   targets)
    opt = mso.bayesian_multiscale(decays, process, noise,
                                  variance_update=rule)
    predictions, _, _ = run_linear(
        opt, jnp.asarray(jacobians), jnp.asarray(targets), noise)
    np.testing.assert_allclose(predictions[:, 0], expected, rtol=0,
                               atol=1e-10)


def test_rank_zero_is_the_default_diagonal_learner():
  with jax.enable_x64(True):
    jacobians, targets = _stream(2, 30, 2, 3)
    runs = [
        run_linear(opt, jnp.asarray(jacobians), jnp.asarray(targets), 0.5)[0]
        for opt in (mso.bayesian_multiscale([0.9], [0.19], 0.5),
                    mso.bayesian_multiscale([0.9], [0.19], 0.5, rank=0))]
    np.testing.assert_array_equal(runs[0], runs[1])


def test_low_rank_state_memory_and_shapes():
  params = {'w': jnp.zeros((5, 3)), 'b': jnp.zeros(3)}
  opt = mso.bayesian_multiscale([0.9, 0.5], [0.19, 0.75], 1.0, rank=4)
  state = opt.init(params)
  assert state.factors[1]['w'].shape == (5, 3, 4)
  stored = sum(leaf.size for tree in (*state.means, *state.variances,
                                      *state.factors)
               for leaf in jax.tree.leaves(tree))
  # k (L + 2) P with k = 2, L = 4, P = 18.
  assert stored == 2 * (4 + 2) * 18


def test_predict_propagates_the_covariance_through_the_ar1_prior():
  # Sigma' = G Sigma G + diag(q) with G = diag(gamma_i) for
  # Sigma = diag(D) - U U^T, written out densely.
  with jax.enable_x64(True):
    from multiscale_optax._src import gaussian_belief
    rng = np.random.default_rng(0)
    decays, process = [0.9, -0.4, 0.0], [0.1, 0.2, 0.3]
    shapes = [(2, 3), (4,)]
    diagonals = [[jnp.asarray(rng.uniform(1.0, 2.0, shape)) for shape in shapes]
                 for _ in decays]
    factors = [[jnp.asarray(0.3 * rng.normal(size=(*shape, 2)))
                for shape in shapes] for _ in decays]
    belief = gaussian_belief.Belief(diagonals, factors)
    predicted = gaussian_belief.predict(
        belief, [1 - d for d in decays], [1 - d * d for d in decays],
        [[q] * len(shapes) for q in process])

    def dense(diagonals, factors):
      d = np.concatenate([np.ravel(leaf) for leaves in diagonals
                          for leaf in leaves])
      u = np.concatenate([np.asarray(leaf).reshape(-1, 2)
                          for leaves in factors for leaf in leaves], axis=0)
      return np.diag(d) - u @ u.T

    size = sum(int(np.prod(shape)) for shape in shapes)
    gain = np.diag(np.repeat(decays, size))
    expected = gain @ dense(diagonals, factors) @ gain + np.diag(
        np.repeat(process, size))
    np.testing.assert_allclose(
        dense(predicted.diagonals, predicted.factors), expected,
        rtol=1e-12, atol=1e-12)
    assert predicted.summed_first == belief.summed_first
