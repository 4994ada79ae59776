"""Tests of the timescale helpers."""

from __future__ import annotations

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest

import multiscale_optax as mso


@hypothesis.settings(max_examples=50, deadline=None)
@hypothesis.given(st.lists(st.floats(1e-2, 1e7), min_size=1, max_size=6))
def test_decays_and_timescales_are_inverse(timescales):
  decays = mso.decays_from_timescales(timescales)
  assert np.all((decays > 0) & (decays < 1))
  np.testing.assert_allclose(
      mso.timescales_from_decays(decays), timescales, rtol=1e-6)


def test_infinite_timescale_is_a_permanent_subweight():
  assert mso.decays_from_timescales([np.inf])[0] == 1.0
  assert mso.timescales_from_decays([1.0])[0] == np.inf


def test_log_spaced_grid_is_geometric():
  grid = mso.log_spaced_timescales(2.0, 2.0 * 3**5, 6)
  np.testing.assert_allclose(grid[1:] / grid[:-1], 3.0)
  np.testing.assert_allclose(grid[[0, -1]], [2.0, 486.0])
  assert mso.log_spaced_timescales(5.0, 50.0, 1).tolist() == [5.0]


@pytest.mark.parametrize(
    ('call', 'error', 'pattern'),
    [
        (lambda: mso.decays_from_timescales([0.0]), ValueError,
         r'timescales\[0\]. must lie in \(0, inf\]'),
        (lambda: mso.decays_from_timescales([]), ValueError, 'at least one'),
        (lambda: mso.decays_from_timescales(3.0), ValueError, 'scalar'),
        (lambda: mso.timescales_from_decays([0.0]), ValueError,
         r'decays\[0\]. must lie in \(0.0, 1.0\]'),
        (lambda: mso.log_spaced_timescales(10.0, 1.0, 3), ValueError,
         'longest'),
        (lambda: mso.log_spaced_timescales(0.0, 1.0, 3), ValueError,
         'shortest'),
        (lambda: mso.log_spaced_timescales(1.0, np.inf, 3), ValueError,
         'longest'),
        (lambda: mso.log_spaced_timescales(1.0, 10.0, 0), ValueError, 'num'),
        (lambda: mso.log_spaced_timescales(1.0, 10.0, 2.0), TypeError, 'num'),
    ],
)
def test_bad_input(call, error, pattern):
  with pytest.raises(error, match=pattern):
    call()
