"""LoFi (``benchmarks/_lofi.py``) against the full EKF, and its invariants.

Without truncation (rank :math:`L \\ge P`) LoFi's precision is the EKF's
exactly (its predict step is exact for :math:`Q = qI`, module docstring),
so the two filters differ only by rounding: in float64 the means and
covariances agree to ~1e-8 along a stream of a small nonlinear model. With
truncation the precision stays positive definite and its diagonal is the
untruncated one's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import multiscale_optax as mso
from benchmarks import _lofi as lofi_lib

# Precision form (LoFi, Woodbury) and covariance form (EKF) of the same
# filter differ by rounding only: over 300 float64 steps of 11- to 17-param
# models (covariance condition numbers up to ~2e2) the largest difference
# measured was 6e-15; 1e-10 leaves room for other backends and orderings.
FLOAT64_TOLERANCE = 1e-10


def _init(key, sizes=(3, 2, 1)):
  keys = jax.random.split(key, len(sizes) - 1)
  return [{'w': jax.random.normal(k, (a, b)) / np.sqrt(a),
           'b': jnp.zeros(b)} for k, a, b in zip(keys, sizes[:-1], sizes[1:])]


def _apply(params, x):
  """A tanh MLP; output shape ``(outputs,)``."""
  hidden = x
  for layer in params[:-1]:
    hidden = jnp.tanh(hidden @ layer['w'] + layer['b'])
  return hidden @ params[-1]['w'] + params[-1]['b']


def _run(optimizer, params, inputs, targets, noise_variance):
  """Predict-then-learn with the N-output contract; returns the
  predictions, the final params and the final state."""

  def step(carry, observation):
    params, state = carry
    x, y = observation
    info, grads, extra = _observe(params, x, y, noise_variance)
    updates, state = optimizer.update(grads, state, params, **extra)
    return (optax.apply_updates(params, updates), state), info

  (params, state), predictions = jax.lax.scan(
      step, (params, optimizer.init(params)), (inputs, targets))
  return predictions, params, state


def _observe(params, x, y, noise_variance):
  """Predictions, grads and the N-output extra arguments (targets of
  shape ``(N,)``, so also N = 1 takes the ``(N, *param.shape)`` layout)."""
  info, grads, extra = mso.gaussian_observation(
      _apply, params, x, y, noise_variance)
  return info.predictions, grads, extra


def _stream(key, steps, outputs, dtype=jnp.float64):
  x_key, w_key, n_key = jax.random.split(key, 3)
  inputs = jax.random.normal(x_key, (steps, 3), dtype)
  teacher = jax.random.normal(w_key, (3, outputs), dtype)
  targets = jnp.sin(inputs @ teacher) + 0.1 * jax.random.normal(
      n_key, (steps, outputs), dtype)
  return inputs, targets


@pytest.mark.parametrize(
    'outputs,decay,process_variance,extra_rank',
    [(1, 1.0, 0.0, 0), (1, 0.98, 1e-3, 3), (2, 1.0, 0.0, 0),
     (3, 0.95, 1e-2, 0)])
def test_untruncated_lofi_is_the_full_ekf(outputs, decay, process_variance,
                                          extra_rank):
  with jax.enable_x64(True):
    params = jax.tree.map(lambda leaf: leaf.astype(jnp.float64),
                          _init(jax.random.key(0), (3, 2, outputs)))
    size = ravel_pytree(params)[0].size
    inputs, targets = _stream(jax.random.key(1), 300, outputs)
    options = dict(decay=decay, process_variance=process_variance)
    low_rank = lofi_lib.lofi(size + extra_rank, 0.5, 0.2, **options)
    full = lofi_lib.full_ekf(0.5, 0.2, **options)
    run = jax.jit(_run, static_argnums=(0, 4))
    lofi_predictions, lofi_params, lofi_state = run(
        low_rank, params, inputs, targets, 0.2)
    ekf_predictions, ekf_params, ekf_state = run(
        full, params, inputs, targets, 0.2)
    np.testing.assert_allclose(lofi_predictions, ekf_predictions, rtol=0,
                               atol=FLOAT64_TOLERANCE)
    np.testing.assert_allclose(
        ravel_pytree(lofi_params)[0], ravel_pytree(ekf_params)[0], rtol=0,
        atol=FLOAT64_TOLERANCE)
    precision = lofi_lib.dense_precision(lofi_state)
    covariance = ekf_state.covariance
    # Compare covariances relative to their size.
    np.testing.assert_allclose(
        jnp.linalg.inv(precision), covariance, rtol=0,
        atol=FLOAT64_TOLERANCE * float(jnp.max(jnp.abs(covariance))))
    # The learning did something: the predictions moved from the start.
    assert float(jnp.std(lofi_predictions[-50:] - lofi_predictions[:50])) > 0


def test_scalar_output_contract_matches_the_n_output_one():
  with jax.enable_x64(True):
    params = jax.tree.map(lambda leaf: leaf.astype(jnp.float64),
                          _init(jax.random.key(2)))
    inputs, targets = _stream(jax.random.key(3), 50, 1)
    optimizer = lofi_lib.lofi(3, 0.5, 0.2, process_variance=1e-3)

    def scalar_apply(params, x):
      return _apply(params, x)[0]

    def step(carry, observation):
      params, state = carry
      x, y = observation
      prediction, jacobian = jax.value_and_grad(scalar_apply)(params, x)
      grads = jax.tree.map(lambda g: -g * (y[0] - prediction) / 0.2, jacobian)
      updates, state = optimizer.update(
          grads, state, params, jacobian=jacobian, residual=y[0] - prediction)
      return (optax.apply_updates(params, updates), state), prediction

    _, scalar = jax.lax.scan(step, (params, optimizer.init(params)),
                             (inputs, targets))
    vector, _, _ = _run(optimizer, params, inputs, targets, 0.2)
    np.testing.assert_allclose(scalar, vector[:, 0], rtol=0, atol=1e-12)


def test_truncation_keeps_the_diagonal_of_the_precision():
  with jax.enable_x64(True):
    key = jax.random.key(4)
    size, rank, outputs = 12, 3, 2
    keys = jax.random.split(key, 5)
    diagonal = jnp.exp(jax.random.normal(keys[0], (size,)))
    low_rank = jax.random.normal(keys[1], (size, rank))
    rows = jax.random.normal(keys[2], (outputs, size))
    error = jax.random.normal(keys[3], (outputs,))
    noise = jnp.asarray([[0.5, 0.1], [0.1, 0.3]])
    _, new_diagonal, new_low_rank = lofi_lib.lofi_update(
        jnp.zeros(size), diagonal, low_rank, rows, error, noise)
    exact = (jnp.diag(diagonal) + low_rank @ low_rank.T
             + rows.T @ jnp.linalg.solve(noise, rows))
    truncated = jnp.diag(new_diagonal) + new_low_rank @ new_low_rank.T
    np.testing.assert_allclose(jnp.diag(truncated), jnp.diag(exact),
                               rtol=1e-12)
    assert new_low_rank.shape == (size, rank)
    # Truncation drops the smallest directions: exact - truncated is PSD.
    assert float(jnp.linalg.eigvalsh(exact - truncated + jnp.diag(
        new_diagonal - diagonal)).min()) > -1e-10


def test_precision_stays_positive_definite_over_a_long_stream():
  with jax.enable_x64(True):
    params = jax.tree.map(lambda leaf: leaf.astype(jnp.float64),
                          _init(jax.random.key(5), (3, 4, 1)))
    size = ravel_pytree(params)[0].size
    inputs, targets = _stream(jax.random.key(6), 5000, 1)
    optimizer = lofi_lib.lofi(2, 1.0, 0.05, decay=0.999,
                              process_variance=1e-4)

    def step(carry, observation):
      params, state = carry
      _, grads, extra = _observe(params, *observation, 0.05)
      updates, state = optimizer.update(grads, state, params, **extra)
      return ((optax.apply_updates(params, updates), state),
              jnp.linalg.eigvalsh(lofi_lib.dense_precision(state)).min())

    (params, state), smallest = jax.lax.scan(
        step, (params, optimizer.init(params)), (inputs, targets))
    smallest = np.asarray(smallest)
    assert state.low_rank.shape == (size, 2)
    assert np.all(np.isfinite(smallest)) and smallest.min() > 0
    assert np.all(np.asarray(state.diagonal) > 0)
    assert np.all(np.isfinite(ravel_pytree(params)[0]))
