"""benchmarks/river_datasets.py: river's streams, scaling and protocol."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import _tabular
from benchmarks import harness
from benchmarks import river_datasets as rd

pytest.importorskip('river')

# (examples, features, classes) of every bundled stream.
SIZES = {
    'trumpapproval': (1001, 6, 0),
    'chickweights': (578, 3, 0),
    'waterflow': (1268, 4, 0),
    'airlinepassengers': (144, 4, 0),
    'phishing': (1250, 9, 2),
    'bananas': (5300, 2, 2),
    'shuttle': (49097, 9, 2),
    'imagesegments': (2310, 18, 7),
}


@pytest.mark.parametrize('name', list(SIZES))
def test_stream_sizes(name):
  examples, features, classes = SIZES[name]
  assert len(rd.river_examples(name)) == examples
  stream = rd.load_stream(name, limit=200)
  assert stream.predict_inputs.shape == (min(200, examples), features)
  assert stream.learn_inputs.shape == stream.predict_inputs.shape
  assert len(stream.classes) == classes
  assert np.all(np.isfinite(stream.predict_inputs))


def _running_scaled(rows: np.ndarray, include_current: bool) -> np.ndarray:
  """Features scaled with the running mean and population sd (0 where the
  column has been constant), from the examples before each one or up to
  it."""
  out = np.zeros_like(rows)
  for t in range(len(rows)):
    seen = rows[:t + 1] if include_current else rows[:t]
    if len(seen) == 0:
      continue
    mean, sd = seen.mean(axis=0), seen.std(axis=0)
    # A column constant so far has sd 0 (numpy's rounding leaves ~1e-14).
    varies = sd > 1e-9 * np.maximum(1.0, np.abs(mean))
    out[t] = np.where(varies, (rows[t] - mean) / np.where(varies, sd, 1.0),
                      0.0)
  return out


@pytest.mark.parametrize('name', ['trumpapproval', 'phishing', 'waterflow'])
def test_scaler_matches_river_standard_scaler(name):
  stream = rd.load_stream(name, limit=60)
  raw = np.asarray([[x[k] for k in stream.feature_names]
                    for x, _ in rd.river_examples(name, 60)], np.float64)
  np.testing.assert_allclose(stream.predict_inputs,
                             _running_scaled(raw, False), atol=1e-9)
  np.testing.assert_allclose(stream.learn_inputs,
                             _running_scaled(raw, True), atol=1e-9)


def test_time_features_use_only_the_past():
  examples = rd.river_examples('airlinepassengers', 13)
  assert examples[0][0]['previous_target'] == 0.0
  for (features, _), (_, previous) in zip(examples[1:], examples[:-1]):
    assert features['previous_target'] == previous
  assert examples[12][0]['elapsed'] == 12.0
  np.testing.assert_allclose(examples[12][0]['cycle_sin'],
                             examples[0][0]['cycle_sin'], atol=1e-12)


def _memoriser():
  """A learner that sets its linear model to predict the last target."""
  def step(params, state, inputs, target):
    del inputs
    return {'w': jnp.zeros_like(params['w']),
            'b': jnp.asarray(target, params['b'].dtype)}, state

  def build(point):
    del point
    return lambda apply_fn: ((lambda params: ()), step)
  return harness.Learner('trumpapproval/linear/memoriser', 'memoriser', build)


def test_progressive_validation_predicts_before_learning():
  stream = rd.load_stream('trumpapproval', limit=100)
  with jax.enable_x64(True):
    runner = rd.make_runner(_memoriser(), stream, 4)
    errors = np.asarray(runner([{}], jax.vmap(jax.random.key)(
        jnp.zeros(1, jnp.int32))))[0, 0]
  targets = stream.targets
  # Learning from an example never helps its own prediction: the error is
  # against the previous target (0 before the first), never 0.
  expected = np.abs(targets - np.concatenate([[0.0], targets[:-1]]))
  np.testing.assert_allclose(errors, expected, rtol=1e-12)
  assert errors.mean() > 0.01


def _replay(stream, model, classification):
  """river's model fed the precomputed views under progressive validation."""
  scores = []
  for predict_row, learn_row, target in zip(
      stream.predict_inputs, stream.learn_inputs, stream.targets):
    prediction = model.predict_one(dict(enumerate(predict_row)))
    label = stream.classes[target] if classification else target
    scores.append(prediction == label if classification
                  else abs(label - prediction))
    model.learn_one(dict(enumerate(learn_row)), label)
  return float(np.mean(scores))


@pytest.mark.parametrize('name', ['trumpapproval', 'chickweights',
                                  'airlinepassengers', 'phishing'])
def test_river_linear_replay_matches_progressive_val_score(name):
  from river import evaluate

  limit = 300
  task = rd.DATASETS[name][1]
  build = rd.river_models(task)['linear']
  reference = evaluate.progressive_val_score(
      rd.river_examples(name, limit), build(), rd.river_metric(task)).get()
  stream = rd.load_stream(name, limit)
  # The replay drops the pipeline's scaler: the views are already scaled.
  model = build()['LinearRegression' if task == 'regression'
                  else 'LogisticRegression']
  replay = _replay(stream, model, task != 'regression')
  assert replay == pytest.approx(reference, rel=1e-10)


def test_default_prior_sums_to_one():
  # c is chosen so that the ten initial variances sum to 1 (the prior's
  # total variance in standardised units).
  initial = _tabular.default_prior().initial_variances
  assert sum(initial) == pytest.approx(1.0)


@pytest.mark.parametrize('name', ['trumpapproval', 'phishing'])
def test_fit_prior_rows_score_like_the_tuned_rows(name):
  # The fitted prior (regression: profile likelihood; classification:
  # log-loss) runs from the start and is scored on the whole stream and the
  # rest, as the tuned learners are.
  stream = rd.load_stream(name, limit=120)
  config = dataclasses.replace(rd.DEFAULT, mlp_seeds=(0,))
  (learner, _) = rd.fit_learners(name, 'linear')
  assert learner.meta['belief']['rank'] == 0
  with jax.enable_x64(True):
    result = rd.fit_protocol(stream, config)(learner, {}, (0,))
  assert result['tune_steps'] == 30
  assert np.isfinite(result['score']['mean'])
  assert np.isfinite(result['score_rest']['mean'])
  assert result['fitted_scale'][0] in _tabular.FIT_SCALES
