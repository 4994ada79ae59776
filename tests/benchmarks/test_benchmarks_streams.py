"""The benchmark streams' own logic: digits rotation, its 1/f angle process,
and the river progressive-validation protocol of ``trump_approval``."""

from __future__ import annotations

import importlib.util
import itertools

import hypothesis
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import strategies as st

from benchmarks import _digits
from benchmarks import _digits_learners
from benchmarks import _digits_runs
from benchmarks import _tabular
from benchmarks import trump_approval

requires_river = pytest.mark.skipif(
    importlib.util.find_spec('river') is None,
    reason='river (the test extra) is not installed')


def _images(count=6, seed=0, dtype=np.float64):
  return np.random.default_rng(seed).uniform(0.0, 1.0, (count, 64)).astype(
      dtype)


def _reference_rotation(images, angle):
  """Bilinear rotation by map_coordinates (gathers), zero outside."""
  centre = 3.5
  rows, cols = np.meshgrid(np.arange(8) - centre, np.arange(8) - centre,
                           indexing='ij')
  source = [np.sin(angle) * cols + np.cos(angle) * rows + centre,
            np.cos(angle) * cols - np.sin(angle) * rows + centre]
  return np.stack([
      np.asarray(jax.scipy.ndimage.map_coordinates(
          jnp.asarray(image.reshape(8, 8)), [jnp.asarray(s) for s in source],
          order=1, mode='constant', cval=0.0)).reshape(64)
      for image in images])


def test_rotation_by_zero_is_exactly_the_identity():
  images = _images(dtype=np.float32)
  rotated = _digits.rotate_images(jnp.asarray(images), 0.0)
  np.testing.assert_array_equal(np.asarray(rotated), images)


def test_rotation_by_a_right_angle_is_rot90():
  with jax.enable_x64(True):
    images = _images()
    rotated = np.asarray(_digits.rotate_images(
        jnp.asarray(images), np.pi / 2))
  expected = np.rot90(images.reshape(-1, 8, 8), axes=(1, 2)).reshape(-1, 64)
  # cos(pi/2) is 6e-17, not 0, in float64: source coordinates are off by at
  # most 8 * 6e-17 and bilinear weights move by as much; pixels are <= 1.
  np.testing.assert_allclose(rotated, expected, rtol=0, atol=1e-14)


@hypothesis.settings(deadline=None, max_examples=20)
@hypothesis.given(angle=st.floats(-np.pi, np.pi))
def test_rotation_matches_bilinear_map_coordinates(angle):
  with jax.enable_x64(True):
    images = _images()
    rotated = np.asarray(_digits.rotate_images(
        jnp.asarray(images), angle))
    expected = _reference_rotation(images, angle)
  # Both are sums of at most 4 products of pixels (<= 1) and weights
  # computed from coordinates of magnitude <= 8 in float64: each differs
  # from exact bilinear interpolation by a few ulps of 8, ~1e-14. A corner
  # exactly on the border may be counted inside by one and outside by the
  # other only with weight 0.
  np.testing.assert_allclose(rotated, expected, rtol=0, atol=1e-12)


def test_rotation_angles_have_the_1_over_f_prior_statistics():
  timescales = (1.0, 10.0, 100.0)
  sd_degrees = 30.0
  draws = 4000
  angles = np.stack([
      _digits.rotation_angles(np.random.default_rng(seed), 30,
                                    timescales, sd_degrees)
      for seed in range(draws)])
  variance = np.deg2rad(sd_degrees) ** 2
  decays = np.exp(-1.0 / np.asarray(timescales))
  # Stationary from the start: every step has the total variance, and lag-l
  # covariance sum_j (variance / m) decay_j^l.
  for lag in (0, 1, 5, 20):
    covariance = np.mean(angles[:, 0] * angles[:, lag])
    expected = variance / len(timescales) * np.sum(decays ** lag)
    # Sample covariance of a Gaussian pair: sd <= variance * sqrt(2 / n);
    # 5 sd.
    assert abs(covariance - expected) < 5 * variance * np.sqrt(2 / draws)


def test_rotation_stream_is_the_only_rotated_one():
  for kind in _digits.STREAMS:
    *_, angles = _digits.make_stream(kind, 0, steps=1000, batch=16,
                                     block=100, num_train=100)
    assert angles.shape == (1000,)
    assert np.any(angles != 0) == (kind == 'rotation')


def test_existing_streams_keep_their_draws():
  # A stream's random draws are seeded by its index in STREAMS: the streams
  # that existed before the rotation stream keep their positions.
  assert _digits.STREAMS[:3] == ('recurring', 'one_over_f',
                                       'stationary')


# ---------------------------------------------------------------------------
# river's TrumpApproval protocol, on a slice of the series.

SLICE = 80


def _river_pipeline_mae(model):
  from river import datasets
  from river import evaluate
  from river import metrics
  from river import preprocessing

  stream = itertools.islice(datasets.TrumpApproval(), SLICE)
  return evaluate.progressive_val_score(
      stream, preprocessing.StandardScaler() | model, metrics.MAE()).get()


@requires_river
def test_precomputed_views_reproduce_river_pipeline():
  from river import linear_model

  stream = trump_approval.load_stream(limit=SLICE)
  assert stream.targets.shape == (SLICE,)
  expected = _river_pipeline_mae(linear_model.LinearRegression())
  # The same float64 operations in the same order: equal up to summation
  # order of the MAE (1e-12 relative).
  np.testing.assert_allclose(
      trump_approval.linear_regression_replay(stream), expected, rtol=1e-12)


@requires_river
def test_jax_harness_with_sgd_reproduces_river_linear_regression():
  from river import linear_model

  stream = trump_approval.load_stream(limit=SLICE)
  expected = _river_pipeline_mae(linear_model.LinearRegression())
  (learner,) = [entry for entry in trump_approval.learners('linear', 3)
                if entry.id == 'linear/sgd_river_linearregression_settings']
  assert learner.points() == [
      {'learning_rate': trump_approval.RIVER_LINEAR_REGRESSION_RATE}]
  with jax.enable_x64(True):
    runner = trump_approval.make_runner(learner, stream, hidden=4)
    predictions, _ = runner(
        learner.points(), jax.vmap(jax.random.key)(jnp.zeros(1, jnp.int32)))
    predictions = np.asarray(predictions)
  mae = trump_approval.mae(predictions, stream.targets)[0, 0]
  # river's SGD step on (y - p)^2 with rate 0.01 is optax.sgd(0.02) on
  # (y - p)^2 / 2: same arithmetic up to float64 rounding of a few
  # operations per step over 80 steps on values ~40 (relative 1e-12).
  np.testing.assert_allclose(mae, expected, rtol=1e-10)


@requires_river
def test_fit_prior_rows_run_on_a_slice():
  # The refit protocol on a short slice: finite, and the refit predictions
  # are the given prior's before the warm-up ends.
  stream = trump_approval.load_stream(limit=SLICE)
  config = trump_approval.Config(tune_steps=20, grid_points=3,
                                 mlp_seeds=(0,), hidden=4, warmup_steps=30)
  fits, specs = trump_approval.fit_learners('linear', 3, 30)
  (learner,) = [entry for entry in fits if entry.id == (
      'linear/bayesian_multiscale_default_prior_fit_prior_scale_and_slope_'
      'diagonal')]
  prior, rank, _ = specs[learner.id]
  evaluate = trump_approval.fit_protocol(
      stream, config, {learner.id: (prior, rank, (-0.5, 0.5))})
  with jax.enable_x64(True):
    row = evaluate(learner, {}, (0,))
  assert np.isfinite(row['mae']['mean'])
  assert np.isfinite(row['mae_fitted_whole']['mean'])
  assert row['fitted_slope'][0] in (-0.5, 0.5)


def test_mae_is_infinite_for_a_diverged_run():
  predictions = np.array([[1.0, np.nan], [1.0, 2.0]])
  targets = np.array([1.0, 1.0])
  np.testing.assert_array_equal(
      trump_approval.mae(predictions, targets), [np.inf, 0.5])


def test_target_scaling_is_the_running_mean_and_sd_of_past_targets():
  targets = np.random.default_rng(0).normal(40.0, 3.0, 50)
  targets[1] = targets[0]  # a zero variance after two examples: sd 1
  (mean0, sd0), (mean1, sd1) = _tabular.target_scaling(targets)
  for index in range(targets.size):
    seen = targets[:index + 1]
    expected_sd = np.std(seen) if np.std(seen) > 0 else 1.0
    # Welford's recursion against numpy's two-pass formulas on values ~40:
    # rounding only (relative 1e-12).
    np.testing.assert_allclose(mean1[index], np.mean(seen), rtol=1e-12)
    np.testing.assert_allclose(sd1[index], expected_sd, rtol=1e-10)
  assert (mean0[0], sd0[0]) == (0.0, 1.0)
  np.testing.assert_array_equal(mean0[1:], mean1[:-1])
  np.testing.assert_array_equal(sd0[1:], sd1[:-1])
  assert sd1[1] == 1.0


def test_default_prior_is_the_one_the_docstring_states():
  prior = _tabular.default_prior()
  decays, process, initial = (np.asarray(values) for values in (
      prior.decays, prior.process_variances, prior.initial_variances))
  timescales = np.asarray(_tabular.DEFAULT_TIMESCALES)
  np.testing.assert_allclose(timescales, 10.0 ** np.arange(0.0, 4.5, 0.5),
                             rtol=1e-12)
  assert decays[0] == 1.0
  np.testing.assert_allclose(decays[1:], np.exp(-1.0 / timescales),
                             rtol=1e-12)
  # q_i proportional to 1 / tau_i; the random walk has the slowest one's.
  products = process[1:] * timescales
  np.testing.assert_allclose(products, products[0], rtol=1e-12)
  np.testing.assert_allclose(process[0], process[-1], rtol=1e-12)
  np.testing.assert_allclose(
      initial[1:], process[1:] / (1.0 - decays[1:] ** 2), rtol=1e-12)
  np.testing.assert_allclose(initial[0], initial[-1], rtol=1e-12)
  np.testing.assert_allclose(np.sum(initial), 1.0, rtol=1e-12)


def test_digits_prior_is_stationary_with_equal_variances_summing_to_drift():
  prior = _digits_learners.bayesian_prior(16, 0.07)
  timescales = np.geomspace(*_digits_learners.BAYES_TIMESCALES) * 16
  np.testing.assert_allclose(prior.decays[1:], np.exp(-1.0 / timescales),
                             rtol=1e-12)
  assert prior.decays[0] == 1.0 and prior.process_variances[0] == 0.0
  assert prior.initial_variances[0] == _digits_learners.BAYES_PERMANENT_VARIANCE
  np.testing.assert_allclose(prior.initial_variances[1:], 0.01, rtol=1e-6)
  # float32 q = v (1 - gamma^2): stationary to float32 rounding of 1 - gamma^2.
  np.testing.assert_allclose(prior.stationary_variances[1:], 0.01,
                             rtol=1e-3)


def test_digits_runs_tune_per_stream_and_share_one_choice():
  config = _digits_runs.Config(
      steps=100, batch=4, block=100, num_learning_rates=2,
      tuning_seeds=(100,), evaluation_seeds=(0,), models=('mlp',),
      ablations=False, bayesian_models=('mlp',), bayesian_tuning_seeds=(100,),
      bayesian_evaluation_seeds=(0,), bayesian_num_grid=2)
  rows, _ = _digits_runs.benchmark(
      config, log=lambda *a, **k: None, names=('sgd', 'bayesian_multiscale'))
  assert [row['id'] for row in rows] == [
      f'mlp/{kind}/{name}' for kind in _digits.STREAMS
      for name in ('sgd', 'bayesian_multiscale')]
  shared = [row for row in rows if row['learner'] == 'bayesian_multiscale']
  first = f'mlp/{_digits.STREAMS[0]}/bayesian_multiscale'
  assert shared[0]['tuned'] and 'reused_from' not in shared[0]
  assert all(row['reused_from'] == first for row in shared[1:])
  assert len({row['learning_rate'] for row in shared}) == 1
  # The shared point is the best mean tuning accuracy over the streams.
  means = np.mean([row['tuning_online_accuracy_per_rate'] for row in shared],
                  axis=0)
  assert shared[0]['learning_rate'] == shared[0]['learning_rate_grid'][
      int(np.argmax(means))]
  for row in rows:
    if row['learner'] == 'sgd':
      accuracy = row['tuning_online_accuracy_per_rate']
      assert row['learning_rate'] == row['learning_rate_grid'][
          int(np.argmax(accuracy))]
    assert row['hyperparameters'][
        'learning_rate' if row['learner'] == 'sgd' else 'drift_variance'
    ] == row['learning_rate']
    assert 0.0 <= row['online_accuracy']['mean'] <= 1.0
    assert len(row['curve_mean_per_10_steps']) == 10
