r"""Per-weight prior scales: streams where some weights drift and others stay.

``mso.bayesian_multiscale`` with ``learn_prior='per_weight'`` learns one
scale :math:`c_p` of the prior's process variances per weight, where
``learn_prior=True`` learns one for all. This benchmark asks whether the
per-weight scales find the weights that move, on two linear streams with
20 inputs :math:`x_t \sim \mathcal N(0, I_{20})` and targets
:math:`y_t = x_t \cdot w_t + \varepsilon_t`, :math:`\varepsilon_t \sim
\mathcal N(0, r)`. Each learner predicts :math:`\hat y_t` from the inputs,
then sees :math:`y_t` and learns; all start from :math:`w = 0`.

Streams:

* ``five_of_twenty``: 5 weights drift as AR(1) processes with timescale
  :math:`\tau = 100` steps (decay :math:`e^{-1/100}`, stationary variance
  1, started from it), the other 15 are static, drawn once from
  :math:`\mathcal N(0, 1)`; :math:`r = 0.25`; 5000 steps.
* ``idbd``: Sutton's first IDBD experiment (1992): 5 relevant weights are
  :math:`\pm 1` (signs drawn at random), the other 15 are 0; before every
  20th example the sign of one relevant weight, chosen at random, flips; no
  noise (:math:`r = 0`). Sutton ran 250 000 examples; here 20 000 per seed
  (``--idbd-steps``), scoring the last 5000, so that the whole benchmark,
  tuning grids on several seeds included, runs in minutes on a shared CPU.
  The short horizon is not neutral: IDBD's meta-learning is still
  improving at 20 000 examples (meta rate 0.01, three seeds: the mean
  squared error of examples 15 000 to 20 000 is 1.57, of examples 95 000
  to 100 000 1.47), so the tuned meta rate is larger than a long run would
  choose, and larger meta rates diverge more often on a longer run.

Learners (rows ``<stream>/<learner>``):

* references, which know how the stream was made:

  - ``informed_kf`` (``five_of_twenty``): the exact Kalman filter on the 20
    weights (full covariance) with the true transition (decay
    :math:`e^{-1/100}` and process variance :math:`1 - e^{-2/100}` on the 5
    drifting weights, 1 and 0 on the static ones), the initial variance 1
    and the noise :math:`r`;
  - ``oracle_kf`` (``idbd``): the Kalman filter on the 5 relevant weights
    only (the 15 irrelevant ones known to be 0), which knows the flip
    schedule: after each 20th example each relevant weight flips with
    probability 1/5, moment-matched as :math:`w \leftarrow 0.6 w +
    \mathcal N(0, 0.64)`, and no change between; initial :math:`\mathcal
    N(0, 1)`; noise :math:`10^{-8}` (the stream has none; a jitter keeps
    :math:`S > 0`);
  - ``oracle_kf_ar1`` (``idbd``): the same without the schedule: the flips
    moment-matched per step as an AR(1) (each weight flips with probability
    1/100 per step: decay 0.98, process variance :math:`1 - 0.98^2`);

* Bayesian learners, ``mso.bayesian_multiscale`` on the recommended prior
  (``benchmarks/_beliefs.py``: nine timescales from 1 to :math:`10^4`
  steps, stationary variances 1/9, noise variance 1), no tuning:

  - ``bayes_per_weight``: ``learn_prior='per_weight'``,
    ``learn_noise_variance=True``;
  - ``bayes_global``: ``learn_prior=True``, ``learn_noise_variance=True``
    (``_beliefs.RECOMMENDED_OPTIONS``);
  - ``bayes_fixed``: the prior and noise variance as given, nothing learned;
  - ``bayes_fit_prior`` (``five_of_twenty``): ``mso.fit_prior`` (profile
    likelihood, default grid of scales) on the first ``--warmup`` (300)
    examples, then the fitted prior and noise variance, fixed, run from the
    first example (so the warm-up window is seen twice: see
    ``mse_after_warmup``);
  - each at rank 0 (diagonal belief); ``bayes_per_weight_full`` and
    ``bayes_global_full`` (``five_of_twenty``, unless ``--no-full-rank``)
    keep the full covariance of the 180 subweights (``rank=180``, a step
    :math:`O(180^3)`, about 6 ms on one CPU core);
  - two diagnostic rows on ``five_of_twenty``, which tell what the prior's
    shape allows from what the learning finds:
    ``bayes_per_weight_true_noise``, ``learn_prior='per_weight'`` with the
    noise variance fixed at the true :math:`r`; ``bayes_group_scales``, the
    noise at :math:`r` and the per-weight scales *set*, one for the 5
    drifting and one for the 15 static weights (the state's
    ``log_process_scale`` at the start, ``prior_learning_rate=0``), the
    pair tuned on the tuning seeds like a baseline: it knows which weights
    drift;

* tuned baselines: ``lms`` (``optax.sgd``, learning rate tuned) and
  ``idbd`` (Sutton's IDBD: per-weight log step sizes :math:`\beta_i`,
  initially :math:`\log 0.05`, and traces :math:`h_i`; meta rate
  :math:`\theta` tuned), on both streams.

Protocol (``benchmarks/harness.py``): the tuned baselines are tuned on
``--tuning-seeds`` seeds (log grid, then a finer grid around the best; a
value at the edge of its grid is flagged), and every row is scored on the
separate ``--test-seeds`` seeds: mean ± sd over test seeds. The score
(``mse_final``) is the mean of :math:`(y_t - \hat y_t)^2` over the final
window: the last half of ``five_of_twenty``, the last quarter (5000
steps) of ``idbd``. Each row also has

* ``excess_final``: ``mse_final`` :math:`- r`, and ``excess_ratio``, its
  ratio to the reference's (``informed_kf``, ``oracle_kf``), per seed;
* ``signal_excess_final``: the mean of :math:`(\hat y_t - x_t \cdot
  w_t)^2` over the same window (the excess without the sampling noise of
  :math:`\varepsilon`), and ``signal_excess_ratio``;
* ``mse_all`` (every step) and ``mse_after_warmup`` (steps from
  ``--warmup`` on);
* ``curve``: :math:`(y_t - \hat y_t)^2 - r`, averaged over test seeds and
  blocks of ``config.curve_block`` steps (the figure);
* ``diverged_seeds``: test seeds whose score is not finite (then the
  summaries are ``null`` and ``excess_final_finite_seeds`` has the rest);
* for the Bayesian rows, the learned :math:`\log_{10} c` at the last step,
  averaged over each group of weights (drifting / static, relevant /
  irrelevant) and the learned noise variance; for IDBD, the final
  :math:`\log_{10}` step sizes per group; for ``bayes_fit_prior``, the
  fitted scale and noise variance.

The goal reported, met or not (nothing was tuned to meet it): on
``five_of_twenty`` the per-weight learner within 5% of the informed Kalman
filter's excess loss (``excess_ratio`` at most 1.05) and below the global
scale's (``goal`` in ``config``).

Usage::

  python -m benchmarks.per_weight_drift               # 5 tuning + 8 test seeds
  python -m benchmarks.per_weight_drift --no-full-rank
  python -m benchmarks.per_weight_drift --skip bayes_group_scales,idbd
  python -m benchmarks.per_weight_drift --plot-only

Writes ``benchmarks/results/per_weight_drift.json`` and
``per_weight_drift.png``. The run uses one BLAS thread (``threadpoolctl``):
on a loaded machine a multi-threaded eigendecomposition of the full-rank
belief's :math:`181 \times 181` matrix is 100 times slower.

References:
  Sutton, "Adapting bias by gradient descent: an incremental version of
  delta-bar-delta", AAAI 1992 (IDBD and its first experiment). Jones,
  Scott, Ren, ElSayed, Hermann, Mayo & Mozer, "Learning in temporally
  structured environments", ICLR 2023 (the Bayesian multiscale learner and
  its learned prior). Kalman, "A new approach to linear filtering and
  prediction problems", 1960.
"""

from __future__ import annotations

import contextlib
import functools
import math
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
from benchmarks import _online_regression
from benchmarks import harness

STREAMS = ('five_of_twenty', 'idbd')
NUM_INPUTS = 20
# five_of_twenty: the first DRIFTING weights drift with this timescale.
DRIFTING = 5
DRIFT_TIMESCALE = 100.0
DRIFT_NOISE_VARIANCE = 0.25
# idbd: the first RELEVANT weights are +-1, one sign flips every FLIP_EVERY.
RELEVANT = 5
FLIP_EVERY = 20
NOISE_VARIANCES = {'five_of_twenty': DRIFT_NOISE_VARIANCE, 'idbd': 0.0}
# The two groups of weights of each stream (the first group comes first).
GROUPS = {'five_of_twenty': ('drifting', 'static'),
          'idbd': ('relevant', 'irrelevant')}
REFERENCES = {'five_of_twenty': 'informed_kf', 'idbd': 'oracle_kf'}
ORACLE_JITTER = 1e-8
IDBD_INITIAL_STEP = 0.05
# Grids (low, high, points) of the tuned baselines.
LMS_RATES = (1e-3, 0.2, 13)
META_RATES = (1e-4, 0.1, 13)
# log10 c of the drifting and of the static weights (bayes_group_scales).
GROUP_SCALES = (tuple(float(v) for v in np.arange(-1.0, 3.01, 0.5)),
                tuple(float(v) for v in np.arange(-6.0, 0.01, 1.0)))
GOAL_RATIO = 1.05
CURVE_POINTS = 50


def log(message: str) -> None:
  print(message, flush=True)


# --------------------------------------------------------------------------
# The streams.
# --------------------------------------------------------------------------


class Streams(NamedTuple):
  """Test or tuning streams, one per seed (leading axis)."""

  inputs: np.ndarray  # (seeds, steps, NUM_INPUTS)
  targets: np.ndarray  # (seeds, steps)
  signals: np.ndarray  # (seeds, steps): x_t . w_t, the noise-free target


def drifting_weights(rng: np.random.Generator, steps: int) -> np.ndarray:
  """five_of_twenty's weights, (steps, NUM_INPUTS)."""
  decay = math.exp(-1.0 / DRIFT_TIMESCALE)
  weights = np.empty((steps, NUM_INPUTS))
  current = rng.normal(size=NUM_INPUTS)
  shocks = rng.normal(size=(steps, DRIFTING)) * math.sqrt(1.0 - decay**2)
  for t in range(steps):
    weights[t] = current
    current[:DRIFTING] = decay * current[:DRIFTING] + shocks[t]
  return weights


def flipping_weights(rng: np.random.Generator, steps: int) -> np.ndarray:
  """Sutton's weights, (steps, NUM_INPUTS): a relevant sign flips before
  every FLIP_EVERY-th example."""
  signs = rng.choice([-1.0, 1.0], size=RELEVANT)
  weights = np.zeros((steps, NUM_INPUTS))
  for t in range(steps):
    if t and t % FLIP_EVERY == 0:
      signs[rng.integers(RELEVANT)] *= -1.0
    weights[t, :RELEVANT] = signs
  return weights


def make_streams(kind: str, seeds: tuple[int, ...], steps: int) -> Streams:
  inputs, targets, signals = [], [], []
  for seed in seeds:
    rng = np.random.default_rng([seed, STREAMS.index(kind)])
    weights = (drifting_weights if kind == 'five_of_twenty'
               else flipping_weights)(rng, steps)
    x = rng.normal(size=(steps, NUM_INPUTS))
    signal = np.einsum('ti,ti->t', x, weights)
    inputs.append(x)
    signals.append(signal)
    targets.append(signal + math.sqrt(NOISE_VARIANCES[kind]) * rng.normal(
        size=steps))
  return Streams(np.stack(inputs), np.stack(targets), np.stack(signals))


# --------------------------------------------------------------------------
# The learners: each runner maps Streams to {'predictions': (seeds, steps),
# and diagnostics, one entry per seed}.
# --------------------------------------------------------------------------


def _kalman_one(transitions, process, noise, inputs, targets):
  """The exact Kalman filter from N(0, I): transitions, process (steps, d)
  act after each observation."""
  dimension = inputs.shape[-1]
  identity = jnp.eye(dimension, dtype=inputs.dtype)

  def step(carry, example):
    mean, covariance = carry
    x, y, decay, variance = example
    prediction = x @ mean
    projected = covariance @ x
    gain = projected / (x @ projected + noise)
    mean = mean + gain * (y - prediction)
    keep = identity - jnp.outer(gain, x)  # Joseph form: stays PSD
    covariance = keep @ covariance @ keep.T + noise * jnp.outer(gain, gain)
    covariance = decay[:, None] * covariance * decay[None, :] + jnp.diag(
        variance)
    return (decay * mean, covariance), prediction

  start = (jnp.zeros(dimension, inputs.dtype), identity)
  _, predictions = jax.lax.scan(
      step, start, (inputs, targets, transitions, process))
  return predictions


_kalman = jax.jit(jax.vmap(_kalman_one, in_axes=(None, None, None, 0, 0)))


def kalman_runner(kind: str, variant: str) -> Callable[[Streams], dict]:
  """The reference filters (module docstring)."""

  def run(streams: Streams) -> dict:
    steps = streams.targets.shape[1]
    if kind == 'five_of_twenty':
      decay = math.exp(-1.0 / DRIFT_TIMESCALE)
      decays = np.r_[np.full(DRIFTING, decay), np.ones(NUM_INPUTS - DRIFTING)]
      variances = np.r_[np.full(DRIFTING, 1.0 - decay**2),
                        np.zeros(NUM_INPUTS - DRIFTING)]
      transitions = np.broadcast_to(decays, (steps, NUM_INPUTS))
      process = np.broadcast_to(variances, (steps, NUM_INPUTS))
      inputs, noise = streams.inputs, DRIFT_NOISE_VARIANCE
    else:
      flip = 1.0 / (RELEVANT * FLIP_EVERY)  # per weight and step
      if variant == 'schedule':  # after example t, before t + 1
        flips = (np.arange(1, steps + 1) % FLIP_EVERY == 0)[:, None]
        decays = np.where(flips, 1.0 - 2.0 / RELEVANT, 1.0)
      else:
        decays = np.full((steps, 1), 1.0 - 2.0 * flip)
      transitions = np.broadcast_to(decays, (steps, RELEVANT))
      process = 1.0 - transitions**2  # stationary variance 1
      inputs, noise = streams.inputs[..., :RELEVANT], ORACLE_JITTER
    return {'predictions': _kalman(jnp.asarray(transitions),
                                   jnp.asarray(process), noise,
                                   jnp.asarray(inputs),
                                   jnp.asarray(streams.targets))}

  return run


@jax.jit
@functools.partial(jax.vmap, in_axes=(None, 0, 0))
def _lms(rate, inputs, targets):
  return _online_regression.online_regression(
      optax.sgd(rate), inputs, targets, extra_args=()).predictions


@jax.jit
@functools.partial(jax.vmap, in_axes=(None, 0, 0))
def _idbd(meta_rate, inputs, targets):
  """Sutton's IDBD (1992, fig. 2), one weight per input."""

  def step(carry, example):
    weights, log_steps, traces = carry
    x, y = example
    prediction = x @ weights
    delta = y - prediction
    log_steps = log_steps + meta_rate * delta * x * traces
    rates = jnp.exp(log_steps)
    weights = weights + rates * delta * x
    traces = traces * jnp.maximum(1.0 - rates * x * x, 0.0) + (
        rates * delta * x)
    return (weights, log_steps, traces), prediction

  zeros = jnp.zeros(inputs.shape[-1], inputs.dtype)
  start = (zeros, zeros + math.log(IDBD_INITIAL_STEP), zeros)
  (_, log_steps, _), predictions = jax.lax.scan(
      step, start, (inputs, targets))
  return predictions, log_steps


def lms_runner(point: dict) -> Callable[[Streams], dict]:
  def run(streams: Streams) -> dict:
    return {'predictions': _lms(point['learning_rate'],
                                jnp.asarray(streams.inputs),
                                jnp.asarray(streams.targets))}

  return run


def idbd_runner(point: dict) -> Callable[[Streams], dict]:
  def run(streams: Streams) -> dict:
    predictions, log_steps = _idbd(point['meta_rate'],
                                   jnp.asarray(streams.inputs),
                                   jnp.asarray(streams.targets))
    return {'predictions': predictions,
            'log10_step_sizes': np.asarray(log_steps) / math.log(10.0)}

  return run


def _online(optimizer, noise_variance, inputs, targets, log_scales=None):
  """One stream through a Bayesian learner; returns the predictions and the
  final log scales (per weight) and log noise scale. ``log_scales``:
  per-weight log scales to start from (with ``learn_prior='per_weight'``
  and a zero rate: scales set, not learned)."""
  run = _online_regression.online_regression(
      optimizer, inputs, targets, noise_variance, log_process_scale=log_scales)
  scale = jnp.broadcast_to(run.state.log_process_scale, run.params.shape)
  return run.predictions, scale, run.state.log_noise_scale


# The recommended prior as first written (timescales from 1 step): a
# diagnostic row (_beliefs.RECOMMENDED_TIMESCALES says why it changed).
FIRST_WRITTEN_TIMESCALES = (1.0, 1e4, 9)


def _prior(timescales: tuple[float, float, int] | None) -> mso.AR1Prior:
  if timescales is None:
    return _beliefs.recommended_prior()
  shortest, longest, count = timescales
  return mso.AR1Prior.from_timescales(
      mso.log_spaced_timescales(shortest, longest, count), 1.0 / count)


@functools.cache
def bayes_runner(learn_prior: bool | str, rank: int, true_noise: bool = False,
                 timescales: tuple[float, float, int] | None = None,
                 ) -> Callable[[Streams], dict]:
  """The recommended prior with ``learn_prior`` (False: nothing learned)
  and the recommended noise, learned, or with ``true_noise`` the stream's
  :math:`r`, fixed; one per setting, so that streams of one length share
  its compilation."""
  options = dict(_beliefs.RECOMMENDED_OPTIONS, learn_prior=learn_prior,
                 learn_noise_variance=bool(learn_prior) and not true_noise)
  if true_noise:
    options['noise_variance'] = DRIFT_NOISE_VARIANCE
  optimizer = mso.bayesian_multiscale(
      prior=_prior(timescales), rank=rank, **options)
  noise = options['noise_variance']
  run_all = jax.jit(jax.vmap(functools.partial(_online, optimizer, noise)))

  def run(streams: Streams) -> dict:
    predictions, log_scales, log_noise = run_all(
        jnp.asarray(streams.inputs), jnp.asarray(streams.targets))
    if not learn_prior:
      return {'predictions': predictions}
    return {'predictions': predictions,
            'log10_scales': np.asarray(log_scales) / math.log(10.0),
            'noise_variance_learned': noise * np.exp(np.asarray(log_noise))}

  return run


@functools.cache
def _group_scales_run() -> Callable[..., Any]:
  """The recommended prior, r known, per-weight scales set (not learned)."""
  optimizer = mso.bayesian_multiscale(
      prior=_beliefs.recommended_prior(), noise_variance=DRIFT_NOISE_VARIANCE,
      learn_prior='per_weight', prior_learning_rate=0.0)
  return jax.jit(jax.vmap(
      functools.partial(_online, optimizer, DRIFT_NOISE_VARIANCE),
      in_axes=(0, 0, None)))


def group_scales_runner(point: dict) -> Callable[[Streams], dict]:
  """One scale for the drifting weights and one for the static ones."""
  log_scales = math.log(10.0) * np.r_[
      np.full(DRIFTING, point['log10_scale_drifting']),
      np.full(NUM_INPUTS - DRIFTING, point['log10_scale_static'])]

  def run(streams: Streams) -> dict:
    predictions, _, _ = _group_scales_run()(
        jnp.asarray(streams.inputs), jnp.asarray(streams.targets),
        jnp.asarray(log_scales))
    return {'predictions': predictions}

  return run


def _observe(params, batch):
  x, y = batch
  residual = y - x @ params
  return -x * residual, {'jacobian': x, 'residual': residual}


def fit_prior_runner(warmup: int) -> Callable[[Streams], dict]:
  """``mso.fit_prior`` on each seed's first ``warmup`` examples, then the
  fitted learner (fixed) from the first example."""
  prior = _beliefs.recommended_prior()
  noise = _beliefs.RECOMMENDED_OPTIONS['noise_variance']

  def run(streams: Streams) -> dict:
    outputs: dict[str, list] = {'predictions': [], 'fit_log10_scale': [],
                                'fit_noise_variance': [], 'fit_at_edge': []}
    for x, y in zip(jnp.asarray(streams.inputs),
                    jnp.asarray(streams.targets), strict=True):
      fit = mso.fit_prior(_observe, jnp.zeros(NUM_INPUTS, x.dtype),
                          (x[:warmup], y[:warmup]), prior, noise)
      optimizer = mso.bayesian_multiscale(
          prior=fit.prior, noise_variance=fit.noise_variance)
      predictions, _, _ = jax.jit(functools.partial(
          _online, optimizer, fit.noise_variance))(x, y)
      outputs['predictions'].append(predictions)
      outputs['fit_log10_scale'].append(math.log10(fit.process_scale))
      outputs['fit_noise_variance'].append(fit.noise_variance)
      outputs['fit_at_edge'].append(float(fit.at_grid_edge))
    return {name: np.asarray(values) for name, values in outputs.items()}

  return run


# --------------------------------------------------------------------------
# The registry and the score.
# --------------------------------------------------------------------------


def _fixed(runner: Callable[[Streams], dict]) -> Callable[[dict], Any]:
  return lambda point: runner


def _bayes(kind: str, name: str, label: str, learn_prior: bool | str,
           rank: int, note: str, true_noise: bool = False,
           timescales: tuple[float, float, int] | None = None,
           ) -> harness.Learner:
  return harness.Learner(
      id=f'{kind}/{name}', label=label, note=note,
      build=_fixed(bayes_runner(learn_prior, rank, true_noise, timescales)),
      meta={'kind': 'Bayesian', 'rank': rank,
            'learn_prior': learn_prior if learn_prior else 'fixed',
            'noise': 'true r, fixed' if true_noise else 'learned'
            if learn_prior else 'recommended (1), fixed'})


def references(kind: str) -> list[harness.Learner]:
  """The Kalman filters that know how the stream was made."""
  if kind == 'five_of_twenty':
    return [harness.Learner(
        id=f'{kind}/informed_kf', label='informed Kalman filter',
        build=_fixed(kalman_runner(kind, 'informed')),
        note='exact KF knowing which weights drift, their AR(1) and r',
        meta={'kind': 'reference'})]
  return [
      harness.Learner(
          id=f'{kind}/oracle_kf', label='oracle KF (flip schedule)',
          build=_fixed(kalman_runner(kind, 'schedule')),
          note='KF on the 5 relevant weights, flips every 20 steps '
          'moment-matched (w <- 0.6 w + N(0, 0.64))',
          meta={'kind': 'reference'}),
      harness.Learner(
          id=f'{kind}/oracle_kf_ar1', label='oracle KF (AR(1) flips)',
          build=_fixed(kalman_runner(kind, 'ar1')),
          note='KF on the 5 relevant weights, flips as an AR(1) per step '
          '(decay 0.98)', meta={'kind': 'reference'})]


def learners(kind: str, args: Any) -> list[harness.Learner]:
  """The rows of one stream (module docstring), references first."""
  table = [
      *references(kind),
      _bayes(kind, 'bayes_per_weight', 'Bayesian, per-weight scale',
             'per_weight', 0, 'recommended prior, one learned scale per '
             'weight, profiled noise, diagonal'),
      _bayes(kind, 'bayes_global', 'Bayesian, global scale', True, 0,
             'recommended prior, one learned scale, profiled noise, '
             'diagonal'),
      _bayes(kind, 'bayes_fixed', 'Bayesian, fixed prior', False, 0,
             'recommended prior and noise variance 1, nothing learned')]
  if kind == 'five_of_twenty':
    table.append(harness.Learner(
        id=f'{kind}/bayes_fit_prior',
        label=f'Bayesian, fit_prior ({args.warmup})',
        build=_fixed(fit_prior_runner(args.warmup)),
        note=f'mso.fit_prior on the first {args.warmup} examples, then fixed '
        'from the first example', meta={'kind': 'Bayesian', 'rank': 0,
                                        'learn_prior': 'fit_prior'}))
    table += diagnostic_learners(kind)
    if args.full_rank:
      full = len(_beliefs.recommended_prior().decays) * NUM_INPUTS
      table += [
          _bayes(kind, 'bayes_per_weight_full',
                 'Bayesian, per-weight scale, full rank', 'per_weight', full,
                 f'as bayes_per_weight with rank={full} (joint EKF)'),
          _bayes(kind, 'bayes_global_full', 'Bayesian, global scale, full '
                 'rank', True, full,
                 f'as bayes_global with rank={full} (joint EKF)')]
  table += [
      harness.Learner(
          id=f'{kind}/lms', label='LMS (tuned)', build=lms_runner,
          grid={'learning_rate': harness.log_grid(*LMS_RATES)},
          refine={'learning_rate': {'scale': 'log', 'num': 7}},
          note='optax.sgd, learning rate tuned', meta={'kind': 'tuned'}),
      harness.Learner(
          id=f'{kind}/idbd', label='IDBD (tuned)', build=idbd_runner,
          grid={'meta_rate': harness.log_grid(*META_RATES)},
          refine={'meta_rate': {'scale': 'log', 'num': 7}},
          note='Sutton (1992), initial step sizes 0.05, meta rate tuned',
          meta={'kind': 'tuned'})]
  return table


def diagnostic_learners(kind: str) -> list[harness.Learner]:
  """Rows that tell the prior's shape from its learning (five_of_twenty)."""
  shortest, longest, count = FIRST_WRITTEN_TIMESCALES
  return [
      *(_bayes(kind, f'bayes_{name}_from_1_step',
               f'Bayesian, {label}, timescales from 1 step', learn, 0,
               f'as bayes_{name} with the recommended prior as first '
               f'written: {count} timescales {shortest:g}..{longest:g} '
               'steps', timescales=FIRST_WRITTEN_TIMESCALES)
        for name, label, learn in (('per_weight', 'per-weight scale',
                                    'per_weight'),
                                   ('global', 'global scale', True))),
      _bayes(kind, 'bayes_per_weight_true_noise',
             'Bayesian, per-weight scale, r known', 'per_weight', 0,
             'as bayes_per_weight with the noise variance fixed at the '
             'true r', true_noise=True),
      harness.Learner(
          id=f'{kind}/bayes_group_scales', label='Bayesian, two scales '
          'tuned (knows which drift)', build=group_scales_runner,
          grid={'log10_scale_drifting': list(GROUP_SCALES[0]),
                'log10_scale_static': list(GROUP_SCALES[1])},
          note='recommended prior, r known, one fixed scale for the '
          'drifting and one for the static weights, tuned: the best this '
          "prior's shape does with per-weight scales",
          meta={'kind': 'Bayesian (diagnostic)', 'rank': 0,
                'learn_prior': 'tuned per group'})]


def final_window(kind: str, steps: int) -> int:
  """How many of the last steps the score averages."""
  return steps // 2 if kind == 'five_of_twenty' else steps // 4


def make_score(kind: str, steps: int, test_seeds: tuple[int, ...],
               outputs: dict[str, dict]) -> harness.Score:
  """mse_final per point and seed; the test seeds' runs go to ``outputs``
  (learner id -> runner output, with ``seconds``)."""
  cache: dict[tuple[int, ...], Streams] = {}
  window = final_window(kind, steps)

  def score(learner, points, seeds):
    seeds = tuple(seeds)
    if seeds not in cache:
      cache[seeds] = make_streams(kind, seeds, steps)
    streams = cache[seeds]
    values = []
    for point in points:
      start = time.perf_counter()
      output = learner.build(point)(streams)
      predictions = np.asarray(output['predictions'])
      with np.errstate(over='ignore', invalid='ignore'):  # a diverged run
        values.append(np.mean(np.square(
            streams.targets - predictions)[:, -window:], axis=1))
      if seeds == test_seeds:
        outputs[learner.id] = {**output, 'predictions': predictions,
                               'seconds': time.perf_counter() - start}
    return np.asarray(values)

  return score


# --------------------------------------------------------------------------
# Rows, table, figure.
# --------------------------------------------------------------------------


def _group_summaries(kind: str, name: str, values: np.ndarray) -> dict:
  """Per-seed means of ``values`` (seeds, NUM_INPUTS) over each group."""
  first, second = GROUPS[kind]
  split = DRIFTING if kind == 'five_of_twenty' else RELEVANT
  return {f'{name}_{first}': harness.summary(values[:, :split].mean(1)),
          f'{name}_{second}': harness.summary(values[:, split:].mean(1))}


def diagnostics(kind: str, output: dict) -> dict:
  """The learned scales, step sizes and fits of one row (module
  docstring)."""
  extra: dict[str, Any] = {'seconds_test_run': round(output['seconds'], 2)}
  if 'log10_scales' in output:
    extra.update(_group_summaries(kind, 'log10_scale',
                                  output['log10_scales']))
    extra['noise_variance_learned'] = harness.summary(
        output['noise_variance_learned'])
  if 'log10_step_sizes' in output:
    extra.update(_group_summaries(kind, 'log10_step_size',
                                  output['log10_step_sizes']))
  for name in ('fit_log10_scale', 'fit_noise_variance'):
    if name in output:
      extra[name] = harness.summary(output[name])
  if 'fit_at_edge' in output:
    extra['fit_seeds_at_grid_edge'] = int(np.sum(output['fit_at_edge']))
  return extra


def measure(kind: str, rows: list[dict], outputs: dict[str, dict],
            streams: Streams, warmup: int) -> list[dict]:
  """The rows with every metric of the module docstring."""
  steps = streams.targets.shape[1]
  window = final_window(kind, steps)
  noise = NOISE_VARIANCES[kind]
  block = max(steps // CURVE_POINTS, 1)
  errors = {row['id']: np.square(
      streams.targets - outputs[row['id']]['predictions']) for row in rows}
  signal = {row['id']: np.square(
      streams.signals - outputs[row['id']]['predictions'])[:, -window:].mean(1)
            for row in rows}
  reference = f'{kind}/{REFERENCES[kind]}'
  reference_excess = errors[reference][:, -window:].mean(1) - noise
  measured = []
  for row in rows:
    error = errors[row['id']]
    excess = error[:, -window:].mean(1) - noise
    curve = error[:, :steps // block * block].mean(0).reshape(-1, block)
    measured.append({
        **row, 'stream': kind, 'learner': row['id'].split('/', 1)[1],
        'excess_final': harness.summary(excess),
        'excess_ratio': harness.summary(excess / reference_excess),
        'signal_excess_final': harness.summary(signal[row['id']]),
        'signal_excess_ratio': harness.summary(
            signal[row['id']] / signal[reference]),
        'mse_all': harness.summary(error.mean(1)),
        'mse_after_warmup': harness.summary(error[:, warmup:].mean(1)),
        'curve': (curve.mean(1) - noise).tolist(),
        **divergence(excess), **diagnostics(kind, outputs[row['id']])})
  return measured


def divergence(excess: np.ndarray) -> dict:
  """How many seeds diverged (a non-finite score) and, if any did, the
  excess loss over the others."""
  finite = np.isfinite(excess)
  if finite.all():
    return {'diverged_seeds': 0}
  return {'diverged_seeds': int(np.sum(~finite)),
          'excess_final_finite_seeds': harness.summary(excess[finite])
          if finite.any() else None}


def goal(rows: list[dict]) -> dict | None:
  """Whether the per-weight learner met the goal on five_of_twenty."""
  by_id = {row['id']: row for row in rows}
  per_weight = by_id.get('five_of_twenty/bayes_per_weight')
  global_scale = by_id.get('five_of_twenty/bayes_global')
  if per_weight is None or global_scale is None:
    return None
  ratio = per_weight['excess_ratio']['mean']
  ahead = (per_weight['excess_final']['mean']
           < global_scale['excess_final']['mean'])
  return {'statement': 'five_of_twenty: bayes_per_weight excess_ratio <= '
          f'{GOAL_RATIO} and excess_final below bayes_global',
          'excess_ratio': ratio, 'within_ratio': ratio is not None
          and ratio <= GOAL_RATIO, 'ahead_of_global': bool(ahead),
          'met': bool(ratio is not None and ratio <= GOAL_RATIO and ahead)}


def _cell(record: dict, digits: int = 4) -> str:
  if record['mean'] is None:
    return 'diverged (some seeds)'
  return f"{record['mean']:.{digits}f} ± {record['sd']:.{digits}f}"


def format_table(rows: list[dict]) -> str:
  lines = []
  for kind in dict.fromkeys(row['stream'] for row in rows):
    lines.append(f"\n{kind}\n{'row':<48s} {'mse_final':>18s} "
                 f"{'excess_final':>18s} {'excess_ratio':>18s} "
                 f"{'signal_ratio':>18s}")
    for row in rows:
      if row['stream'] == kind:
        lines.append(
            f"{row['label']:<48s} {_cell(row['mse_final']):>18s} "
            f"{_cell(row['excess_final']):>18s} "
            f"{_cell(row['excess_ratio'], 3):>18s} "
            f"{_cell(row['signal_excess_ratio'], 3):>18s}")
  return '\n'.join(lines)


def plot(rows: list[dict], config: dict, stem: str) -> Any:
  """Each stream's excess loss per block of steps, mean over test seeds."""
  kinds = list(dict.fromkeys(row['stream'] for row in rows))
  def key(row: dict) -> str:  # each stream's reference in one style
    return ('reference' if row['learner'] == REFERENCES[row['stream']]
            else row['learner'])

  learners = list(dict.fromkeys(map(key, rows)))
  style = dict(zip(learners, harness.styles(len(learners)), strict=True))
  fig, axes = harness.figure(len(kinds), 1, width=9.0, panel_height=3.4)
  for axis, kind in zip(axes[:, 0], kinds, strict=True):
    block = config['curve_block'][kind]
    for row in (row for row in rows if row['stream'] == kind):
      curve = np.asarray(row['curve'], dtype=float)
      steps = block * (np.arange(curve.size) + 0.5)
      axis.plot(steps, np.where(curve > 0, curve, np.nan), label=row['label'],
                color=style[key(row)]['color'],
                linestyle=style[key(row)]['linestyle'], lw=1.2)
    axis.set_yscale('log')
    axis.set_xlabel('step')
    axis.set_ylabel(r'$(y - \hat y)^2 - r$, block mean')
    axis.set_title(f"{kind} (r = {NOISE_VARIANCES[kind]}, "
                   f"{config['test_seeds']} test seeds)")
    axis.legend(loc='center left', bbox_to_anchor=(1.0, 0.5), frameon=False)
  return harness.save_figure(fig, stem)


# --------------------------------------------------------------------------
# Main.
# --------------------------------------------------------------------------


def run_stream(kind: str, args: Any) -> list[dict]:
  steps = args.drift_steps if kind == 'five_of_twenty' else args.idbd_steps
  tuning, test = map(tuple, harness.seed_lists(args))
  log(f'\n{kind}: {steps} steps, {len(tuning)} tuning + {len(test)} test '
      'seeds')
  outputs: dict[str, dict] = {}
  skip = set(filter(None, args.skip.split(',')))
  table = [learner for learner in learners(kind, args)
           if learner.id.split('/', 1)[1] not in skip]
  rows = harness.tune_and_evaluate(
      table, make_score(kind, steps, test, outputs),
      tuning_seeds=tuning, test_seeds=test, metric='mse_final', log=log)
  return measure(kind, rows, outputs, make_streams(kind, test, steps),
                 args.warmup)


@contextlib.contextmanager
def one_blas_thread():
  """One BLAS thread (module docstring), where threadpoolctl is installed.

  JAX loads its CPU LAPACK (SciPy's OpenBLAS) at the first decomposition,
  and threadpoolctl limits only the libraries already loaded: one small
  eigendecomposition first.
  """
  try:
    import threadpoolctl  # pylint: disable=import-outside-toplevel
  except ImportError:
    yield
    return
  jax.block_until_ready(jnp.linalg.eigh(jnp.eye(2)))
  with threadpoolctl.threadpool_limits(1):
    yield


def parse(argv: list[str] | None) -> Any:
  parser = harness.parser(__doc__)
  parser.add_argument('--drift-steps', type=int, default=5000,
                      help='steps of five_of_twenty')
  parser.add_argument('--idbd-steps', type=int, default=20_000,
                      help='steps of idbd')
  parser.add_argument('--warmup', type=int, default=300,
                      help="fit_prior's window and mse_after_warmup's start")
  parser.add_argument('--tuning-seeds', type=int, default=5)
  parser.add_argument('--test-seeds', type=int, default=8)
  parser.add_argument('--streams', default=','.join(STREAMS),
                      help='comma-separated subset of ' + ','.join(STREAMS))
  parser.add_argument('--no-full-rank', dest='full_rank',
                      action='store_false',
                      help='leave out the rank-180 Bayesian rows')
  parser.add_argument('--skip', default='',
                      help='comma-separated learners to leave out (not the '
                      'references), e.g. bayes_group_scales')
  return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
  args = parse(argv)
  stem = args.out or 'per_weight_drift'
  if args.plot_only:
    document = harness.load_results(stem)
    log(f"wrote {plot(document['rows'], document['config'], stem)}")
    return document
  kinds = args.streams.split(',')
  started = time.perf_counter()
  with jax.enable_x64(True), one_blas_thread():
    rows = [row for kind in kinds for row in run_stream(kind, args)]
  seconds = time.perf_counter() - started
  log(format_table(rows))
  config = {
      'streams': kinds, 'num_inputs': NUM_INPUTS,
      'steps': {'five_of_twenty': args.drift_steps, 'idbd': args.idbd_steps},
      'final_window': {kind: final_window(kind, steps) for kind, steps in (
          ('five_of_twenty', args.drift_steps), ('idbd', args.idbd_steps))},
      'curve_block': {
          'five_of_twenty': max(args.drift_steps // CURVE_POINTS, 1),
          'idbd': max(args.idbd_steps // CURVE_POINTS, 1)},
      'noise_variance': NOISE_VARIANCES, 'drifting': DRIFTING,
      'drift_timescale': DRIFT_TIMESCALE, 'relevant': RELEVANT,
      'flip_every': FLIP_EVERY, 'warmup': args.warmup,
      'tuning_seeds': args.tuning_seeds, 'test_seeds': args.test_seeds,
      'full_rank': args.full_rank, 'dtype': 'float64', 'blas_threads': 1,
      'recommended_timescales': list(_beliefs.RECOMMENDED_TIMESCALES),
      'goal': goal(rows),
      **({'skip': sorted(filter(None, args.skip.split(',')))}
         if args.skip else {})}
  document = harness.results_document(
      'per_weight_drift', config=config, rows=rows, seconds=seconds)
  log(f'\ntotal time {seconds:.1f} s; goal: {config["goal"]}')
  log(f'wrote {harness.write_results(stem, document)} and '
      f'{plot(document["rows"], config, stem)}')
  return document


if __name__ == '__main__':
  main()
