"""Smoke test of ``benchmarks/per_weight_drift.py``.

A tiny configuration (both streams, 120 steps, two-point grids) runs the
benchmark, the registry, the references, fit_prior, the tuned baselines and
the figure included, into a temporary stem: the numbers must be finite and
the JSON must have the harness's layout. Left out to keep it fast (each
Bayesian learner compiles for a second or two): the full-rank rows and the
two diagnostic rows (``bayes_per_weight_true_noise``,
``bayes_group_scales``), which the committed run exercised. Also the one
online-regression loop the benchmark and ``tests/helpers.py`` share.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from benchmarks import _online_regression
from benchmarks import harness
from benchmarks import per_weight_drift


@pytest.fixture
def tiny_grids(monkeypatch):
  monkeypatch.setattr(per_weight_drift, 'LMS_RATES', (1e-3, 1e-2, 2))
  monkeypatch.setattr(per_weight_drift, 'META_RATES', (1e-4, 1e-3, 2))


def test_tiny_run_writes_finite_results(tmp_path, tiny_grids):
  stem = tmp_path / 'per_weight_drift'
  document = per_weight_drift.main([
      '--drift-steps', '120', '--idbd-steps', '120', '--warmup', '40',
      '--tuning-seeds', '2', '--test-seeds', '2', '--no-full-rank',
      '--skip', 'bayes_per_weight_true_noise,bayes_group_scales',
      '--out', str(stem)])
  written = json.loads(stem.with_suffix('.json').read_text())
  assert written == json.loads(json.dumps(document))
  assert tuple(written) == harness.TOP_LEVEL_KEYS
  harness.check_document(written)
  assert stem.with_suffix('.png').stat().st_size > 0
  ids = {row['id'] for row in written['rows']}
  assert {'five_of_twenty/informed_kf', 'five_of_twenty/bayes_per_weight',
          'five_of_twenty/bayes_fit_prior', 'idbd/oracle_kf',
          'idbd/idbd'} <= ids
  for row in written['rows']:
    for key in ('mse_final', 'excess_ratio', 'signal_excess_final',
                'mse_all', 'mse_after_warmup'):
      assert len(row[key]['values']) == 2, (row['id'], key)
      assert np.all(np.isfinite(row[key]['values'])), (row['id'], key)
    assert np.all(np.isfinite(row['curve'])), row['id']
  assert written['config']['goal']['met'] in (True, False)


def test_online_regression_predicts_before_learning():
  # The one online-regression loop (benchmarks/_online_regression.py), with
  # LMS, against the loop written out in NumPy: the prediction of example t
  # uses the weights learnt from examples before t only.
  rng = np.random.default_rng(0)
  inputs, targets = rng.normal(size=(30, 3)), rng.normal(size=30)
  rate, noise = 0.05, 2.0
  weights, expected = np.zeros(3), []
  for x, y in zip(inputs, targets):
    expected.append(x @ weights)
    weights = weights + rate * x * (y - x @ weights) / noise
  with jax.enable_x64(True):
    run = _online_regression.online_regression(
        optax.sgd(rate), jnp.asarray(inputs), jnp.asarray(targets), noise,
        extra_args=())
  assert expected[0] == 0.0
  np.testing.assert_allclose(run.predictions, expected, rtol=1e-12)
  np.testing.assert_allclose(run.params, weights, rtol=1e-12)
