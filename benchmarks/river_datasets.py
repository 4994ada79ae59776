r"""river's bundled datasets under river's own protocol (issue 19 §1).

Every dataset river 0.26.1 ships inside its wheel (nothing downloaded), run
as river's benchmarks run them: progressive validation (each example is
predicted, scored, then learnt from), one pass, features standard-scaled
online as ``preprocessing.StandardScaler() | model`` does under
``evaluate.progressive_val_score``, and river's metric (MAE for regression,
accuracy for classification).

==================  ===========  ========  =======================
dataset             task         examples  features
==================  ===========  ========  =======================
TrumpApproval       regression   1001      6
ChickWeights        regression   578       3
WaterFlow           regression   1268      4 (derived, see below)
AirlinePassengers   regression   144       4 (derived, see below)
Phishing            binary       1250      9
Bananas             binary       5300      2
Shuttle             binary       49097     9
ImageSegments       multi-class  2310      18 (7 classes)
==================  ===========  ========  =======================

All eight are in the river 0.26.1 wheel (``river/datasets/*.csv*``,
``*.zip``); Shuttle is bundled too (``shuttle.csv.gz``).

**WaterFlow and AirlinePassengers** carry one feature, a timestamp, which
river's ``StandardScaler`` cannot scale. river benchmarks them only in its
*forecasting* track (``evaluate.ForecastingTrack``: multi-horizon forecasts,
horizons 24 and 12), whose numbers are not on river's benchmark pages. Here
they are one-step-ahead regression: the features of example :math:`t` are
the time elapsed since the first example (hours or months), the sine and
cosine of the hour of day (WaterFlow) or of the month of year
(AirlinePassengers), and the previous example's target (0 for the first
one), which progressive validation has already revealed. These derived
features then go through river's ``StandardScaler`` like any other, and
river's own models are run on the same derived stream.

**Scaling.** As in ``trump_approval.py``, river's ``StandardScaler``
precomputes two views of every stream: the features the prediction sees
(scaled with the running mean and variance of the examples *before* it) and
the features the model learns from (statistics that include it). The JAX
learners run on these views; ``tests/test_river_datasets.py`` checks that
river's own ``LinearRegression`` fed them reproduces river's pipeline.

**river's numbers.** For each dataset: river's *published* linear model and
best model (river's benchmark pages, files ``docs/benchmarks/<track>/
index.md`` of ``online-ml/river``; see :data:`PUBLISHED`), where river
publishes them; and, run here with river 0.26.1, river's linear model
(``StandardScaler | LinearRegression()``; ``StandardScaler |
LogisticRegression(optimizer=optim.SGD(0.005))``, the benchmark's setting;
``StandardScaler | SoftmaxRegression()`` for the multi-class set, where
river publishes no linear model) and a strong river model, river's
k-nearest neighbours (``StandardScaler | KNNRegressor()`` /
``KNNClassifier()``, the benchmark's setting). The published best models
(Aggregated Mondrian Forest, Streaming Random Patches, Bagging) are not the
strong model run here: river 0.26.1's ``AMFClassifier(seed=42)`` does not
reproduce its published numbers (Bananas 0.704 here against 0.889
published), and the ensembles take too long for the default run.

**JAX learners**, each on a linear model (params start at zero) and on a
small MLP (one hidden layer of 16 tanh units, scaled normal init, several
seeds); regression outputs one number, classification one logit per class
(binary sets as two classes):

* ``sgd``, ``adam``: ``optax.sgd`` / ``optax.adam`` on the squared error
  :math:`(y - \hat y)^2/2` (raw targets, as river's models see them) or the
  softmax cross-entropy, learning rate tuned;
* ``multiscale``: ``mso.multiscale`` on the raw gradient, every weight a
  permanent part plus 9 subweights with log-spaced timescales
  :math:`\tau_i = 10^{0, 0.5, \dots, 4}` steps, equal learning rates
  :math:`s/10`, the one scale :math:`s` tuned;
* ``bayesian_multiscale`` with the **default prior** (below), diagonal and
  low-rank, nothing tuned.

**Tuning**, as ``trump_approval.py`` does (every learner a
``harness.Learner`` run by ``harness.tune_and_evaluate``, each grid point
run once over the whole stream): a learner's grid point is chosen
by its metric on the first quarter of the stream (``tune_fraction``); the
row reports the metric of that point on the whole stream (river's number,
which includes the tuning prefix, so mildly optimistic) as ``score`` and on
the rest of the stream as ``score_rest``. MLP rows: mean ± sd over seeds,
each seed run at the point chosen on the mean over seeds (one seed on
Shuttle, 49097 examples, to keep the default run near 10 minutes).

**The default prior** of ``bayesian_multiscale``, one for every dataset,
fixed before any dataset here was run and not tuned on any of them. For
regression it is ``_tabular.default_prior()``, the prior ``trump_approval.py``
reports, unchanged (chosen before TrumpApproval was run):

* the targets are standard-scaled online as river's
  ``TargetStandardScaler`` does (prediction :math:`m + s f(x)` with the
  running mean and population sd of the targets before the example; the
  model learns :math:`(y - m)/s` with statistics that include it);
* every weight is a random-walk permanent part plus 9 AR(1) subweights with
  timescales :math:`\tau_i = 10^{0, 0.5, \dots, 4}` steps; process
  variances :math:`q_i = c/\tau_i`; the permanent part has :math:`q_0 =
  c/10^4` and starts with the slowest subweight's stationary variance;
  :math:`c` makes the ten initial variances sum to 1;
* ``mso.gaussian_observation`` with noise variance :math:`r = 1`;
  nothing learned online.

The classification analogue, written down here before any classification
dataset was run: the same decays, process variances and initial variances,
with ``mso.categorical_observation`` (softmax likelihood, ``fisher='exact'``,
its default :math:`\epsilon = 10^{-3}`) in place of the Gaussian one, on
the logits of all classes (two for a binary set); nothing learned online.

The belief: *diagonal* is ``rank=0`` with the library's default
``variance_update`` (``'others_as_noise'``); *low-rank* is ``rank=10``
(the low rank ``trump_approval.py`` reports).

Usage::

  python -m benchmarks.river_datasets            # every dataset
  python -m benchmarks.river_datasets --plot-only
  # a quick check: two datasets, their first 200 examples, fewer grid
  # points and MLP seeds (no goal rows, no figure)
  python -m benchmarks.river_datasets --datasets chickweights phishing \
      --limit 200 --grid-points 3 --mlp-seeds 2 --out tmp_check

Writes ``benchmarks/results/river_datasets.json`` and ``river_datasets.png``
(the running metric of each dataset). Runs in float64.
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import math
import sys
import time
from collections.abc import Callable
from collections.abc import Iterable
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import multiscale_optax as mso
from benchmarks import _beliefs
from benchmarks import _tabular
from benchmarks import harness

STEM = 'river_datasets'

# The datasets: row-id prefix -> (river class name, task).
DATASETS = {
    'trumpapproval': ('TrumpApproval', 'regression'),
    'chickweights': ('ChickWeights', 'regression'),
    'waterflow': ('WaterFlow', 'regression'),
    'airlinepassengers': ('AirlinePassengers', 'regression'),
    'phishing': ('Phishing', 'binary'),
    'bananas': ('Bananas', 'binary'),
    'shuttle': ('Shuttle', 'binary'),
    'imagesegments': ('ImageSegments', 'multiclass'),
}
METRIC = {'regression': 'MAE', 'binary': 'Accuracy',
          'multiclass': 'Accuracy'}

# river's published benchmark pages (riverml.xyz, "Benchmarks"), as the
# markdown files of online-ml/river that the site renders. None: river
# publishes no number for that dataset (reason given).
_RIVER_REPO = 'https://github.com/online-ml/river/blob'
_REGRESSION_PAGE = (f'{_RIVER_REPO}/5b8a8dcef796c34760b9ad7552354cc7f5b09d13/'
                    'docs/benchmarks/Regression/index.md')
_BINARY_PAGE = (f'{_RIVER_REPO}/746866574845c746e9e61f071c1bd2f46ebcb20d/'
                'docs/benchmarks/Binary%20classification/index.md')
_MULTICLASS_PAGE = (f'{_RIVER_REPO}/746866574845c746e9e61f071c1bd2f46ebcb20d/'
                    'docs/benchmarks/Multiclass%20classification/index.md')
_NOT_IN_TRACK = ("river's benchmark tracks (evaluate.BinaryClassificationTrack "
                 '/ RegressionTrack / MultiClassClassificationTrack) do not '
                 'include this dataset, so river publishes no number for it')
_FORECASTING = ('river benchmarks this dataset only in its forecasting track '
                '(multi-horizon forecasts, a different protocol), whose '
                "numbers are not on river's benchmark pages")
PUBLISHED = {
    'trumpapproval': {
        'linear': ('Linear Regression', 1.31455, _REGRESSION_PAGE),
        'best': ('Aggregated Mondrian Forest', 0.268533, _REGRESSION_PAGE)},
    'chickweights': {
        'linear': ('Linear Regression', 23.7587, _REGRESSION_PAGE),
        'best': ('Bagging', 23.1143, _REGRESSION_PAGE)},
    'waterflow': {'linear': (None, None, _FORECASTING),
                  'best': (None, None, _FORECASTING)},
    'airlinepassengers': {'linear': (None, None, _FORECASTING),
                          'best': (None, None, _FORECASTING)},
    'phishing': {
        'linear': ('Logistic regression', 0.8872, _BINARY_PAGE),
        'best': ('Streaming Random Patches', 0.913531, _BINARY_PAGE)},
    'bananas': {
        'linear': ('Logistic regression', 0.543208, _BINARY_PAGE),
        'best': ('Aggregated Mondrian Forest', 0.889413, _BINARY_PAGE)},
    'shuttle': {'linear': (None, None, _NOT_IN_TRACK),
                'best': (None, None, _NOT_IN_TRACK)},
    'imagesegments': {
        'linear': (None, None, "river's multi-class benchmark page lists no "
                   'linear model (its models are trees, forests, ensembles, '
                   'naive Bayes and k-NN)'),
        'best': ('Aggregated Mondrian Forest', 0.901689, _MULTICLASS_PAGE)},
}

# The issue's target for the default prior with a linear model (MAE).
LINEAR_TARGETS = {'trumpapproval': 0.24}

# river's benchmark setting of LogisticRegression (benchmarks/config.py).
RIVER_LOGISTIC_RATE = 0.005
DEFAULT_TIMESCALES = _tabular.DEFAULT_TIMESCALES
DEFAULT_RANKS = {'diagonal': 0, 'lowrank': 10}


@dataclasses.dataclass(frozen=True)
class Config:
  tune_fraction: float  # share of the stream that tuning sees
  grid_points: int  # learning rates (scales) per tuned learner
  mlp_seeds: tuple[int, ...]
  # MLP seeds on streams longer than long_stream (Shuttle: 49097 examples,
  # where three seeds of the rank-10 MLP alone would take over 5 minutes).
  long_stream: int
  long_stream_mlp_seeds: tuple[int, ...]
  hidden: int
  curve_points: int  # points of each stored running-metric curve


DEFAULT = Config(tune_fraction=0.25, grid_points=9, mlp_seeds=(0, 1, 2),
                 long_stream=10_000, long_stream_mlp_seeds=(0,), hidden=16,
                 curve_points=100)

# Learning-rate (scale) grids: (low, high) per learner and task kind.
GRIDS = {
    'regression': {'sgd': (1e-4, 1.0), 'adam': (1e-3, 10.0),
                   'multiscale': (1e-4, 1.0)},
    'classification': {'sgd': (1e-3, 10.0), 'adam': (1e-4, 1.0),
                       'multiscale': (1e-3, 10.0)},
}


# ---------------------------------------------------------------------------
# Data: river's streams and river's online scaling.


class Stream(NamedTuple):
  """One dataset under river's progressive-validation protocol.

  Attributes:
    predict_inputs: (n, d) features scaled with the statistics of the
      examples before each one (what the prediction sees).
    learn_inputs: (n, d) features scaled with statistics that include the
      current example (what the model learns from).
    targets: (n,) raw targets (regression) or class indices.
    classes: the river labels of the class indices (classification), or ().
    feature_names: the column order.
  """

  predict_inputs: np.ndarray
  learn_inputs: np.ndarray
  targets: np.ndarray
  classes: tuple[Any, ...]
  feature_names: tuple[str, ...]


def _time_features(examples: Iterable[tuple[dict, Any]], unit: str,
                   ) -> Iterable[tuple[dict, Any]]:
  """A timestamp-only stream as regression features (module docstring)."""
  start, previous = None, 0.0
  for features, target in examples:
    (stamp,) = features.values()
    if unit == 'hour':
      start = start or stamp
      elapsed = (stamp - start) / datetime.timedelta(hours=1)
      phase = 2.0 * math.pi * stamp.hour / 24.0
    else:
      start = start or stamp
      elapsed = 12.0 * (stamp.year - start.year) + stamp.month - start.month
      phase = 2.0 * math.pi * (stamp.month - 1) / 12.0
    yield ({'elapsed': float(elapsed), 'cycle_sin': math.sin(phase),
            'cycle_cos': math.cos(phase), 'previous_target': previous},
           target)
    previous = float(target)


def river_examples(name: str, limit: int | None = None,
                   ) -> list[tuple[dict, Any]]:
  """The examples of dataset ``name`` as river yields them (the two
  timestamp-only sets with their derived features)."""
  from river import datasets  # pylint: disable=import-outside-toplevel

  river_name, _ = DATASETS[name]
  examples: Iterable = getattr(datasets, river_name)()
  if name == 'waterflow':
    examples = _time_features(examples, 'hour')
  elif name == 'airlinepassengers':
    examples = _time_features(examples, 'month')
  return list(itertools.islice(examples, limit))


def load_stream(name: str, limit: int | None = None) -> Stream:
  """Both scaled views of dataset ``name`` (its first ``limit`` examples),
  computed by river's scaler in the order a river pipeline applies it under
  progressive validation."""
  from river import preprocessing  # pylint: disable=import-outside-toplevel

  examples = river_examples(name, limit)
  task = DATASETS[name][1]
  scaler = preprocessing.StandardScaler()
  names = tuple(examples[0][0])
  predict_rows, learn_rows = [], []
  for features, _ in examples:
    predict_rows.append([scaler.transform_one(features)[k] for k in names])
    scaler.learn_one(features)
    learn_rows.append([scaler.transform_one(features)[k] for k in names])
  labels = [target for _, target in examples]
  if task == 'regression':
    classes: tuple = ()
    targets = np.asarray(labels, np.float64)
  else:
    classes = tuple(sorted(set(labels)))
    index = {label: i for i, label in enumerate(classes)}
    targets = np.asarray([index[label] for label in labels], np.int32)
  return Stream(np.asarray(predict_rows, np.float64),
                np.asarray(learn_rows, np.float64), targets, classes, names)


def river_models(task: str) -> dict[str, Callable[[], Any]]:
  """river's linear model and strong model for ``task`` (module
  docstring), as builders."""
  # pylint: disable=import-outside-toplevel
  from river import linear_model
  from river import neighbors
  from river import optim
  from river import preprocessing

  if task == 'regression':
    return {'linear': lambda: (preprocessing.StandardScaler()
                               | linear_model.LinearRegression()),
            'knn': lambda: (preprocessing.StandardScaler()
                            | neighbors.KNNRegressor())}
  linear = (
      (lambda: preprocessing.StandardScaler() | linear_model.LogisticRegression(
          optimizer=optim.SGD(RIVER_LOGISTIC_RATE)))
      if task == 'binary' else
      (lambda: preprocessing.StandardScaler()
       | linear_model.SoftmaxRegression()))
  return {'linear': linear,
          'knn': lambda: (preprocessing.StandardScaler()
                          | neighbors.KNNClassifier())}


def river_metric(task: str):
  from river import metrics  # pylint: disable=import-outside-toplevel
  return metrics.MAE() if task == 'regression' else metrics.Accuracy()


def river_run(name: str, model: Any, limit: int | None = None) -> np.ndarray:
  """river's running metric after every example (of the first ``limit``),
  by river's own ``evaluate.iter_progressive_val_score``; the last value is
  river's ``progressive_val_score``."""
  from river import evaluate  # pylint: disable=import-outside-toplevel

  task = DATASETS[name][1]
  steps = evaluate.iter_progressive_val_score(
      river_examples(name, limit), model, river_metric(task), step=1)
  return np.asarray([checkpoint[river_metric(task).__class__.__name__].get()
                     for checkpoint in steps])


# ---------------------------------------------------------------------------
# Learners: ``harness.Learner`` entries, one per dataset, model and learner
# (row id ``<dataset>/<model>/<learner>``), whose ``build(point)`` maps one
# grid point (traced values) to the step maker ``make_step(apply_fn) ->
# (init, step)``: step(params, state, learn_input, target) -> (params,
# state), where the target is a scaled target or a class index.


def _gradient_build(optimizer: Callable[[Any], Any],
                    classification: bool) -> Callable:
  """``optimizer(learning_rate)`` on the squared error or cross-entropy."""
  def build(point):
    return lambda apply_fn: _tabular.gradient_step(
        optimizer(point['learning_rate']),
        _tabular.loss(apply_fn, classification))
  return build


def _multiscale(scale):
  decays = np.concatenate(
      [[1.0], mso.decays_from_timescales(np.asarray(DEFAULT_TIMESCALES))])
  rates = jnp.full(len(decays), 1.0 / len(decays))
  return mso.multiscale(rates, decays, learning_rate=scale)


def _bayesian_build(rank: int, classification: bool,
                    prior: mso.AR1Prior | None = None,
                    learn: bool | str = False,
                    noise_variance: float = 1.0) -> Callable:
  """The Bayesian learner on ``prior`` (default: the default prior);
  ``learn``: ``learn_prior`` (with the noise profiled for regression; a
  softmax observation's noise is the model's own)."""
  prior = prior or _tabular.default_prior()

  def build(point):
    del point
    transform = mso.bayesian_multiscale(
        prior=prior, noise_variance=noise_variance, rank=rank,
        learn_prior=learn,
        learn_noise_variance=bool(learn) and not classification)
    return lambda apply_fn: _tabular.bayesian_step(
        transform, _tabular.observation(apply_fn, classification,
                                        noise_variance))
  return build


def _rows_of(name: str, model: str) -> dict[str, Any]:
  """The fields every row of ``name`` on ``model`` carries."""
  river_name, task = DATASETS[name]
  return {'dataset': river_name, 'task': task, 'metric_name': METRIC[task],
          'section': 'results', 'model': model, 'published': False}


def _entry(name: str, model: str, key: str, label: str, build: Callable,
           note: str, **options: Any) -> harness.Learner:
  """A learner's registry entry; ``options``: ``grid`` and ``meta``."""
  meta = options.pop('meta', {})
  return harness.Learner(
      f'{name}/{model}/{key}', f'{label} ({model})', build, note=note,
      meta={**_rows_of(name, model), 'learner': label, **meta}, **options)


def _tuned_learners(name: str, model: str,
                    config: Config) -> list[harness.Learner]:
  """SGD, Adam and multiscale, each with its learning rate (scale) tuned."""
  task = DATASETS[name][1]
  classification = task != 'regression'
  grids = GRIDS['classification' if classification else 'regression']
  return [
      _entry(name, model, key, label,
             _gradient_build(optimizer, classification), note,
             grid={'learning_rate': harness.log_grid(*grids[key],
                                                     config.grid_points)})
      for key, label, optimizer, note in (
          ('sgd', 'SGD', optax.sgd,
           'optax.sgd, learning rate tuned on the first part'),
          ('adam', 'Adam', optax.adam,
           'optax.adam, learning rate tuned on the first part'),
          ('multiscale', 'multiscale', _multiscale,
           'mso.multiscale on raw gradients: permanent part + 9 timescales '
           '1..1e4 steps, equal rates s/10, scale s tuned on the first '
           'part'))]


def _default_belief(task: str, rank: int) -> dict[str, Any]:
  prior = _tabular.default_prior()
  return {
      'rank': rank,
      'variance_update': 'others_as_noise (library default)'
                         if rank == 0 else None,
      'timescales': list(DEFAULT_TIMESCALES),
      'permanent_part_random_walk': True, 'decays': list(prior.decays),
      'process_variances': list(prior.process_variances),
      'initial_variances': list(prior.initial_variances),
      'observation': ('gaussian_observation (r = 1), targets standard-'
                      'scaled online' if task == 'regression' else
                      "categorical_observation (fisher='exact', "
                      'epsilon=1e-3)'),
      'learned_scales': False}


def _bayesian_learners(name: str, model: str,
                       belief: str) -> list[harness.Learner]:
  """The default prior fixed and learned online, and the recommended prior
  learned online, with ``belief`` (a key of :data:`DEFAULT_RANKS`)."""
  task = DATASETS[name][1]
  rank, classification = DEFAULT_RANKS[belief], task != 'regression'
  suffix = f' ({belief}' + (f', rank {rank})' if rank else ')')
  return [
      _entry(name, model, f'bayes_{belief}',
             'bayesian_multiscale, default prior' + suffix,
             _bayesian_build(rank, classification),
             'the one default prior (module docstring), nothing tuned',
             meta={'belief': _default_belief(task, rank)}),
      _entry(name, model, f'bayes_learned_{belief}',
             'bayesian_multiscale, default prior learned online' + suffix,
             _bayesian_build(rank, classification, learn=True),
             'the default prior with its scale (and, for regression, the '
             'noise) learned online (learn_prior=True)',
             meta={'belief': {'rank': rank, 'learned_scales': True}}),
      _entry(name, model, f'bayes_recommended_{belief}',
             'bayesian_multiscale, recommended prior learned online' + suffix,
             _bayesian_build(rank, classification,
                             _beliefs.recommended_prior(), learn=True),
             'the recommended prior (docs: choosing) with its scale (and, '
             'for regression, the noise) learned online',
             meta={'belief': {'rank': rank, 'learned_scales': True,
                              'prior': 'recommended'}})]


def learners(name: str, model: str, config: Config) -> list[harness.Learner]:
  """The tuned and the Bayesian learners of dataset ``name`` on ``model``."""
  return [*_tuned_learners(name, model, config),
          *[learner for belief in DEFAULT_RANKS
            for learner in _bayesian_learners(name, model, belief)]]


def fit_learners(name: str, model: str) -> list[harness.Learner]:
  """The default prior with its scale from ``fit_prior`` (diagonal and
  low-rank); ``build`` runs the prior as given, :func:`fit_protocol` the
  fitted one."""
  classification = DATASETS[name][1] != 'regression'
  result = []
  for belief, rank in DEFAULT_RANKS.items():
    label = ('bayesian_multiscale, default prior from fit_prior ('
             + belief + (f', rank {rank})' if rank else ')'))
    result.append(_entry(
        name, model, f'bayes_fit_{belief}', label,
        _bayesian_build(rank, classification),
        'the default prior with its scale chosen by fit_prior on the '
        'tuning prefix, then run from the start',
        meta={'belief': {'rank': rank, 'fit_prior': True}}))
  return result


# ---------------------------------------------------------------------------
# Running and scoring.


def make_runner(learner: harness.Learner, stream: Stream, hidden: int):
  """A jitted function (points (h,), keys (s,)) -> per-example metric
  (h, s, n): absolute error (regression) or 1 if correct. The Bayesian
  learners (ids ``.../bayes...``) see regression targets scaled online."""
  model, key = learner.id.split('/')[1:]
  classification = bool(stream.classes)

  def record(output, target, mean, sd, state):
    del state
    if classification:
      return (jnp.argmax(output) == target).astype(jnp.float64)
    return jnp.abs(target - (mean + sd * output))

  return _tabular.make_runner(
      learner.build, model,
      (stream.predict_inputs, stream.learn_inputs, stream.targets),
      hidden=hidden, outputs=len(stream.classes) if classification else 1,
      scale_targets=key.startswith('bayes') and not classification,
      record=record)


def _mean_metric(values: np.ndarray) -> np.ndarray:
  """Mean over the last axis; NaN where any value is non-finite."""
  return np.where(np.all(np.isfinite(values), axis=-1),
                  np.mean(values, axis=-1), np.nan)


def curve(running: np.ndarray, points: int) -> tuple[list[int], list[float]]:
  """``points`` (step, running metric) pairs, log-spaced steps (1-based)."""
  n = running.shape[-1]
  steps = np.unique(np.geomspace(1, n, points).round().astype(int))
  return steps.tolist(), [harness.jsonable(v) for v in running[steps - 1]]


def seeds_of(model: str, stream: Stream, config: Config) -> tuple[int, ...]:
  """The initialisations ``model`` runs from on ``stream``."""
  long = len(stream.targets) > config.long_stream
  return ((config.long_stream_mlp_seeds if long else config.mlp_seeds)
          if model == 'mlp' else (0,))


def _keys(seeds) -> jax.Array:
  return jax.vmap(jax.random.key)(jnp.asarray(seeds))


def _scores(values: np.ndarray, tune: int,
            config: Config) -> dict[str, Any]:
  """The whole-stream and rest-of-stream summaries and the running-metric
  curve of per-example metrics ``values`` (seeds, n)."""
  running = np.cumsum(values, axis=-1) / np.arange(1, values.shape[-1] + 1)
  steps, curve_values = curve(running.mean(axis=0), config.curve_points)
  return {'score': harness.summary(_mean_metric(values)),
          'score_rest': harness.summary(_mean_metric(values[..., tune:])),
          'tune_steps': tune, 'curve_steps': steps, 'curve': curve_values}


def prefix_protocol(stream: Stream, config: Config,
                    ) -> tuple[harness.Score, harness.Evaluate]:
  """Tune on the first part, score on the whole stream and on the rest.

  Every grid point of a learner is run once over the whole stream (all
  seeds; cached by learner id). ``score``: the metric of the first
  ``tune_fraction`` of the stream, which ``harness.tune_and_evaluate``
  tunes on; ``evaluate``: the chosen point's metric on the whole stream
  and on the rest, and its running-metric curve.
  """
  tune = round(config.tune_fraction * len(stream.targets))
  runs: dict[str, np.ndarray] = {}

  def run(learner):
    if learner.id not in runs:
      runner = make_runner(learner, stream, config.hidden)
      seeds = seeds_of(learner.id.split('/')[1], stream, config)
      runs[learner.id] = np.asarray(jax.block_until_ready(
          runner(learner.points(), _keys(seeds))))  # (points, seeds, n)
    return runs[learner.id]

  def score(learner, points, seeds):
    del seeds
    if points != learner.points():
      raise ValueError('the prefix score runs the whole grid at once')
    return _mean_metric(run(learner)[..., :tune])

  def evaluate(learner, point, seeds):
    values = run(learner)
    tuning = score(learner, learner.points(), seeds)
    return {'hyperparameters': harness.jsonable(point) if learner.grid
                               else None,
            'grid': harness.jsonable(dict(learner.grid)),
            'tuning_score_per_point': harness.jsonable(
                np.mean(tuning, axis=1)),
            'seeds': list(seeds),
            **_scores(values[learner.points().index(point)], tune, config)}
  return score, evaluate


def fit_protocol(stream: Stream, config: Config) -> harness.Evaluate:
  """The row of a fit_prior learner: per seed, the default prior fitted by
  ``mso.fit_prior`` on the tuning prefix (the profile likelihood for
  regression, the online log-loss for classification), run from the start
  and scored as the tuned learners are (whole stream and the rest)."""
  classification = bool(stream.classes)
  tune = round(config.tune_fraction * len(stream.targets))
  targets = stream.targets
  if not classification:
    _, (mean, sd) = _tabular.target_scaling(stream.targets)
    targets = (stream.targets - mean) / sd
  batches = (jnp.asarray(stream.learn_inputs[:tune]),
             jnp.asarray(targets[:tune]))

  def evaluate(learner, point, seeds):
    del point
    model, rank = learner.id.split('/')[1], learner.meta['belief']['rank']
    init_fn = _tabular.MODELS[model][0]
    values, fits = [], []
    for seed in seeds:
      key = jax.random.key(seed)
      params = init_fn(key, stream.predict_inputs.shape[1], config.hidden,
                       len(stream.classes) if classification else 1)
      fit = mso.fit_prior(
          _tabular.batch_observer(model, classification), params, batches,
          _tabular.default_prior(), 1.0, rank=rank,
          scales=_tabular.FIT_SCALES,
          score='log_loss' if classification else 'profile')
      fits.append(fit)
      fitted = dataclasses.replace(learner, build=_bayesian_build(
          rank, classification, fit.prior, noise_variance=fit.noise_variance))
      runner = make_runner(fitted, stream, config.hidden)
      values.append(np.asarray(runner([{}], key[None]))[0, 0])
    return {'hyperparameters': None, 'seeds': list(seeds),
            **_scores(np.stack(values), tune, config),
            'fitted_scale': [fit.process_scale for fit in fits],
            'fitted_noise_scale': [fit.noise_scale for fit in fits],
            'fit_at_grid_edge': [fit.at_grid_edge for fit in fits]}
  return evaluate


# ---------------------------------------------------------------------------
# The benchmark.


def river_rows(name: str, config: Config, log=print,
               limit: int | None = None) -> list[dict]:
  """river's published linear and best model for dataset ``name``, and
  river's linear and k-NN models run here (on the first ``limit``
  examples)."""
  river_name, task = DATASETS[name]
  base = {'dataset': river_name, 'task': task, 'metric_name': METRIC[task],
          'section': 'results'}
  rows = []
  for kind in ('linear', 'best'):
    model, value, source = PUBLISHED[name][kind]
    row = {'id': f'{name}/river/{kind}_published',
           'label': (f'river {model} (published)' if model else
                     f'river {kind} model (published)'),
           **base, 'model': 'river', 'learner': model, 'published': True,
           'published_value': value, 'source': source}
    if value is None:
      row['missing_reason'] = source
      row['source'] = None
    else:
      row['score'] = harness.summary([value])
    rows.append(row)
  for kind, build in river_models(task).items():
    tic = time.perf_counter()
    running = river_run(name, build(), limit)
    steps, values = curve(running, config.curve_points)
    rows.append({
        'id': f'{name}/river/{kind}', 'label': f'river {build()} (run here)',
        **base, 'model': 'river', 'learner': str(build()),
        'published': False, 'score': harness.summary([running[-1]]),
        'curve_steps': steps, 'curve': values,
        'seconds': round(time.perf_counter() - tic, 2)})
    log(f'  {rows[-1]["label"]}: {running[-1]:.4f} '
        f'({time.perf_counter() - tic:.1f} s)', flush=True)
  return rows


def dataset_rows(name: str, config: Config, log=print,
                 limit: int | None = None) -> list[dict]:
  """Every row of dataset ``name`` (its first ``limit`` examples): river's,
  then per model the learners tuned on the first part and the fit_prior
  rows."""
  stream = load_stream(name, limit)
  rows = river_rows(name, config, log, limit)
  lower = DATASETS[name][1] == 'regression'
  score, evaluate = prefix_protocol(stream, config)
  for model in _tabular.MODELS:
    seeds = seeds_of(model, stream, config)
    for table, evaluate_row in (
        (learners(name, model, config), evaluate),
        (fit_learners(name, model), fit_protocol(stream, config))):
      rows += harness.tune_and_evaluate(
          table, score, tuning_seeds=seeds, test_seeds=seeds,
          metric='score', lower_is_better=lower, evaluate=evaluate_row,
          log=lambda line: log(line, flush=True))
  return rows


def goals(rows: list[dict]) -> list[dict]:
  """One row per dataset: does the default prior (best of its four rows,
  and its linear rows alone) beat river's published linear and best?"""
  by_id = {row['id']: row for row in rows}
  result = []
  for name, (river_name, task) in DATASETS.items():
    lower = task == 'regression'
    better = (lambda a, b: a < b) if lower else (lambda a, b: a > b)
    bayes = {f'{model}/{belief}': by_id[f'{name}/{model}/bayes_{belief}']
             ['score']['mean']
             for model in _tabular.MODELS for belief in DEFAULT_RANKS}
    pick = min if lower else max
    best_key = pick(bayes, key=bayes.get)
    linear_keys = [k for k in bayes if k.startswith('linear/')]
    best_linear_key = pick(linear_keys, key=bayes.get)
    row = {'id': f'{name}/goals', 'label': f'{river_name}: goals',
           'dataset': river_name, 'task': task, 'metric_name': METRIC[task],
           'section': 'goals', 'default_prior_best': bayes[best_key],
           'default_prior_best_row': f'{name}/{best_key.replace("/", "/bayes_")}',
           'default_prior_best_linear': bayes[best_linear_key]}
    # Absent (not null) where river publishes no number, so that the docs
    # show a dash.
    for kind in ('linear', 'best'):
      published = by_id[f'{name}/river/{kind}_published']['published_value']
      if published is not None:
        row[f'beats_published_{kind}'] = (
            'yes' if better(bayes[best_key], published) else 'no')
    if name in LINEAR_TARGETS:
      row['linear_target'] = LINEAR_TARGETS[name]
      row['meets_linear_target'] = (
          'yes' if bayes[best_linear_key] <= LINEAR_TARGETS[name] else 'no')
    row.update(_learned_prior_goals(name, task, by_id, better, pick))
    result.append(row)
  return result


LEARNED_PRIOR_ROWS = ('bayes_learned', 'bayes_recommended', 'bayes_fit')


def _learned_prior_goals(name, task, by_id, better, pick) -> dict[str, Any]:
  """The learned prior (best of its linear rows: online, recommended,
  fit_prior) against tuned linear SGD and river's linear model (published
  where river publishes one, else run here)."""
  learned = {f'{kind}_{belief}': by_id[f'{name}/linear/{kind}_{belief}']
             ['score']['mean']
             for kind in LEARNED_PRIOR_ROWS for belief in DEFAULT_RANKS}
  best = pick(learned, key=learned.get)
  sgd = by_id[f'{name}/linear/sgd']['score']['mean']
  published = by_id[f'{name}/river/linear_published']['published_value']
  river_linear = (published if published is not None
                  else by_id[f'{name}/river/linear']['score']['mean'])
  result = {
      'learned_prior_best_linear': learned[best],
      'learned_prior_best_linear_row': f'{name}/linear/{best}',
      'river_linear_compared': river_linear,
      'river_linear_compared_source': ('published' if published is not None
                                       else 'run here'),
      'learned_prior_beats_river_linear': (
          'yes' if better(learned[best], river_linear) else 'no')}
  if task != 'regression':
    result['learned_prior_at_or_above_tuned_sgd'] = (
        'yes' if not better(sgd, learned[best]) else 'no')
  return result


def run_row(document: dict[str, Any]) -> dict[str, Any]:
  """The run's settings and wall time as a row (what the docs' prose
  quotes), copied from the document's top level."""
  config = document['config']
  return {'id': 'run', 'label': 'the run', 'section': 'run',
          'seconds': document['seconds'], 'river': config['river'],
          'grid_points': config['grid_points'],
          'tune_fraction': config['tune_fraction'],
          'mlp_seed_count': len(config['mlp_seeds']),
          'long_stream_mlp_seed_count': len(config['long_stream_mlp_seeds'])}


def plot(document: dict[str, Any], stem: str = STEM) -> None:
  rows = document['rows']
  names = list(DATASETS)
  fig, axes = harness.figure(4, 2, width=8.0, panel_height=2.9)
  # One family per colour group, told apart by hue and dash too: river's
  # models black and grey, the tuned fixed-rate learners blues and green, the
  # default prior vermillion, pink and purple (no two oranges or yellows).
  shown = [('river/linear', 'river linear (run here)', '#000000', '-'),
           ('river/knn', 'river k-NN (run here)', '#8C8C8C', '-'),
           ('linear/sgd', 'SGD (linear)', '#56B4E9', '-'),
           ('linear/adam', 'Adam (linear)', '#0072B2', '--'),
           ('linear/multiscale', 'multiscale (linear)', '#009E73', '-'),
           ('linear/bayes_diagonal', 'Bayes default, diagonal (linear)',
            '#D55E00', '-'),
           ('linear/bayes_lowrank', 'Bayes default, rank 10 (linear)',
            '#CC79A7', '--'),
           ('mlp/bayes_diagonal', 'Bayes default, diagonal (MLP)', '#5E3C99',
            '-.')]
  by_id = {row['id']: row for row in rows}
  for axis, name in zip(axes.ravel(), names, strict=True):
    for suffix, label, color, linestyle in shown:
      row = by_id[f'{name}/{suffix}']
      axis.plot(row['curve_steps'], row['curve'], label=label, color=color,
                linestyle=linestyle, linewidth=1.5)
    task = DATASETS[name][1]
    published = by_id[f'{name}/river/best_published']['published_value']
    if published is not None:
      axis.axhline(published, color='grey', linewidth=1.0, linestyle=':',
                   label="river's published best")
    axis.set_xscale('log')
    axis.set_title(DATASETS[name][0], fontsize=11)
    axis.set_xlabel('examples seen', fontsize=10)
    axis.set_ylabel(METRIC[task] + (' (log)' if task == 'regression' else ''),
                    fontsize=10)
    axis.tick_params(labelsize=9.5)
    if task == 'regression':
      axis.set_yscale('log')
    else:
      axis.set_ylim(0.4, 1.0)
  # One legend for all panels, above them: on no curve.
  legend = {}
  for axis in axes.ravel():
    for handle, label in zip(*axis.get_legend_handles_labels()):
      legend.setdefault(label, handle)
  fig.legend(legend.values(), legend.keys(), loc='outside upper center',
             ncol=3, fontsize=9.5, frameon=False,
             title='running progressive-validation metric',
             title_fontsize=10.5)
  harness.save_figure(fig, stem)




def merge(stems: list[str], stem: str) -> dict[str, Any]:
  """Runs of disjoint subsets of the datasets (e.g. in parallel processes),
  merged into one file: rows concatenated in DATASETS order, the wall time
  the longest part's, goal and run rows rebuilt."""
  parts = [harness.load_results(part) for part in stems]
  order = {name: i for i, name in enumerate(DATASETS)}
  parts.sort(key=lambda d: order[d['config']['datasets'][0]])
  rows = [row for part in parts for row in part['rows']
          if row.get('section') == 'results']
  config = {**parts[0]['config'], 'datasets': [
      name for part in parts for name in part['config']['datasets']],
            'merged_from': [harness.jsonable(p['command']) for p in parts]}
  if sorted(config['datasets']) != sorted(DATASETS):
    raise ValueError(f'merged datasets {config["datasets"]}')
  document = harness.results_document(
      STEM, config=config, rows=rows,
      seconds=max(part['seconds'] for part in parts),
      command=' && '.join([*config['merged_from'], harness.command_line()]))
  document['rows'] += [*goals(rows), run_row(document)]
  print(f'wrote {harness.write_results(stem, document)}')
  plot(document, stem)
  return document


def regoal(stem: str) -> dict[str, Any]:
  """The saved results with their goal and run rows recomputed."""
  document = harness.load_results(stem)
  rows = [row for row in document['rows']
          if row.get('section') not in ('goals', 'run')]
  document['rows'] = rows + goals(rows) + [run_row(document)]
  print(f'wrote {harness.write_results(stem, document)}')
  return document


def parse(argv: list[str] | None) -> Any:
  parser = harness.parser(__doc__)
  parser.add_argument('--datasets', nargs='*', default=list(DATASETS),
                      choices=list(DATASETS))
  parser.add_argument('--merge', nargs='+', default=None, metavar='STEM',
                      help='merge results of disjoint dataset subsets')
  parser.add_argument('--goals-only', action='store_true',
                      help='recompute the goal rows from the saved JSON')
  parser.add_argument('--limit', type=int, default=None,
                      help='the first LIMIT examples of each dataset only '
                      '(a quick check; river runs its models on them too)')
  parser.add_argument('--grid-points', type=int, default=None)
  parser.add_argument('--mlp-seeds', type=int, default=None,
                      help='MLP initialisations 0..N-1 (streams up to '
                      'long_stream examples)')
  return parser.parse_args(argv)


def configure(args: Any) -> Config:
  """The default configuration with the options' changes."""
  changes = {'grid_points': args.grid_points,
             'mlp_seeds': (tuple(range(args.mlp_seeds))
                           if args.mlp_seeds is not None else None)}
  return dataclasses.replace(DEFAULT, **{
      name: value for name, value in changes.items() if value is not None})


def main(argv=None) -> int:
  args = parse(argv)
  stem = args.out or STEM
  if args.plot_only:
    plot(harness.load_results(stem), stem)
    return 0
  if args.merge:
    merge(args.merge, stem)
    return 0
  if args.goals_only:
    regoal(stem)
    return 0
  config = configure(args)
  complete = set(args.datasets) == set(DATASETS) and args.limit is None
  started = time.perf_counter()
  rows: list[dict] = []
  with jax.enable_x64(True):
    for name in args.datasets:
      print(f'{name}:', flush=True)
      rows.extend(dataset_rows(name, config, limit=args.limit))
  if complete:
    rows.extend(goals(rows))
  import river  # pylint: disable=import-outside-toplevel
  document = harness.results_document(
      STEM, config={**dataclasses.asdict(config), 'grids': GRIDS,
                    'river': river.__version__, 'datasets': args.datasets,
                    **({'limit': args.limit} if args.limit else {}),
                    'protocol': 'progressive validation (predict, score, '
                                'then learn), one pass, features scaled '
                                "online by river's StandardScaler"},
      rows=rows, seconds=time.perf_counter() - started)
  if complete:
    document['rows'].append(run_row(document))
  path = harness.write_results(stem, document)
  print(f'wrote {path} ({document["seconds"]} s)')
  if complete:
    plot(document, stem)
  return 0


if __name__ == '__main__':
  sys.exit(main())
