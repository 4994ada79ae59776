"""Smoke test of ``benchmarks/per_weight_drift.py``.

A tiny configuration (both streams, 120 steps, two-point grids) runs the
benchmark, the registry, the references, fit_prior, the tuned baselines and
the figure included, into a temporary stem: the numbers must be finite and
the JSON must have the harness's layout. Left out to keep it fast (each
Bayesian learner compiles for a second or two): the full-rank rows and the
two diagnostic rows (``bayes_per_weight_true_noise``,
``bayes_group_scales``), which the committed run exercised.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

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
