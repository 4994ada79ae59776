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

How hyperparameters are chosen. This is a single series, so there are no
separate tuning seeds. Two numbers are reported for every tuned learner:

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
import functools
import sys
import time
from collections.abc import Callable
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import multiscale_optax as mso
from benchmarks import _beliefs
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

# The default prior (module docstring), for standardised features and
# targets: timescales 10^(0, 0.5, ..., 4) steps.
DEFAULT_TIMESCALES = tuple(float(t) for t in np.logspace(0.0, 4.0, 9))
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
FIT_SCALES = tuple(float(c) for c in np.logspace(-2.0, 5.0, 15))
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
  import itertools

  from river import datasets
  from river import preprocessing

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
  from river import linear_model

  model = linear_model.LinearRegression()
  errors = []
  for predict_row, learn_row, target in zip(
      stream.predict_inputs, stream.learn_inputs, stream.targets):
    errors.append(abs(target - model.predict_one(dict(enumerate(predict_row)))))
    model.learn_one(dict(enumerate(learn_row)), target)
  return float(np.mean(errors))


# ---------------------------------------------------------------------------
# Models.


def linear_init(key: jax.Array, num_features: int, hidden: int) -> dict:
  del key, hidden
  return {'w': jnp.zeros(num_features), 'b': jnp.zeros(())}


def linear_apply(params: dict, inputs: jax.Array) -> jax.Array:
  return inputs @ params['w'] + params['b']


def mlp_init(key: jax.Array, num_features: int, hidden: int) -> dict:
  first, second = jax.random.split(key)
  return {
      'hidden': {
          'w': jax.random.normal(first, (num_features, hidden))
          / np.sqrt(num_features),
          'b': jnp.zeros(hidden)},
      'out': {'w': jax.random.normal(second, (hidden,)) / np.sqrt(hidden),
              'b': jnp.zeros(())},
  }


def mlp_apply(params: dict, inputs: jax.Array) -> jax.Array:
  hidden = jnp.tanh(inputs @ params['hidden']['w'] + params['hidden']['b'])
  return hidden @ params['out']['w'] + params['out']['b']


MODELS = {'linear': (linear_init, linear_apply),
          'mlp': (mlp_init, mlp_apply)}


# ---------------------------------------------------------------------------
# Learners: each maps one hyperparameter (traced) to a predictions runner.


@dataclasses.dataclass(frozen=True)
class Learner:
  name: str
  # Log-spaced grid endpoints of the tuned hyperparameter, or one fixed value.
  grid: tuple[float, float] | float
  note: str
  make_step: Callable[[Callable, jax.Array], tuple[Callable, Callable]]
  # The Bayesian learner's belief and prior, for the results table.
  belief: dict[str, Any] | None = None
  # Whether the targets are standard-scaled online (module docstring).
  scale_targets: bool = False


def _optax_learner(name, build, grid, note):
  """A learner that follows the gradient of (y - f(x))² / 2 with ``build``."""

  def make_step(apply_fn, hyper):
    optimizer = build(hyper)

    def init(params):
      return optimizer.init(params)

    def step(params, opt_state, learn_input, target):
      def loss(params):
        return 0.5 * (apply_fn(params, learn_input) - target) ** 2
      grads = jax.grad(loss)(params)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state
    return init, step
  return Learner(name, grid, note, make_step)


def _bayesian_learner(name, grid, note, *, tuned='drift_variance',
                      timescales=GENERIC_TIMESCALES, drift_variance=1.0,
                      permanent_process_variance=0.0,
                      permanent_variance=DIFFUSE_VARIANCE, noise_variance=1.0,
                      learn_prior=True, prior_learning_rate=0.01,
                      rank=None, variance_update=None):
  r"""``bayesian_multiscale`` with a permanent part and decaying subweights.

  Every weight is :math:`w_0 + \omega_0 + \sum_{i=1}^k \omega_i`:
  :math:`\omega_0` permanent (decay 1, process variance
  ``permanent_process_variance``: 0 for a static part, positive for a random
  walk; initial variance ``permanent_variance``), the others AR(1) with the
  given ``timescales`` and equal stationary variances :math:`\sigma^2/k` (a
  1/f profile), :math:`\sigma^2` = ``drift_variance``. The hyperparameter
  (grid point or fixed value) replaces the argument named by ``tuned``.
  With ``learn_prior``, the scales of the process variances and of the noise
  variance are learned online (empirical Bayes). ``rank`` and
  ``variance_update`` choose the belief (``None``: the library's default).
  """
  decays = np.concatenate([[1.0], np.exp(-1.0 / np.asarray(timescales))])
  count = max(len(timescales), 1)

  def make_step(apply_fn, hyper):
    values = {'drift_variance': drift_variance,
              'permanent_process_variance': permanent_process_variance,
              tuned: hyper}
    drift = values['drift_variance'] / count
    process = jnp.concatenate([
        jnp.reshape(values['permanent_process_variance'], (1,)),
        drift * (1.0 - decays[1:] ** 2)])
    initial = jnp.concatenate([
        jnp.full((1,), permanent_variance),
        drift * jnp.ones(len(timescales))])
    optimizer = mso.bayesian_multiscale(
        decays, process, noise_variance, initial_variances=initial,
        learn_prior=learn_prior, learn_noise_variance=learn_prior,
        prior_learning_rate=prior_learning_rate, rank=rank,
        variance_update=variance_update or (
            None if rank else _beliefs.MEASURED_DIAGONAL_RULE))
    return optimizer.init, _bayesian_step(optimizer, apply_fn,
                                          noise_variance)
  belief = {'rank': rank or 0,
            'variance_update': variance_update or (
                None if rank else _beliefs.MEASURED_DIAGONAL_RULE),
            'timescales': list(timescales), 'permanent_part': True,
            'learned_scales': learn_prior}
  return Learner(name, grid, note, make_step, belief)


def _bayesian_step(optimizer, apply_fn, noise_variance):
  def step(params, opt_state, learn_input, target):
    _, grads, extra = mso.gaussian_observation(
        apply_fn, params, learn_input, target, noise_variance)
    updates, opt_state = optimizer.update(grads, opt_state, params, **extra)
    return optax.apply_updates(params, updates), opt_state
  return step


def default_prior() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Decays, process variances and initial variances of the default prior
  (module docstring): permanent random walk first, then the AR(1) parts."""
  timescales = np.asarray(DEFAULT_TIMESCALES)
  ar_decays = np.exp(-1.0 / timescales)
  slowest = np.max(timescales)
  # Unscaled (c = 1): q_i = 1 / tau_i; the permanent part's q and initial
  # variance are the slowest subweight's.
  process = np.concatenate([[1.0 / slowest], 1.0 / timescales])
  stationary = (1.0 / timescales) / (1.0 - ar_decays**2)
  initial = np.concatenate([[stationary[np.argmax(timescales)]], stationary])
  scale = 1.0 / np.sum(initial)
  decays = np.concatenate([[1.0], ar_decays])
  return decays, scale * process, scale * initial


def _default_prior_learner(rank):
  decays, process, initial = default_prior()

  def make_step(apply_fn, hyper):
    del hyper
    optimizer = mso.bayesian_multiscale(
        decays, process, 1.0, initial_variances=initial, rank=rank,
        variance_update=None if rank else _beliefs.MEASURED_DIAGONAL_RULE)
    return optimizer.init, _bayesian_step(optimizer, apply_fn, 1.0)
  belief = {'rank': rank,
            'variance_update': (
                None if rank else _beliefs.MEASURED_DIAGONAL_RULE),
            'timescales': list(DEFAULT_TIMESCALES), 'permanent_part': True,
            'permanent_part_random_walk': True,
            'process_variances': process.tolist(),
            'initial_variances': initial.tolist(), 'noise_variance': 1.0,
            'targets': 'standard-scaled online', 'learned_scales': False}
  return Learner(
      f'bayesian_multiscale (default prior, rank {rank})', 1.0,
      'default prior fixed a priori (module docstring): targets scaled '
      'online, random-walk permanent part + 9 timescales 1..1e4 steps, '
      'q_i = c / tau_i, initial variances summing to 1, r = 1, nothing '
      'learned', make_step, belief, scale_targets=True)


def _prior_learner(name, prior, rank, note, *, learn=False, tuned=False,
                   noise_variance=1.0):
  """``bayesian_multiscale`` on ``prior`` (an AR1Prior), targets scaled
  online; ``learn``: ``learn_prior`` (with the noise profiled); ``tuned``:
  the prior's process and initial variances multiplied by a tuned factor
  c."""

  def make_step(apply_fn, hyper):
    scale = hyper if tuned else 1.0
    scaled = mso.AR1Prior(
        prior.decays, tuple(scale * q for q in prior.process_variances),
        tuple(scale * v for v in prior.initial_variances))
    optimizer = mso.bayesian_multiscale(
        prior=scaled, noise_variance=noise_variance, rank=rank,
        learn_prior=learn, learn_noise_variance=bool(learn))
    return optimizer.init, _bayesian_step(optimizer, apply_fn,
                                          noise_variance)
  belief = {'rank': rank, 'timescales': [float(t) for t in prior.timescales],
            'learn_prior': learn, 'learn_noise_variance': bool(learn),
            'scale_tuned': tuned, 'targets': 'standard-scaled online'}
  return Learner(name, SCALE_GRID if tuned else 1.0, note, make_step,
                 belief, scale_targets=True)


def _default_ar1_prior() -> mso.AR1Prior:
  return mso.AR1Prior(*default_prior())


def prior_learners() -> list[Learner]:
  """The learned-prior rows: the default and the recommended prior,
  learned online (globally and per weight), with their scale tuned (the
  best fixed scale), for the diagonal and the rank-10 belief."""
  result = []
  for rank in DEFAULT_RANKS:
    belief = f'rank {rank}' if rank else 'diagonal'
    result += [
        _prior_learner(
            f'bayesian_multiscale (default prior, learned online, {belief})',
            _default_ar1_prior(), rank,
            'the default prior, its scale and noise learned online',
            learn=True),
        _prior_learner(
            f'bayesian_multiscale (default prior, scale tuned, {belief})',
            _default_ar1_prior(), rank,
            'the default prior with its variances multiplied by c, tuned '
            '(best of grid: the best fixed scale)', tuned=True),
        _prior_learner(
            f'bayesian_multiscale (recommended prior, fixed, {belief})',
            _beliefs.recommended_prior(), rank,
            'the recommended prior (docs: choosing), nothing learned'),
        _prior_learner(
            f'bayesian_multiscale (recommended prior, learned online, '
            f'{belief})', _beliefs.recommended_prior(), rank,
            'the recommended prior, its scale and noise learned online',
            learn=True),
        _prior_learner(
            f'bayesian_multiscale (recommended prior, learned per weight, '
            f'{belief})', _beliefs.recommended_prior(), rank,
            'the recommended prior, one scale per weight and the noise '
            'learned online', learn='per_weight'),
    ]
  return result


def learners() -> list[Learner]:
  # river's LinearRegression is SGD with rate 0.01 on (y - ŷ)², whose
  # gradient is twice that of (y - ŷ)² / 2: optax.sgd(0.02) here.
  return [
      _optax_learner('sgd (river LinearRegression settings)', optax.sgd,
                     RIVER_LINEAR_REGRESSION_RATE, 'optax.sgd(0.02): river LinearRegression '
                     'defaults, no tuning; must give river\'s MAE'),
      _optax_learner('sgd', optax.sgd, (1e-4, 1.0), 'optax.sgd'),
      _optax_learner('adam', optax.adam, (1e-3, 10.0), 'optax.adam'),
      _bayesian_learner(
          'bayesian_multiscale (generic prior, learned scales)', 1.0,
          'generic prior, no tuning: permanent part (initial variance 1e6) '
          '+ 7 timescales 1..1000 steps, total drift variance 1, r = 1; '
          'process and noise scales learned online (rate 0.01)'),
      *[_bayesian_learner(
          f'bayesian_multiscale (generic prior, learned scales, '
          f"{update.replace('_', ' ')})", 1.0,
          f'the generic prior with learned scales, diagonal belief, '
          f'variance_update={update!r}', variance_update=update)
        for update in _beliefs.VARIANCE_UPDATES],
      *[_bayesian_learner(
          f'bayesian_multiscale (generic prior, learned scales, rank {rank})',
          1.0, f'the generic prior with learned scales, rank {rank}',
          rank=rank) for rank in GENERIC_RANKS],
      *[_default_prior_learner(rank) for rank in DEFAULT_RANKS],
      _bayesian_learner(
          'bayesian_multiscale (generic prior, fixed)', 1.0,
          'the same generic prior, nothing learned', learn_prior=False),
      _bayesian_learner(
          'bayesian_multiscale (drift variance tuned)', (1e-3, 1e3),
          'the generic prior with its total drift variance tuned, r = 1, '
          'nothing learned', learn_prior=False),
      _bayesian_learner(
          'bayesian_multiscale (random-walk permanent part tuned)',
          (1e-4, 1e4),
          'the generic prior whose permanent part is a random walk, its '
          'process variance tuned, r = 1, nothing learned',
          tuned='permanent_process_variance', learn_prior=False),
      _bayesian_learner(
          'vd_ekf', (1e-4, 1e4),
          'single-timescale diagonal EKF: bayesian_multiscale with one '
          'random-walk subweight (decay 1, initial variance 1e6), its '
          'process variance q tuned, r = 1', tuned='permanent_process_variance',
          timescales=(), learn_prior=False),
      *prior_learners(),
  ]


def _log_scale(opt_state: Any) -> jax.Array:
  """The learned log prior scale of a Bayesian learner's state (its mean
  over the weights where learned per weight); NaN for other learners."""
  if not isinstance(opt_state, mso.BayesianMultiscaleState):
    return jnp.asarray(jnp.nan)
  leaves = jax.tree.leaves(opt_state.log_process_scale)
  return sum(jnp.sum(leaf) for leaf in leaves) / sum(
      leaf.size for leaf in leaves)


def make_runner(learner: Learner, model: str, stream: Stream, hidden: int):
  """A jitted function (hypers (h,), keys (s,)) -> predictions (h, s, n)
  and the learned log prior scale after every example (h, s, n)."""
  init_fn, apply_fn = MODELS[model]
  predict_inputs = jnp.asarray(stream.predict_inputs)
  learn_inputs = jnp.asarray(stream.learn_inputs)
  targets = jnp.asarray(stream.targets)
  num_features = predict_inputs.shape[1]
  if learner.scale_targets:
    before, after = target_scaling(stream.targets)
  else:
    identity = (np.zeros_like(stream.targets), np.ones_like(stream.targets))
    before = after = identity
  before = tuple(map(jnp.asarray, before))
  after = tuple(map(jnp.asarray, after))

  def single(hyper, key):
    init, step = learner.make_step(apply_fn, hyper)
    params = init_fn(key, num_features, hidden)

    def body(carry, example):
      params, opt_state = carry
      predict_input, learn_input, target, (m0, s0), (m1, s1) = example
      prediction = m0 + s0 * apply_fn(params, predict_input)
      params, opt_state = step(params, opt_state, learn_input,
                               (target - m1) / s1)
      return (params, opt_state), (prediction, _log_scale(opt_state))

    _, predictions = jax.lax.scan(
        body, (params, init(params)),
        (predict_inputs, learn_inputs, targets, before, after))
    return predictions

  over_keys = jax.vmap(single, in_axes=(None, 0))
  return jax.jit(jax.vmap(over_keys, in_axes=(0, None)))


def target_scaling(targets: np.ndarray):
  """Running (mean, sd) of the targets before and including each example.

  As river's ``TargetStandardScaler``: population variance, and sd 1 while
  the variance is 0. Returns ``((mean, sd) before, (mean, sd) after)``,
  each of shape ``(n,)``.
  """
  targets = np.asarray(targets, np.float64)
  mean, sd = np.empty_like(targets), np.empty_like(targets)
  running, squares = 0.0, 0.0  # Welford's running mean and sum of squares
  for index, target in enumerate(targets):
    delta = target - running
    running += delta / (index + 1)
    squares += delta * (target - running)
    mean[index] = running
    sd[index] = np.sqrt(squares / (index + 1)) if squares > 0.0 else 1.0
  before_mean = np.concatenate([[0.0], mean[:-1]])
  before_sd = np.concatenate([[1.0], sd[:-1]])
  return (before_mean, before_sd), (mean, sd)


# ---------------------------------------------------------------------------
# Scoring.


def _mae(predictions: np.ndarray, targets: np.ndarray) -> np.ndarray:
  """Mean absolute error over the last axis; inf where any is non-finite."""
  errors = np.abs(predictions - targets)
  return np.where(np.all(np.isfinite(errors), axis=-1),
                  np.mean(np.where(np.isfinite(errors), errors, 0.0), axis=-1),
                  np.inf)


def _summary(values: np.ndarray) -> dict[str, float]:
  return {'mean': float(np.mean(values)), 'sd': float(np.std(values))}


def evaluate(learner: Learner, model: str, stream: Stream,
             config: Config) -> dict[str, Any]:
  seeds = config.mlp_seeds if model == 'mlp' else (0,)
  tuned = isinstance(learner.grid, tuple)
  if tuned:
    grid = np.geomspace(*learner.grid, config.grid_points)
  else:
    grid = np.asarray([learner.grid], np.float64)
  runner = make_runner(learner, model, stream, config.hidden)
  keys = jax.vmap(jax.random.key)(jnp.asarray(seeds))
  predictions, log_scales = (np.asarray(value) for value in (
      jax.block_until_ready(runner(jnp.asarray(grid), keys))))  # (grid, seeds, n)
  targets = stream.targets
  tune = config.tune_steps
  full = _mae(predictions, targets)  # (grid, seeds)
  first = _mae(predictions[..., :tune], targets[:tune])
  rest = _mae(predictions[..., tune:], targets[tune:])
  # The grid search of every benchmark (harness.tune), on scores already
  # computed for every grid point: the MAE of the first part (tuned) and of
  # the whole series (best of grid).
  entry = harness.Learner(id=harness.slug(learner.name), label=learner.name,
                          build=lambda point: None,
                          grid={'hyperparameter': grid.tolist()})
  position = {value: index for index, value in enumerate(grid.tolist())}

  def choose(scores):
    point, _ = harness.tune(entry, lambda _, points, seeds: scores[
        [position[p['hyperparameter']] for p in points]], seeds)
    return position[point['hyperparameter']], bool(
        harness.at_grid_edge(entry, point))

  chosen, chosen_edge = choose(first)
  best, best_edge = choose(full)
  per_point = full.mean(axis=1)
  warm = config.warmup_steps
  after_warmup = _mae(predictions[..., warm:], targets[warm:])
  learned = {}
  belief = learner.belief or {}
  if belief.get('learn_prior') or belief.get('learned_scales'):
    learned = {'learned_scale_at_warmup': float(np.exp(np.mean(
        log_scales[chosen][:, warm - 1]))),
               'learned_scale': float(np.exp(np.mean(
                   log_scales[chosen][:, -1])))}
  return {
      **learned,
      'mae_after_warmup': _summary(after_warmup[chosen]),
      'best_of_grid_mae_after_warmup': _summary(
          after_warmup[int(np.argmin(after_warmup.mean(axis=1)))]),
      'best_of_grid_after_warmup_hyperparameter': float(
          grid[int(np.argmin(after_warmup.mean(axis=1)))]),
      'note': learner.note,
      'belief': learner.belief,
      'diverged': bool(not np.all(np.isfinite(full))),
      'seeds': list(seeds),
      'grid': grid.tolist() if tuned else None,
      # JSON has no infinity: a diverged grid point reads "inf".
      'mae_per_grid_point': [float(v) if np.isfinite(v) else str(v)
                             for v in per_point],
      'hyperparameter': float(grid[chosen]),
      'at_grid_edge': tuned and chosen_edge,
      'mae': _summary(full[chosen]),
      'mae_after_tuning': _summary(rest[chosen]),
      'best_of_grid_hyperparameter': float(grid[best]),
      'best_of_grid_at_grid_edge': tuned and best_edge,
      'best_of_grid_mae': _summary(full[best]),
      'best_of_grid_mae_after_tuning': _summary(rest[best]),
  }


def _fitted_prior(prior, rank, model, stream, config, key, slopes):
  """``mso.fit_prior`` on the first ``warmup_steps`` examples (what the
  learner learns from: features and online-scaled targets)."""
  init_fn = MODELS[model][0]
  _, (mean, sd) = target_scaling(stream.targets)
  warm = config.warmup_steps
  batches = (jnp.asarray(stream.learn_inputs[:warm]),
             jnp.asarray(((stream.targets - mean) / sd)[:warm]))
  params = init_fn(key, stream.predict_inputs.shape[1], config.hidden)
  return mso.fit_prior(_observer(model), params, batches, prior, 1.0,
                       rank=rank, scales=FIT_SCALES, slopes=slopes)


@functools.cache
def _observer(model: str) -> Callable:
  """``observe(params, (x, y))`` for ``fit_prior``, r = 1 (the same function
  for every call, so that ``fit_prior`` compiles once per model)."""
  apply_fn = MODELS[model][1]

  def observe(params, batch):
    _, grads, extra = mso.gaussian_observation(
        apply_fn, params, batch[0], batch[1], 1.0)
    return grads, extra
  return observe


def evaluate_fit(name: str, prior, rank: int, model: str, stream: Stream,
                 config: Config, slopes) -> dict[str, Any]:
  """The prior from ``fit_prior`` on the warm-up window, run from the
  start. ``mae``: the refit protocol (the first ``warmup_steps``
  predictions by the prior as given, the rest by the fitted one, which has
  learned from the start); ``mae_fitted_whole``: the fitted prior's
  predictions throughout (optimistic: it chose on the first part)."""
  seeds = config.mlp_seeds if model == 'mlp' else (0,)
  warm = config.warmup_steps
  given = make_runner(_prior_learner('given', prior, rank, ''), model,
                      stream, config.hidden)
  keys = [jax.random.key(seed) for seed in seeds]
  fits, fitted = [], []
  for key in keys:
    fit = _fitted_prior(prior, rank, model, stream, config, key, slopes)
    fits.append(fit)
    runner = make_runner(
        _prior_learner('fitted', fit.prior, rank, '',
                       noise_variance=fit.noise_variance),
        model, stream, config.hidden)
    fitted.append(np.asarray(runner(jnp.ones(1), key[None])[0])[0, 0])
  fitted = np.stack(fitted)
  before = np.asarray(given(jnp.ones(1), jnp.stack(keys))[0])[0]
  refit = np.concatenate([before[:, :warm], fitted[:, warm:]], axis=1)
  targets = stream.targets
  return {
      'note': f'{name}: fit_prior on the first {warm} examples '
              f'({len(FIT_SCALES)} scales'
              + (f' x {len(slopes)} slopes' if slopes is not None else '')
              + '), then run from the start',
      'belief': {'rank': rank, 'fit_prior': True,
                 'slopes_searched': slopes is not None},
      'diverged': bool(not np.all(np.isfinite(refit))),
      'seeds': list(seeds), 'grid': None, 'hyperparameter': 1.0,
      'at_grid_edge': False,
      'fitted_scale': [fit.process_scale for fit in fits],
      'fitted_slope': [fit.slope for fit in fits],
      'fitted_noise_scale': [fit.noise_scale for fit in fits],
      'fit_at_grid_edge': [fit.at_grid_edge for fit in fits],
      'mae': _summary(_mae(refit, targets)),
      'mae_after_tuning': _summary(_mae(refit[:, config.tune_steps:],
                                        targets[config.tune_steps:])),
      'mae_after_warmup': _summary(_mae(refit[:, warm:], targets[warm:])),
      'mae_fitted_whole': _summary(_mae(fitted, targets)),
  }


def fit_rows(model: str, stream: Stream, config: Config) -> dict[str, Any]:
  """The fit_prior rows: the default and the recommended prior, scale
  alone and scale and slope, diagonal and rank 10."""
  result = {}
  for prior_name, prior in (('default prior', _default_ar1_prior()),
                            ('recommended prior',
                             _beliefs.recommended_prior())):
    for slopes in (None, FIT_SLOPES):
      for rank in DEFAULT_RANKS:
        belief = f'rank {rank}' if rank else 'diagonal'
        searched = 'scale and slope' if slopes else 'scale'
        name = (f'bayesian_multiscale ({prior_name}, fit_prior {searched}, '
                f'{belief})')
        result[name] = evaluate_fit(name, prior, rank, model, stream,
                                    config, slopes)
  return result


def benchmark(config: Config, log=print) -> dict[str, Any]:
  stream = load_stream()
  results: dict[str, Any] = {'river': {}, 'jax': {}}
  tic = time.perf_counter()
  results['river'] = river_reference()
  results['river']['river LinearRegression on the precomputed views'] = (
      linear_regression_replay(stream))
  log(f'river reference: {time.perf_counter() - tic:.1f} s', flush=True)
  for model in MODELS:
    for learner in learners():
      tic = time.perf_counter()
      results['jax'].setdefault(model, {})[learner.name] = evaluate(
          learner, model, stream, config)
      log(f'{model:6s} {learner.name:24s} {time.perf_counter() - tic:5.1f} s',
          flush=True)
    tic = time.perf_counter()
    results['jax'][model].update(fit_rows(model, stream, config))
    log(f'{model:6s} fit_prior rows {time.perf_counter() - tic:5.1f} s',
        flush=True)
  return results


def _format(summary: dict[str, float], single: bool) -> str:
  if single:
    return f'{summary["mean"]:.3f}'
  return f'{summary["mean"]:.3f} ± {summary["sd"]:.3f}'


def table(results: dict[str, Any], config: Config) -> str:
  lines = [
      '| model | learner | choice | hyperparameter | MAE whole series | '
      f'MAE after step {config.tune_steps} |',
      '|---|---|---|---|---|---|']
  for name, value in RIVER_PUBLISHED.items():
    lines.append(f'| | {name} | | | {value:.3f} | |')
  for name, value in results['river'].items():
    lines.append(f'| | {name} | | | {value:.4f} | |')
  for model, by_learner in results['jax'].items():
    single = model != 'mlp'
    for name, entry in by_learner.items():
      for prefix in ('', 'best_of_grid_'):
        if entry['grid'] is None and prefix:
          continue
        edge = '*' if entry[prefix + 'at_grid_edge'] else ''
        hyper = f'{entry[prefix + "hyperparameter"]:.3g}{edge}'
        label = ('fixed' if entry['grid'] is None
                 else 'best of grid' if prefix else 'tuned on first part')
        lines.append(
            f'| {model} | {name} | {label} | {hyper} | '
            f'{_format(entry[prefix + "mae"], single)} | '
            f'{_format(entry[prefix + "mae_after_tuning"], single)} |')
  return '\n'.join(lines)


def rows_of(results: dict[str, Any]) -> list[dict[str, Any]]:
  """The results as the harness's rows: river's numbers, then each model's
  learners."""
  rows = []
  for name, value in RIVER_PUBLISHED.items():
    rows.append({'id': 'river/published/' + harness.slug(
        name.replace('(published)', '')), 'label': name, 'model': 'river',
                 'mae': value, 'source': 'published'})
  for name, value in results['river'].items():
    rows.append({'id': 'river/run/' + harness.slug(
        name.replace('(run here)', '')), 'label': name, 'model': 'river',
                 'mae': value, 'source': 'run here'})
  for model, by_learner in results['jax'].items():
    for name, entry in by_learner.items():
      rows.append({'id': f'{model}/{harness.slug(name)}', 'label': name,
                   'model': model, 'learner': harness.slug(name), **entry})
  return rows


def main(argv=None) -> int:
  parser = harness.parser(
      __doc__, full_help='finer grids and more MLP initialisations')
  args = parser.parse_args(argv)
  config = FULL if args.full else DEFAULT
  print(f'config: {config}', flush=True)
  started = time.perf_counter()
  # Float64 throughout (river computes in float64; the targets are ~40 and
  # the errors ~0.2).
  with jax.enable_x64(True):
    results = benchmark(config)
  seconds = time.perf_counter() - started
  text = table(results, config)
  print(text)
  print(f'\ntotal {seconds:.1f} s')
  import river  # pylint: disable=import-outside-toplevel

  document = harness.results_document(
      'trump_approval', seconds=seconds, rows=rows_of(results),
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
