"""The written-out small-matrix algebra against jnp.linalg / jax.scipy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from multiscale_optax._src import small_linalg


def _spd(seed, count, dtype):
  rng = np.random.default_rng(seed)
  factor = rng.normal(size=(count, count))
  return jnp.asarray(factor @ factor.T + 0.1 * np.eye(count), dtype)


@settings(deadline=None, max_examples=30)
@given(seed=st.integers(0, 2**31 - 1),
       count=st.integers(1, small_linalg.UNROLLED + 2))
def test_agrees_with_lapack_in_float64(seed, count):
  # Both are backward-stable; for these matrices (condition number below
  # about 1e4) the factors and solves agree to ~1e4 * eps relative.
  with jax.enable_x64(True):
    matrix = _spd(seed, count, jnp.float64)
    rhs = jnp.asarray(np.random.default_rng(seed + 1).normal(
        size=(count, 3)), jnp.float64)
    lower = small_linalg.cholesky(matrix)
    np.testing.assert_allclose(lower, jnp.linalg.cholesky(matrix),
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(
        small_linalg.cho_solve(lower, rhs),
        jax.scipy.linalg.cho_solve((jnp.linalg.cholesky(matrix), True), rhs),
        rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(
        small_linalg.solve_lower(lower, rhs[:, 0]),
        jax.scipy.linalg.solve_triangular(lower, rhs[:, 0], lower=True),
        rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(
        small_linalg.lower_inverse(lower) @ lower, jnp.eye(count),
        atol=1e-10)
    assert np.all(np.triu(np.asarray(lower), 1) == 0)


@pytest.mark.parametrize('count', [1, 2, 3, 4])
def test_not_positive_definite_gives_non_finite_factor(count):
  matrix = -jnp.eye(count, dtype=jnp.float32)
  assert not np.all(np.isfinite(small_linalg.cholesky(matrix)))


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_keeps_dtype_and_jits(dtype):
  matrix = _spd(0, 3, dtype)
  lower = jax.jit(small_linalg.cholesky)(matrix)
  assert lower.dtype == dtype
  assert small_linalg.cho_solve(lower, matrix[:, 0]).dtype == dtype
