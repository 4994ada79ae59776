r"""An external table: river's ``TrumpApproval`` stream, progressive validation.

``river`` (the online-learning library) bundles ``TrumpApproval``, a real
drifting time series (1001 daily rows: the approval ratings of five polling
agencies plus the date; the target is FiveThirtyEight's approval estimate),
and publishes the progressive-validation mean absolute error of its models on
it. Progressive validation: each example is predicted, the error recorded,
then the model learns from it, in one pass.

The features are standard-scaled online exactly as river's
``preprocessing.StandardScaler() | model`` pipeline does under
``evaluate.progressive_val_score``: the prediction sees the features scaled
with the running mean and variance of the *previous* examples, and the model
then learns from the features rescaled with statistics that include the
current example. The script first runs river's own models with
``progressive_val_score`` (so the protocol is reproduced here, not assumed),
then precomputes both scaled views with river's ``StandardScaler`` and runs
JAX learners on them under the same protocol. The target is left in its raw
units (about 40, as river's models see it).

Learners (each on a linear model and on a small MLP, 6-16-1, tanh; params
start at zero for the linear model, at a scaled normal draw for the MLP):

* ``sgd (river LinearRegression settings)``: ``optax.sgd(0.02)`` on
  :math:`(y - \hat y)^2/2`, which is river's ``LinearRegression`` (SGD,
  rate 0.01 on :math:`(y - \hat y)^2`); it reproduces river's MAE, a check
  that the harness follows river's protocol;
* ``sgd``, ``adam``: ``optax.sgd`` / ``optax.adam`` on
  :math:`(y - \hat y)^2 / 2`, learning rate from a log grid;
* ``bayesian_multiscale`` (``multiscale_optax.bayesian_multiscale`` with
  ``multiscale_optax.gaussian_observation``, noise variance :math:`r = 1`):
  every weight is a permanent part with a diffuse initial belief (variance
  :math:`10^6`: the level of the target, about 40, is unknown) plus 7
  AR(1) subweights with log-spaced timescales from 1 to 1000 steps and
  equal stationary variances summing to :math:`\sigma^2` (a 1/f profile).
  Rows: the generic prior :math:`\sigma^2 = 1` with the process and noise
  scales learned online (no tuning); the same prior with nothing learned;
  :math:`\sigma^2` tuned; the permanent part made a random walk with its
  process variance tuned;
* the generic-prior row with learned scales again with each belief of
  ``bayesian_multiscale``: the four diagonal ``variance_update`` rules
  (``moment_matching``, ``mean_field``, ``others_as_noise``,
  ``weight_marginal``) and a
  diagonal-minus-low-rank covariance of rank 1, 5 and 10;
* ``bayesian_multiscale (default prior)``: the prior a user would pick
  without looking at the data, fixed before it was first run here and the
  same for any dataset (rank 0 with the library's default
  ``variance_update``, and rank 10):

  - the targets are standard-scaled online as river's
    ``preprocessing.TargetStandardScaler`` does: the prediction is
    :math:`m + s f(x)` with the running mean :math:`m` and standard
    deviation :math:`s` (population variance; :math:`s = 1` while it is 0)
    of the targets *before* the example, and the model learns
    :math:`(y - m)/s` with statistics that include it. So every quantity
    below is in units of standardised features and targets;
  - every weight is a random-walk permanent part plus 9 AR(1) subweights
    with timescales :math:`\tau_i = 10^{0, 0.5, \dots, 4}` steps;
  - process variances :math:`q_i = c/\tau_i` (so the stationary variances
    :math:`q_i/(1 - \gamma_i^2)` are nearly equal, a 1/f profile); the
    permanent part has :math:`q_0 = c/10^4` (the slowest timescale's) and
    starts with the slowest subweight's stationary variance;
  - :math:`c` makes the initial variances (the nine stationary ones plus the
    permanent part's) sum to 1, a standardised feature's weight of order 1;
  - noise variance :math:`r = 1` (that of a standardised target); nothing
    learned online.
* ``vd_ekf``: the single-timescale diagonal EKF, ``bayesian_multiscale``
  with one random-walk subweight (initial variance :math:`10^6`), its process
  variance :math:`q` tuned (only :math:`q/r` matters for the linear model).

The diagonal rows that name no ``variance_update`` (the generic prior's
first row, fixed, tuned and ``vd_ekf``; the default prior at rank 0) run
``'moment_matching'`` (``_beliefs.MEASURED_DIAGONAL_RULE``, the library's
default when they were measured), and their labels say so.

How hyperparameters are chosen. This is a single series, so there are no
separate tuning seeds. Every learner is a ``harness.Learner`` run by
``harness.tune_and_evaluate``: its score is the MAE of the first
``tune_steps`` examples, its row the chosen point's numbers (each grid point
runs once over the whole series). Two numbers are reported for every tuned
learner:

* ``tuned on first part``: the grid point with the lowest MAE on the first
  ``tune_steps`` examples, scored on the *rest* of the series (the honest
  number) and on the whole series (river's metric; it includes the examples
  used for tuning, so it is mildly optimistic);
* ``best of grid``: the lowest whole-series MAE over the grid, an optimistic
  bound (it selects on the test data).

MLP learners are run from several random initialisations; the table gives
mean ± sd over them (the series is the same).

Usage::

  python -m benchmarks.trump_approval          # default
  python -m benchmarks.trump_approval --full   # finer grids, more MLP seeds
  # a quick check: a prefix of the series, fewer grid points and seeds, some
  # learners (row ids without the model), river's own models left out
  python -m benchmarks.trump_approval --limit 300 --tune-steps 100 \
      --warmup-steps 150 --grid-points 4 --mlp-seeds 2 \
      --learners sgd,vd_ekf --no-river --out tmp_check

Writes ``benchmarks/results/trump_approval.json`` (``_full`` with
``--full``). Runs in float64.

References:
  river, ``river.datasets.TrumpApproval`` and river's published benchmarks
  (https://riverml.xyz, "Benchmarks", regression track).
  Jones, `Learning at Multiple Timescales
  <https://arxiv.org/abs/2211.10311>`_, NeurIPS 2022.
"""

from __future__ import annotations

import dataclasses
import itertools
import sys
import time
from collections.abc import Callable
from collections.abc import Sequence
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

# river's published progressive-validation MAE on TrumpApproval (river's
# benchmark page, regression track), as quoted in this library's issue 11.
RIVER_PUBLISHED = {
    'river Linear Regression (published)': 1.315,
    'river MLP (published)': 1.581,
    'river k-Nearest Neighbors (published)': 0.642,
    'river best model (published)': 0.269,
}


RIVER_LINEAR_REGRESSION_RATE = 0.02
# The generic prior of the Bayesian learner: a permanent part with a diffuse
# (very broad) initial belief, plus drifting subweights with log-spaced
# timescales from 1 to 1000 steps and equal stationary variances.
GENERIC_TIMESCALES = tuple(float(t) for t in np.geomspace(1.0, 1000.0, 7))
DIFFUSE_VARIANCE = 1e6
# The beliefs the generic prior is run with (``bayesian_multiscale``'s
# ``variance_update`` at rank 0, and low ranks).
GENERIC_RANKS = (1, 5, 10)

# The default prior (module docstring, ``_tabular.default_prior``), for
# standardised features and targets: timescales 10^(0, 0.5, ..., 4) steps.
DEFAULT_TIMESCALES = _tabular.DEFAULT_TIMESCALES
DEFAULT_RANKS = (0, 10)


@dataclasses.dataclass(frozen=True)
class Config:
  tune_steps: int  # examples used to choose hyperparameters
  grid_points: int  # learning rates per optimizer
  mlp_seeds: tuple[int, ...]
  hidden: int
  # The warm-up window of fit_prior, and the start of the "after warm-up"
  # scores of every row.
  warmup_steps: int = 300


DEFAULT = Config(tune_steps=250, grid_points=13, mlp_seeds=(0, 1, 2, 3, 4),
                 hidden=16)
FULL = Config(tune_steps=250, grid_points=25, mlp_seeds=tuple(range(10)),
              hidden=16)

# fit_prior's grid: the prior's scale c and the slope p of its spectrum
# (the variances of timescale tau multiplied by (tau / tau_ref)^-p).
FIT_SCALES = _tabular.FIT_SCALES
FIT_SLOPES = tuple(float(p) for p in np.linspace(-1.5, 1.5, 7))
# The grid of the "best fixed scale" rows: the prior's process and initial
# variances multiplied by c.
SCALE_GRID = (1.0, 1e5)


# ---------------------------------------------------------------------------
# Data: river's stream and river's online scaling.


class Stream(NamedTuple):
  """The series under river's progressive-validation protocol.

  Attributes:
    predict_inputs: (n, 6) features scaled with the statistics of the
      examples before each one (what the prediction sees).
    learn_inputs: (n, 6) features scaled with statistics that include the
      current example (what the model learns from).
    targets: (n,) raw targets.
    feature_names: the column order.
  """

  predict_inputs: np.ndarray
  learn_inputs: np.ndarray
  targets: np.ndarray
  feature_names: tuple[str, ...]


def load_stream(limit: int | None = None) -> Stream:
  """Both scaled views of ``TrumpApproval`` (its first ``limit`` examples),
  computed by river's scaler in the order a river pipeline applies it under
  progressive validation."""
  from river import datasets  # pylint: disable=import-outside-toplevel
  from river import preprocessing  # pylint: disable=import-outside-toplevel

  scaler = preprocessing.StandardScaler()
  predict_rows, learn_rows, targets = [], [], []
  names = None
  for features, target in itertools.islice(datasets.TrumpApproval(), limit):
    names = names or tuple(features)
    predict_rows.append([scaler.transform_one(features)[k] for k in names])
    scaler.learn_one(features)
    learn_rows.append([scaler.transform_one(features)[k] for k in names])
    targets.append(target)
  return Stream(np.asarray(predict_rows), np.asarray(learn_rows),
                np.asarray(targets), names)


def river_reference() -> dict[str, float]:
  """river's own models under ``evaluate.progressive_val_score``."""
  # pylint: disable=import-outside-toplevel
  from river import datasets
  from river import evaluate
  from river import linear_model
  from river import metrics
  from river import neighbors
  from river import preprocessing

  models = {
      'river LinearRegression (run here)': lambda: (
          preprocessing.StandardScaler() | linear_model.LinearRegression()),
      'river KNNRegressor (run here)': lambda: (
          preprocessing.StandardScaler() | neighbors.KNNRegressor()),
  }
  return {
      name: float(evaluate.progressive_val_score(
          datasets.TrumpApproval(), build(), metrics.MAE()).get())
      for name, build in models.items()}


def linear_regression_replay(stream: Stream) -> float:
  """river's ``LinearRegression`` fed the precomputed scaled views; equal to
  the pipeline's MAE iff the views follow river's protocol."""
  from river import linear_model  # pylint: disable=import-outside-toplevel

  model = linear_model.LinearRegression()
  errors = []
  for predict_row, learn_row, target in zip(
      stream.predict_inputs, stream.learn_inputs, stream.targets):
    errors.append(abs(target - model.predict_one(dict(enumerate(predict_row)))))
    model.learn_one(dict(enumerate(learn_row)), target)
  return float(np.mean(errors))


# ---------------------------------------------------------------------------
# Learners: ``harness.Learner`` entries whose ``build(point)`` returns the
# step maker ``make_step(apply_fn) -> (init, step)``. Every learner has at
# most one hyperparameter (traced: the runner vmaps over the grid), tuned
# (``grid``) or fixed (``fixed``); its ``meta`` holds the row's ``model``,
# ``learner`` (the row key the docs select by), ``belief`` and
# ``scale_targets`` (whether the targets are standard-scaled online).


def _entry(model: str, name: str, build: Callable, hyper: tuple[str, Any],
           note: str, grid_points: int, *, label: str | None = None,
           belief: dict[str, Any] | None = None,
           scale_targets: bool = False) -> harness.Learner:
  """One learner on ``model``: row id ``<model>/<slug of name>``; ``hyper``
  is (name, (low, high) of a log grid | fixed value | None)."""
  key, values = hyper
  grid = ({key: harness.log_grid(*values, grid_points)}
          if isinstance(values, tuple) else {})
  fixed = {key: values} if values is not None and not grid else {}
  return harness.Learner(
      id=f'{model}/{harness.slug(name)}', label=label or name, build=build,
      grid=grid, fixed=fixed, note=note,
      meta={'model': model, 'learner': harness.slug(name), 'belief': belief,
            'scale_targets': scale_targets})


def _optax_build(optimizer: Callable[[Any], Any]) -> Callable:
  """``optimizer(learning_rate)`` on the gradient of (y - f(x))² / 2."""
  def build(point):
    return lambda apply_fn: _tabular.gradient_step(
        optimizer(point['learning_rate']), _tabular.loss(apply_fn))
  return build


def _generic_prior(drift_variance: Any, permanent_process_variance: Any,
                   timescales: Sequence[float]) -> mso.AR1Prior:
  r"""The generic prior: a permanent part (decay 1, process variance
  ``permanent_process_variance``, initial variance
  :data:`DIFFUSE_VARIANCE`), then AR(1) subweights with ``timescales`` and
  equal stationary variances :math:`\sigma^2/k` summing to
  ``drift_variance``."""
  decays = np.concatenate([[1.0], np.exp(-1.0 / np.asarray(timescales))])
  drift = drift_variance / max(len(timescales), 1)
  process = jnp.concatenate([
      jnp.reshape(permanent_process_variance, (1,)),
      drift * (1.0 - decays[1:] ** 2)])
  initial = jnp.concatenate([
      jnp.full((1,), DIFFUSE_VARIANCE), drift * jnp.ones(len(timescales))])
  return mso.AR1Prior(decays, process, initial)


def _generic_belief(rank, variance_update, timescales, learn_prior):
  return {'rank': rank or 0,
          'variance_update': variance_update or (
              None if rank else _beliefs.MEASURED_DIAGONAL_RULE),
          'timescales': list(timescales), 'permanent_part': True,
          'learned_scales': learn_prior}


def _generic(model: str, name: str, note: str, grid_points: int, *,
             hyper: tuple[str, Any] = ('drift_variance', 1.0),
             timescales: Sequence[float] = GENERIC_TIMESCALES,
             learn_prior: bool = True, rank: int | None = None,
             variance_update: str | None = None) -> harness.Learner:
  r"""``bayesian_multiscale`` on the generic prior (:func:`_generic_prior`,
  drift variance 1, a static permanent part), ``hyper[0]`` replaced by the
  hyperparameter. With ``learn_prior``, the scales of the process variances
  and of the noise variance (:math:`r = 1`) are learned online (rate
  0.01). ``rank`` and ``variance_update`` choose the belief (``None``: the
  library's default at rank > 0, else the rule the committed rows were
  measured with, :data:`_beliefs.MEASURED_DIAGONAL_RULE`, which the label
  then names)."""
  rule = variance_update or (None if rank else _beliefs.MEASURED_DIAGONAL_RULE)

  def build(point):
    values = {'drift_variance': 1.0, 'permanent_process_variance': 0.0,
              **point}
    prior = _generic_prior(values['drift_variance'],
                           values['permanent_process_variance'], timescales)
    optimizer = mso.bayesian_multiscale(
        prior=prior, noise_variance=1.0, learn_prior=learn_prior,
        learn_noise_variance=learn_prior, prior_learning_rate=0.01,
        rank=rank, variance_update=rule)
    return lambda apply_fn: _tabular.bayesian_step(
        optimizer, _tabular.observation(apply_fn))
  return _entry(model, name, build, hyper, note, grid_points,
                label=_labelled(name, rule if variance_update is None
                                else None),
                belief=_generic_belief(rank, variance_update, timescales,
                                       learn_prior))


def _labelled(name: str, unnamed_rule: str | None) -> str:
  """``name`` with the diagonal rule it runs but does not say."""
  if unnamed_rule is None:
    return name
  rule = unnamed_rule.replace('_', ' ')
  return (name[:-1] + f', {rule})' if name.endswith(')')
          else f'{name} ({rule})')


def _prior_build(prior: mso.AR1Prior, rank: int, *, learn: bool | str = False,
                 tuned: bool = False, noise_variance: float = 1.0,
                 variance_update: str | None = None) -> Callable:
  """``bayesian_multiscale`` on ``prior``; ``learn``: ``learn_prior``
  (with the noise profiled); ``tuned``: the prior's process and initial
  variances multiplied by the hyperparameter ``scale``."""
  def build(point):
    scale = point['scale'] if tuned else 1.0
    scaled = mso.AR1Prior(
        prior.decays, tuple(scale * q for q in prior.process_variances),
        tuple(scale * v for v in prior.initial_variances))
    optimizer = mso.bayesian_multiscale(
        prior=scaled, noise_variance=noise_variance,
        rank=rank, learn_prior=learn, learn_noise_variance=bool(learn),
        **({'variance_update': variance_update} if variance_update else {}))
    return lambda apply_fn: _tabular.bayesian_step(
        optimizer, _tabular.observation(apply_fn, False, noise_variance))
  return build


def _default_prior_learner(model: str, rank: int,
                           grid_points: int) -> harness.Learner:
  """The default prior fixed a priori (module docstring), at ``rank``."""
  prior = _tabular.default_prior()
  rule = None if rank else _beliefs.MEASURED_DIAGONAL_RULE
  name = f'bayesian_multiscale (default prior, rank {rank})'
  return _entry(
      model, name, _prior_build(prior, rank, variance_update=rule),
      ('scale', None),
      'default prior fixed a priori (module docstring): targets scaled '
      'online, random-walk permanent part + 9 timescales 1..1e4 steps, '
      'q_i = c / tau_i, initial variances summing to 1, r = 1, nothing '
      'learned', grid_points, label=_labelled(name, rule),
      belief={'rank': rank, 'variance_update': rule,
              'timescales': list(DEFAULT_TIMESCALES), 'permanent_part': True,
              'permanent_part_random_walk': True,
              'process_variances': list(prior.process_variances),
              'initial_variances': list(prior.initial_variances),
              'noise_variance': 1.0, 'targets': 'standard-scaled online',
              'learned_scales': False},
      scale_targets=True)


def _prior_learner(model: str, name: str, prior: mso.AR1Prior, rank: int,
                   note: str, grid_points: int, *, learn: bool | str = False,
                   tuned: bool = False) -> harness.Learner:
  """``bayesian_multiscale`` on ``prior``, targets scaled online (see
  :func:`_prior_build`)."""
  return _entry(
      model, name, _prior_build(prior, rank, learn=learn, tuned=tuned),
      ('scale', SCALE_GRID if tuned else None), note, grid_points,
      belief={'rank': rank,
              'timescales': [float(t) for t in prior.timescales],
              'learn_prior': learn, 'learn_noise_variance': bool(learn),
              'scale_tuned': tuned, 'targets': 'standard-scaled online'},
      scale_targets=True)


def prior_learners(model: str, grid_points: int) -> list[harness.Learner]:
  """The learned-prior rows: the default and the recommended prior,
  learned online (globally and per weight), with their scale tuned (the
  best fixed scale), for the diagonal and the rank-10 belief."""
  default, recommended = _tabular.default_prior(), _beliefs.recommended_prior()
  result = []
  for rank in DEFAULT_RANKS:
    belief = f'rank {rank}' if rank else 'diagonal'
    for name, prior, note, options in (
        ('default prior, learned online', default,
         'the default prior, its scale and noise learned online',
         {'learn': True}),
        ('default prior, scale tuned', default,
         'the default prior with its variances multiplied by c, tuned '
         '(best of grid: the best fixed scale)', {'tuned': True}),
        ('recommended prior, fixed', recommended,
         'the recommended prior (docs: choosing), nothing learned', {}),
        ('recommended prior, learned online', recommended,
         'the recommended prior, its scale and noise learned online',
         {'learn': True}),
        ('recommended prior, learned per weight', recommended,
         'the recommended prior, one scale per weight and the noise '
         'learned online', {'learn': 'per_weight'})):
      result.append(_prior_learner(
          model, f'bayesian_multiscale ({name}, {belief})', prior, rank,
          note, grid_points, **options))
  return result


def _generic_learners(model: str, grid_points: int) -> list[harness.Learner]:
  """The generic prior: learned scales with each belief, fixed, tuned."""
  return [
      _generic(model, 'bayesian_multiscale (generic prior, learned scales)',
               'generic prior, no tuning: permanent part (initial variance '
               '1e6) + 7 timescales 1..1000 steps, total drift variance 1, '
               'r = 1; process and noise scales learned online (rate 0.01)',
               grid_points),
      *[_generic(model, 'bayesian_multiscale (generic prior, learned scales, '
                 f"{update.replace('_', ' ')})",
                 'the generic prior with learned scales, diagonal belief, '
                 f'variance_update={update!r}', grid_points,
                 variance_update=update)
        for update in _beliefs.VARIANCE_UPDATES],
      *[_generic(model, 'bayesian_multiscale (generic prior, learned scales, '
                 f'rank {rank})',
                 f'the generic prior with learned scales, rank {rank}',
                 grid_points, rank=rank) for rank in GENERIC_RANKS],
  ]


def learners(model: str, grid_points: int) -> list[harness.Learner]:
  """Every tuned or fixed learner on ``model``, in the table's order."""
  # river's LinearRegression is SGD with rate 0.01 on (y - ŷ)², whose
  # gradient is twice that of (y - ŷ)² / 2: optax.sgd(0.02) here.
  return [
      _entry(model, 'sgd (river LinearRegression settings)',
             _optax_build(optax.sgd),
             ('learning_rate', RIVER_LINEAR_REGRESSION_RATE),
             "optax.sgd(0.02): river LinearRegression defaults, no tuning; "
             "must give river's MAE", grid_points),
      _entry(model, 'sgd', _optax_build(optax.sgd),
             ('learning_rate', (1e-4, 1.0)), 'optax.sgd', grid_points),
      _entry(model, 'adam', _optax_build(optax.adam),
             ('learning_rate', (1e-3, 10.0)), 'optax.adam', grid_points),
      *_generic_learners(model, grid_points),
      *[_default_prior_learner(model, rank, grid_points)
        for rank in DEFAULT_RANKS],
      _generic(model, 'bayesian_multiscale (generic prior, fixed)',
               'the same generic prior, nothing learned', grid_points,
               learn_prior=False),
      _generic(model, 'bayesian_multiscale (drift variance tuned)',
               'the generic prior with its total drift variance tuned, '
               'r = 1, nothing learned', grid_points,
               hyper=('drift_variance', (1e-3, 1e3)), learn_prior=False),
      _generic(model, 'bayesian_multiscale (random-walk permanent part '
               'tuned)', 'the generic prior whose permanent part is a random '
               'walk, its process variance tuned, r = 1, nothing learned',
               grid_points, hyper=('permanent_process_variance', (1e-4, 1e4)),
               learn_prior=False),
      _generic(model, 'vd_ekf', 'single-timescale diagonal EKF: '
               'bayesian_multiscale with one random-walk subweight (decay 1, '
               'initial variance 1e6), its process variance q tuned, r = 1',
               grid_points, hyper=('permanent_process_variance', (1e-4, 1e4)),
               timescales=(), learn_prior=False),
      *prior_learners(model, grid_points),
  ]


def fit_learners(model: str, grid_points: int, warmup_steps: int,
                 ) -> tuple[list[harness.Learner], dict[str, tuple]]:
  """The fit_prior rows: the default and the recommended prior, scale
  alone and scale and slope, diagonal and rank 10. Each learner's
  ``build`` runs the prior as given; the second value maps its id to
  ``(prior, rank, slopes)`` for :func:`fit_protocol`."""
  result, specs = [], {}
  for prior_name, prior in (('default prior', _tabular.default_prior()),
                            ('recommended prior',
                             _beliefs.recommended_prior())):
    for slopes, rank in itertools.product((None, FIT_SLOPES), DEFAULT_RANKS):
      belief = f'rank {rank}' if rank else 'diagonal'
      searched = 'scale and slope' if slopes else 'scale'
      name = (f'bayesian_multiscale ({prior_name}, fit_prior {searched}, '
              f'{belief})')
      note = (f'{name}: fit_prior on the first {warmup_steps} examples '
              f'({len(FIT_SCALES)} scales'
              + (f' x {len(slopes)} slopes' if slopes is not None else '')
              + '), then run from the start')
      learner = _entry(model, name, _prior_build(prior, rank),
                       ('scale', None), note, grid_points,
                       belief={'rank': rank, 'fit_prior': True,
                               'slopes_searched': slopes is not None},
                       scale_targets=True)
      result.append(learner)
      specs[learner.id] = (prior, rank, slopes)
  return result, specs


# ---------------------------------------------------------------------------
# Running and scoring.


def _log_scale(opt_state: Any) -> jax.Array:
  """The learned log prior scale of a Bayesian learner's state (its mean
  over the weights where learned per weight); NaN for other learners."""
  if not isinstance(opt_state, mso.BayesianMultiscaleState):
    return jnp.asarray(jnp.nan)
  leaves = jax.tree.leaves(opt_state.log_process_scale)
  return sum(jnp.sum(leaf) for leaf in leaves) / sum(
      leaf.size for leaf in leaves)


def _record(output, target, mean, sd, state):
  """The prediction (in the targets' units) and the learned log scale."""
  del target
  return mean + sd * output, _log_scale(state)


def make_runner(learner: harness.Learner, stream: Stream, hidden: int):
  """A jitted function (points (h,), keys (s,)) -> predictions (h, s, n)
  and the learned log prior scale after every example (h, s, n)."""
  return _tabular.make_runner(
      learner.build, learner.meta['model'],
      (stream.predict_inputs, stream.learn_inputs, stream.targets),
      hidden=hidden, scale_targets=learner.meta['scale_targets'],
      record=_record)


def mae(predictions: np.ndarray, targets: np.ndarray) -> np.ndarray:
  """Mean absolute error over the last axis; inf where any is non-finite."""
  errors = np.abs(predictions - targets)
  return np.where(np.all(np.isfinite(errors), axis=-1),
                  np.mean(np.where(np.isfinite(errors), errors, 0.0), axis=-1),
                  np.inf)


def _summary(values: np.ndarray) -> dict[str, float]:
  return {'mean': float(np.mean(values)), 'sd': float(np.std(values))}


def seeds_of(model: str, config: Config) -> tuple[int, ...]:
  """The initialisations a model runs from (the linear model's is zero)."""
  return config.mlp_seeds if model == 'mlp' else (0,)


def _keys(seeds: Sequence[int]) -> jax.Array:
  return jax.vmap(jax.random.key)(jnp.asarray(seeds))


def prefix_protocol(stream: Stream, config: Config,
                    ) -> tuple[harness.Score, harness.Evaluate]:
  """The score and the row of this single series (module docstring).

  Every grid point of a learner is run once over the whole series (all
  seeds; cached by learner id). ``score``: the MAE of the first
  ``tune_steps`` examples, which ``harness.tune_and_evaluate`` tunes on;
  ``evaluate``: the chosen point's MAE on the whole series, on the rest and
  after the warm-up, and the best of the grid by the whole series' MAE.
  """
  targets, tune = stream.targets, config.tune_steps
  runs: dict[str, tuple[np.ndarray, np.ndarray]] = {}

  def run(learner):
    if learner.id not in runs:
      seeds = seeds_of(learner.meta['model'], config)
      runs[learner.id] = tuple(np.asarray(value) for value in (
          jax.block_until_ready(make_runner(learner, stream, config.hidden)(
              learner.points(), _keys(seeds)))))  # (points, seeds, n)
    return runs[learner.id]

  def score(learner, points, seeds):
    del seeds
    if points != learner.points():
      raise ValueError('the prefix score runs the whole grid at once')
    return mae(run(learner)[0][..., :tune], targets[:tune])

  def evaluate(learner, point, seeds):
    predictions, log_scales = run(learner)
    chosen = learner.points().index(point)
    full = mae(predictions, targets)  # (points, seeds)
    best_point, _ = harness.tune(learner, lambda *_: full, seeds)
    best = learner.points().index(best_point)
    return {**_learned_scales(learner, log_scales[chosen], config),
            **_grid_fields(learner, full, best_point),
            **_maes(predictions[[chosen, best]], targets, config),
            **_after_warmup(learner, predictions, chosen, targets,
                            config.warmup_steps),
            'seeds': list(seeds), 'hyperparameter': _hyper(point),
            'best_of_grid_hyperparameter': _hyper(best_point),
            'at_grid_edge': bool(learner.grid) and bool(
                harness.at_grid_edge(learner, point)),
            'any_grid_point_diverged': bool(not np.all(np.isfinite(full)))}
  return score, evaluate


def _hyper(point: dict[str, Any]) -> float:
  """A learner's one hyperparameter (1.0 where it has none)."""
  return float(next(iter(point.values()), 1.0))


def _maes(predictions: np.ndarray, targets: np.ndarray,
          config: Config) -> dict[str, Any]:
  """MAE summaries of the chosen point (``predictions[0]``) and of the best
  of the grid (``predictions[1]``): whole series, after tuning."""
  fields = {}
  for prefix, values in (('', predictions[0]), ('best_of_grid_',
                                                predictions[1])):
    fields[prefix + 'mae'] = _summary(mae(values, targets))
    fields[prefix + 'mae_after_tuning'] = _summary(mae(
        values[..., config.tune_steps:], targets[config.tune_steps:]))
  return fields


def _after_warmup(learner: harness.Learner, predictions: np.ndarray,
                  chosen: int, targets: np.ndarray,
                  warm: int) -> dict[str, Any]:
  """The MAE after the warm-up of the chosen point, and the best of the
  grid by it."""
  after = mae(predictions[..., warm:], targets[warm:])  # (points, seeds)
  best = int(np.argmin(after.mean(axis=1)))
  return {'mae_after_warmup': _summary(after[chosen]),
          'best_of_grid_mae_after_warmup': _summary(after[best]),
          'best_of_grid_after_warmup_hyperparameter': _hyper(
              learner.points()[best])}


def _grid_fields(learner: harness.Learner, full: np.ndarray,
                 best_point: dict[str, Any]) -> dict[str, Any]:
  """The grid, every point's MAE, and the best point's edge flag."""
  return {
      'grid': list(next(iter(learner.grid.values()))) if learner.grid
              else None,
      # JSON has no infinity: a diverged grid point reads "inf".
      'mae_per_grid_point': [float(v) if np.isfinite(v) else str(v)
                             for v in full.mean(axis=1)],
      'best_of_grid_at_grid_edge': bool(learner.grid) and bool(
          harness.at_grid_edge(learner, best_point))}


def _learned_scales(learner: harness.Learner, log_scales: np.ndarray,
                    config: Config) -> dict[str, float]:
  """The learned prior scale at the end of the warm-up and of the series
  (mean over seeds of the log), for the learners that learn it."""
  belief = learner.meta['belief'] or {}
  if not (belief.get('learn_prior') or belief.get('learned_scales')):
    return {}
  return {'learned_scale_at_warmup': float(np.exp(np.mean(
      log_scales[:, config.warmup_steps - 1]))),
          'learned_scale': float(np.exp(np.mean(log_scales[:, -1])))}


def fit_protocol(stream: Stream, config: Config,
                 specs: dict[str, tuple]) -> harness.Evaluate:
  """The row of a fit_prior learner: ``mso.fit_prior`` on the warm-up
  window per seed, the fitted prior run from the start. ``mae``: the refit
  protocol (the first ``warmup_steps`` predictions by the prior as given,
  the rest by the fitted one, which has learned from the start);
  ``mae_fitted_whole``: the fitted prior's predictions throughout
  (optimistic: it chose on the first part)."""
  warm, targets = config.warmup_steps, stream.targets

  def evaluate(learner, point, seeds):
    del point
    prior, rank, slopes = specs[learner.id]
    fits, fitted = [], []
    for seed in seeds:
      key = jax.random.key(seed)
      fit = _fitted_prior(prior, rank, learner.meta['model'], stream,
                          config, key, slopes)
      fits.append(fit)
      refit = dataclasses.replace(learner, build=_prior_build(
          fit.prior, rank, noise_variance=fit.noise_variance))
      runner = make_runner(refit, stream, config.hidden)
      fitted.append(np.asarray(runner([{}], key[None])[0])[0, 0])
    fitted = np.stack(fitted)
    given = make_runner(learner, stream, config.hidden)
    before = np.asarray(given([{}], _keys(seeds))[0])[0]
    refit = np.concatenate([before[:, :warm], fitted[:, warm:]], axis=1)
    return {
        'seeds': list(seeds), 'grid': None, 'hyperparameter': 1.0,
        'at_grid_edge': False,
        'fitted_scale': [fit.process_scale for fit in fits],
        'fitted_slope': [fit.slope for fit in fits],
        'fitted_noise_scale': [fit.noise_scale for fit in fits],
        'fit_at_grid_edge': [fit.at_grid_edge for fit in fits],
        'mae': _summary(mae(refit, targets)),
        'mae_after_tuning': _summary(mae(refit[:, config.tune_steps:],
                                          targets[config.tune_steps:])),
        'mae_after_warmup': _summary(mae(refit[:, warm:], targets[warm:])),
        'mae_fitted_whole': _summary(mae(fitted, targets)),
    }
  return evaluate


def _fitted_prior(prior, rank, model, stream, config, key, slopes):
  """``mso.fit_prior`` on the first ``warmup_steps`` examples (what the
  learner learns from: features and online-scaled targets)."""
  init_fn = _tabular.MODELS[model][0]
  _, (mean, sd) = _tabular.target_scaling(stream.targets)
  warm = config.warmup_steps
  batches = (jnp.asarray(stream.learn_inputs[:warm]),
             jnp.asarray(((stream.targets - mean) / sd)[:warm]))
  params = init_fn(key, stream.predict_inputs.shape[1], config.hidden)
  return mso.fit_prior(_tabular.batch_observer(model), params, batches,
                       prior, 1.0, rank=rank, scales=FIT_SCALES,
                       slopes=slopes)


# ---------------------------------------------------------------------------
# The benchmark.


def model_rows(model: str, stream: Stream, config: Config,
               keep: Callable[[harness.Learner], bool] = lambda _: True,
               log=print) -> list[dict[str, Any]]:
  """The rows of ``model``: every learner tuned on the first part
  (:func:`prefix_protocol`), then the fit_prior rows."""
  seeds = seeds_of(model, config)
  score, evaluate = prefix_protocol(stream, config)
  table = [entry for entry in learners(model, config.grid_points)
           if keep(entry)]
  rows = harness.tune_and_evaluate(
      table, score, tuning_seeds=seeds, test_seeds=seeds, metric='mae',
      evaluate=evaluate, log=log)
  fits, specs = fit_learners(model, config.grid_points, config.warmup_steps)
  rows += harness.tune_and_evaluate(
      [entry for entry in fits if keep(entry)], score, tuning_seeds=seeds,
      test_seeds=seeds, metric='mae',
      evaluate=fit_protocol(stream, config, specs), log=log)
  return rows


def river_rows(stream: Stream) -> list[dict[str, Any]]:
  """river's published numbers, its models run here, and its
  ``LinearRegression`` replayed on the precomputed views."""
  rows = [{'id': 'river/published/' + harness.slug(
      name.replace('(published)', '')), 'label': name, 'model': 'river',
           'mae': value, 'source': 'published'}
          for name, value in RIVER_PUBLISHED.items()]
  run_here = river_reference()
  run_here['river LinearRegression on the precomputed views'] = (
      linear_regression_replay(stream))
  rows += [{'id': 'river/run/' + harness.slug(
      name.replace('(run here)', '')), 'label': name, 'model': 'river',
            'mae': value, 'source': 'run here'}
           for name, value in run_here.items()]
  return rows


def _format(summary: dict[str, float], single: bool) -> str:
  if single:
    return f'{summary["mean"]:.3f}'
  return f'{summary["mean"]:.3f} ± {summary["sd"]:.3f}'


def table(rows: list[dict[str, Any]], config: Config) -> str:
  lines = [
      '| model | learner | choice | hyperparameter | MAE whole series | '
      f'MAE after step {config.tune_steps} |',
      '|---|---|---|---|---|---|']
  for row in rows:
    if row['model'] == 'river':
      digits = 3 if row['source'] == 'published' else 4
      lines.append(f'| | {row["label"]} | | | {row["mae"]:.{digits}f} | |')
      continue
    single = row['model'] != 'mlp'
    for prefix in ('', 'best_of_grid_'):
      if row['grid'] is None and prefix:
        continue
      edge = '*' if row[prefix + 'at_grid_edge'] else ''
      hyper = f'{row[prefix + "hyperparameter"]:.3g}{edge}'
      label = ('fixed' if row['grid'] is None
               else 'best of grid' if prefix else 'tuned on first part')
      lines.append(
          f'| {row["model"]} | {row["label"]} | {label} | {hyper} | '
          f'{_format(row[prefix + "mae"], single)} | '
          f'{_format(row[prefix + "mae_after_tuning"], single)} |')
  return '\n'.join(lines)


def parse(argv: list[str] | None) -> Any:
  parser = harness.parser(
      __doc__, full_help='finer grids and more MLP initialisations')
  parser.add_argument('--limit', type=int, default=None,
                      help='the first LIMIT examples only (a quick check)')
  parser.add_argument('--tune-steps', type=int, default=None)
  parser.add_argument('--warmup-steps', type=int, default=None)
  parser.add_argument('--grid-points', type=int, default=None)
  parser.add_argument('--mlp-seeds', type=int, default=None,
                      help='MLP initialisations 0..N-1')
  parser.add_argument('--learners', default='',
                      help='comma-separated learner keys (row ids without '
                      'the model) to run; default all')
  parser.add_argument('--no-river', dest='river', action='store_false',
                      help="leave out river's own models")
  return parser.parse_args(argv)


def configure(args: Any) -> Config:
  """The configuration: default or full, with the options' changes."""
  config = FULL if args.full else DEFAULT
  changes = {'tune_steps': args.tune_steps, 'grid_points': args.grid_points,
             'warmup_steps': args.warmup_steps,
             'mlp_seeds': (tuple(range(args.mlp_seeds))
                           if args.mlp_seeds is not None else None)}
  return dataclasses.replace(config, **{
      name: value for name, value in changes.items() if value is not None})


def main(argv=None) -> int:
  args = parse(argv)
  config = configure(args)
  print(f'config: {config}', flush=True)
  selected = set(filter(None, args.learners.split(',')))
  started = time.perf_counter()
  stream = load_stream(args.limit)
  # Float64 throughout (river computes in float64; the targets are ~40 and
  # the errors ~0.2).
  with jax.enable_x64(True):
    rows = river_rows(stream) if args.river else []
    for model in _tabular.MODELS:
      rows += model_rows(model, stream, config, lambda entry: (
          not selected or entry.meta['learner'] in selected))
  seconds = time.perf_counter() - started
  text = table(rows, config)
  print(text)
  print(f'\ntotal {seconds:.1f} s')
  import river  # pylint: disable=import-outside-toplevel

  document = harness.results_document(
      'trump_approval', seconds=seconds, rows=rows,
      machine_other={'river': river.__version__},
      config={**dataclasses.asdict(config),
              'protocol': 'progressive validation (predict, record |error|, '
                          'then learn), one pass, features standard-scaled '
                          "online as river's StandardScaler pipeline does; "
                          'raw targets',
              'table': text.split('\n')})
  path = harness.write_results(
      args.out or f'trump_approval{"_full" if args.full else ""}', document)
  print(f'wrote {path}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
