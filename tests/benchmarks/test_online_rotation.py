"""Smoke test of ``benchmarks/online_rotation.py`` and checks of its stream.

A tiny configuration (one stream of 40 steps, two-point grids) runs every
code path of the benchmark, the learner registry included, and writes the
JSON and PNG; the numbers must be finite and the JSON must have the
documented layout.
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from benchmarks import harness
from benchmarks import online_rotation


@pytest.fixture
def tiny_grids(monkeypatch):
  monkeypatch.setattr(online_rotation, 'SGD_RATES', (1e-2, 1e-1, 2))
  monkeypatch.setattr(online_rotation, 'ADAM_RATES', (1e-3, 1e-2, 2))
  monkeypatch.setattr(online_rotation, 'PROCESS_VARIANCES', (1e-6, 1e-4, 2))
  monkeypatch.setattr(online_rotation, 'PRIOR_SCALES', (0.1, 1.0, 2))
  monkeypatch.setattr(online_rotation, 'FIT_SCALES', (0.1, 1.0))
  monkeypatch.setattr(online_rotation, 'FIT_WARMUP', 20)
  monkeypatch.setattr(online_rotation, 'FIT_RANKS', (0,))


def test_tiny_run_writes_finite_results(tmp_path, tiny_grids):
  stem = tmp_path / 'rotation'
  with jax.enable_x64(True):
    document = online_rotation.main([
        '--steps', '40', '--tuning-seeds', '1', '--test-seeds', '2',
        '--window', '10', '--streams', 'one_over_f', '--out', str(stem)])
  written = json.loads(stem.with_suffix('.json').read_text())
  assert written == json.loads(json.dumps(document))
  assert stem.with_suffix('.png').stat().st_size > 0
  harness.check_document(written)
  assert written['config']['num_params'] == 64 * 32 + 32 + 32 + 1
  assert {row['stream'] for row in written['rows']} == {'one_over_f'}
  rows = {row['label']: row for row in written['rows']}
  assert {learner.label for learner in online_rotation.learners(
      full=False)} <= set(rows)
  for name, row in rows.items():
    for key in ('rmse_final_deg', 'rmse_all_deg'):
      for field in ('mean', 'sd'):
        value = row[key][field]
        assert np.isfinite(value) and value >= 0, (name, key, field)
    assert len(row['rmse_final_deg']['values']) == 2
    assert len(row['curve_rmse_deg']) == 4
    assert np.all(np.isfinite(row['curve_rmse_deg']))
    assert row['diverged_seeds'] == 0
  ekf, lofi = rows[online_rotation.FULL_EKF_NAME], rows['LoFi (rank 10)']
  assert ekf['reused_from'] == 'one_over_f/lofi_rank_10'
  assert ekf['hyperparameters'] == lofi['hyperparameters']
  assert not ekf['tuned'] and lofi['tuned']
  assert not any(row['diverged'] for row in rows.values())
  for name in online_rotation.LEARNED_ONLINE:
    assert len(rows[name]['learned_scale']) == 2
  fitted = rows['Bayesian multiscale (generic prior, fit_prior)']
  assert set(fitted['fitted_scale']) <= {0.1, 1.0}


def test_angles_are_clipped_and_drift_at_the_stated_scale():
  rng = np.random.default_rng(0)
  for kind in online_rotation.STREAMS:
    angles = online_rotation.angle_process(kind, rng, 20_000)
    assert np.abs(angles).max() <= online_rotation.ANGLE_CLIP_DEGREES
    # Stationary sd 45 degrees before clipping at 2 sd: the clipped sd is
    # a little lower; the OU's effective sample size here is ~30 (sd of
    # the estimate ~10%), hence the loose bounds.
    assert 25.0 < angles.std() < 55.0, kind


def test_streams_are_rotated_digits_with_the_angle_as_target():
  images = online_rotation.load_images()
  with jax.enable_x64(True):
    streams = online_rotation.make_streams('ou', [3], 5, images)
    rng = np.random.default_rng([3, online_rotation.STREAMS.index('ou')])
    angles = online_rotation.angle_process('ou', rng, 5)
    indices = rng.integers(len(images), size=5)
    expected = online_rotation._digits.rotate_images(
        images[indices[0]], np.deg2rad(angles[0]))
  assert streams.inputs.dtype == np.float64
  np.testing.assert_allclose(
      streams.targets[0], angles / online_rotation.ANGLE_UNIT_DEGREES)
  np.testing.assert_allclose(streams.inputs[0, 0], expected, atol=1e-12)


def test_the_generic_prior_has_variances_proportional_to_timescale():
  prior = online_rotation.prior()
  ratio = np.asarray(prior.stationary_variances) / np.asarray(
      online_rotation.PRIOR_TIMESCALES)
  np.testing.assert_allclose(ratio, ratio[0], rtol=1e-12)
  np.testing.assert_allclose(np.sum(prior.stationary_variances),
                             online_rotation.PRIOR_TOTAL_VARIANCE,
                             rtol=1e-12)


def test_importing_the_benchmarks_leaves_float64_off():
  # The scripts enter float64 inside main(); importing them must not switch
  # it on for the importer (this test session runs in float32).
  from benchmarks import online_1f  # pylint: disable=import-outside-toplevel
  from benchmarks import online_teacher  # pylint: disable=import-outside-toplevel
  del online_1f, online_teacher
  assert not jax.config.jax_enable_x64
  assert online_rotation.prior().decays[0] < 1.0
