"""Tests of memory kernels and kernel fitting."""

from __future__ import annotations

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

import multiscale_optax as mso


def _simulated_kernel(learning_rates, decays, num_steps):
  """-(weight change) after a unit update, by running eq. (1) literally."""
  learning_rates = np.asarray(learning_rates, np.float64)
  decays = np.asarray(decays, np.float64)
  subweights = -learning_rates.copy()  # after the impulse step
  kernel = []
  for _ in range(num_steps):
    kernel.append(-subweights.sum())
    subweights = decays * subweights
  return np.array(kernel)


@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(
    st.lists(st.tuples(st.floats(-2.0, 2.0), st.floats(-0.99, 1.0)),
             min_size=1, max_size=6))
def test_kernel_is_the_impulse_response(pairs):
  learning_rates = [rate for rate, _ in pairs]
  decays = [decay for _, decay in pairs]
  with jax.enable_x64(True):
    kernel = mso.memory_kernel(learning_rates, decays, 50)
  np.testing.assert_allclose(
      kernel, _simulated_kernel(learning_rates, decays, 50), atol=1e-12)


def test_kernel_through_a_multiscale_optimizer():
  with jax.enable_x64(True):
    spec = mso.from_momentum(0.1, 0.9)
    optimizer = mso.multiscale(spec.learning_rates, spec.decays)
    params = jnp.zeros(1)
    state = optimizer.init(params)
    weights = []
    for step in range(30):
      updates, state = optimizer.update(
          jnp.ones(1) * (step == 0), state)
      params = params + updates
      weights.append(float(params[0]))
    kernel = mso.memory_kernel(spec.learning_rates, spec.decays, 30)
    np.testing.assert_allclose(-np.array(weights), kernel, atol=1e-12)
    lags = np.arange(30)
    np.testing.assert_allclose(
        kernel, 0.1 * (1 - 0.9 ** (lags + 1)) / 0.1, rtol=1e-12)


def test_kernel_jit_and_gradient():
  with jax.enable_x64(True):
    rates = jnp.array([0.5, 0.2, -0.1])
    decays = jnp.array([1.0, 0.9, 0.5])
    jitted = jax.jit(mso.memory_kernel, static_argnums=2)(rates, decays, 20)
    np.testing.assert_allclose(
        jitted, mso.memory_kernel(rates, decays, 20), rtol=1e-14)
    grad = jax.grad(lambda d: mso.memory_kernel(rates, d, 20)[7])(decays)
    np.testing.assert_allclose(grad, rates * 7 * decays**6, rtol=1e-12)


def test_fit_recovers_exact_learning_rates():
  decays = mso.decays_from_timescales([2.0, 10.0, 50.0, 250.0])
  rates = np.array([0.3, -0.1, 0.05, 0.02])
  target = _simulated_kernel(rates, decays, 400)
  np.testing.assert_allclose(
      mso.fit_learning_rates(decays, target), rates, rtol=1e-6)
  np.testing.assert_allclose(
      mso.fit_learning_rates(np.append(decays, 1.0), target),
      np.append(rates, 0.0), atol=1e-7)


def test_power_law_fit_is_accurate_and_nonnegative():
  steps = 5000
  decays = mso.decays_from_timescales(
      mso.log_spaced_timescales(0.5, 20000.0, 14))
  target = mso.power_law_kernel(steps, 0.5)
  weights = 1.0 / target**2  # relative error
  rates = mso.fit_learning_rates(
      decays, target, weights=weights, nonnegative=True)
  assert np.all(rates >= 0.0)
  fitted = np.asarray(
      mso.memory_kernel(rates, decays, steps)).astype(np.float64)
  relative = np.abs(fitted - target) / target
  assert relative.max() < 0.02
  reference, _ = scipy.optimize.nnls(
      np.sqrt(weights)[:, None] * decays[None, :] ** np.arange(steps)[:, None],
      np.sqrt(weights) * target)
  reference_fit = (decays[None, :] ** np.arange(steps)[:, None]) @ reference
  np.testing.assert_allclose(
      (decays[None, :] ** np.arange(steps)[:, None]) @ rates,
      reference_fit, rtol=1e-6)


@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(st.integers(0, 2**16), st.integers(1, 6))
def test_nonnegative_fit_matches_scipy(seed, num_decays):
  rng = np.random.default_rng(seed)
  decays = np.sort(rng.uniform(0.0, 0.99, size=num_decays))
  target = rng.normal(size=40)
  rates = mso.fit_learning_rates(decays, target, nonnegative=True)
  basis = decays[None, :] ** np.arange(40)[:, None]
  _, reference_residual = scipy.optimize.nnls(basis, target)
  assert np.all(rates >= 0.0)
  residual = np.linalg.norm(basis @ rates - target)
  assert residual <= reference_residual * (1 + 1e-8) + 1e-10


def test_bad_input():
  with pytest.raises(ValueError, match='decays'):
    mso.memory_kernel([1.0], [1.5], 3)
  with pytest.raises(ValueError, match='same length'):
    mso.memory_kernel([1.0, 2.0], [0.5], 3)
  with pytest.raises(ValueError, match='num_steps'):
    mso.memory_kernel([1.0], [0.5], 0)
  with pytest.raises(TypeError, match='num_steps'):
    mso.memory_kernel([1.0], [0.5], 2.0)
  with pytest.raises(ValueError, match='weights'):
    mso.fit_learning_rates([0.5], [1.0, 0.5], weights=[1.0, -1.0])
  with pytest.raises(ValueError, match='same length'):
    mso.fit_learning_rates([0.5], [1.0, 0.5], weights=[1.0])
  with pytest.raises(ValueError, match='exponent'):
    mso.power_law_kernel(10, -1.0)


def test_nonnegative_fit_reports_non_convergence(monkeypatch):
  from multiscale_optax._src import memory_kernel as module
  decays = mso.decays_from_timescales(mso.log_spaced_timescales(1, 1e4, 12))
  target = mso.power_law_kernel(400, 0.5)
  weights = 1.0 / target**2
  rates = mso.fit_learning_rates(
      decays, target, weights=weights, nonnegative=True)
  assert np.all(rates >= 0) and np.sum(rates > 0) > 1
  # With the cap at 10 iterations (0 per column) this 12-column problem
  # cannot finish; the solver must say so instead of returning the
  # point where it stopped.
  monkeypatch.setattr(module, '_NNLS_ITERATIONS_PER_COLUMN', 0)
  with pytest.raises(RuntimeError, match='did not converge'):
    mso.fit_learning_rates(decays, target, weights=weights, nonnegative=True)
