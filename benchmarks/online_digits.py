r"""Online learning on real data: scikit-learn's digits under task shifts.

A small MLP and a small CNN see scikit-learn's bundled ``load_digits``
images (8x8, 10 classes; shipped in the wheel, no download) one mini-batch
per step. Each batch is predicted *before* the model trains on it; online
accuracy is the accuracy of these predictions. In three streams tasks are
fixed label permutations, so features are shared and old knowledge becomes
useful again when a task recurs; the fourth drifts gradually:

* ``recurring``: two tasks alternate in blocks of ``block`` steps
  (the situation of Figure 1 of Jones, NeurIPS 2022, on real data);
* ``one_over_f``: three tasks; segment durations follow a power law
  (density :math:`\propto d^{-2}` from 8 steps to the stream length), a
  renewal process with a 1/f spectrum, so shifts happen at every timescale
  and each task recurs after gaps of every length;
* ``stationary``: one task, i.i.d. batches (the control);
* ``rotation``: one task, every batch rotated (bilinear interpolation, in
  JAX) by an angle that drifts as 1/f noise: a sum of 7 AR(1) processes with
  log-spaced timescales from 1 to 1000 steps and equal variances, total sd
  45 degrees (gradual drift). The held-out images are rotated by the
  current angle.

Optimizers: SGD, SGD + momentum, Adam, Adam with ``b1 = 0``,
``optax.contrib.ademamix``, multiscale-Adam (``optax.chain(
optax.scale_by_adam(), multiscale(...))`` with log-spaced timescales), fast
weights on Adam directions, multiscale and fast weights on raw gradients
(eq. 1 of the paper as it states it), and the Benna–Fusi synapse when
``multiscale_optax.benna_fusi`` exists. Every one gets the same tuning
budget: the same number of learning rates, chosen per stream by online
accuracy on separate tuning seeds (``harness.tune`` over the runs of one
compilation); the chosen rate is then reported on evaluation seeds (mean ±
sd, ddof 0).

Bayesian learners (when ``multiscale_optax.bayesian_multiscale`` exists),
with ``multiscale_optax.categorical_observation`` (softmax EKF / GGN form),
observing a batch one example at a time, their prior stated per example:

* ``vd_ekf``: the single-timescale diagonal EKF, one random-walk subweight
  (initial variance 2/64, the He-initialisation variance of the hidden
  layer); its process variance is tuned per stream like a learning rate;
* ``bayesian_multiscale``: a permanent part (initial variance 2/64) plus 7
  AR(1) subweights with timescales 1..1000 steps and equal stationary
  variances. ONE prior for all streams: the grid is the total drift
  variance, and a single grid point is chosen on the tuning seeds by the
  mean tuning accuracy over all four streams;
* ``bayesian_multiscale_sampled`` and ``bayesian_multiscale_empirical``:
  the same prior and grid with ``fisher='sampled'`` (BONG's step: the
  information from one label drawn from the model per example, the mean
  moved along the observed label's gradient; 2 rows per example) and
  ``fisher='empirical'`` (the observed label's gradient as the one row)
  instead of the 10 exact rows;
* ``bayesian_multiscale_learned``: the same prior family started at a fixed
  drift variance, its scale learned online (``learn_prior=True``); no
  tuning;
* ``bayesian_multiscale_fit``: the same prior, its scale chosen for each
  run by ``multiscale_optax.fit_prior`` (the online log-loss) on the run's
  first ``FIT_WARMUP`` steps, then fixed from the first step;
* ``--full`` only (an update at rank 10 costs hundreds of gradient steps
  here): ``bayesian_multiscale_learned_rank10`` and
  ``bayesian_multiscale_fit_rank10``, the two above with ``rank=10``.

They cost about 30 times a gradient step here (10 Jacobian rows per
example, one example at a time), so the default runs them on the MLP only,
with 1 tuning seed, 3 evaluation seeds and 4 grid points (the gradient
rows: 2, 5 and 6); paired differences use the seeds both rows share.
``--full`` runs them on both models with the full seeds and 10 grid points.

Every (optimizer, model) pair is one ``jax.jit`` compilation: streams, seeds
and learning rates are ``jax.vmap`` axes, steps a ``jax.lax.scan``.

Usage::

  python -m benchmarks.online_digits          # default grid
  python -m benchmarks.online_digits --full   # the whole grid
  python -m benchmarks.online_digits --families \
      bayesian_multiscale,bayesian_multiscale_sampled   # some rows only
  python -m benchmarks.online_digits --steps 100      # a quick check
  python -m benchmarks.online_digits --plot-only      # redraw the figure

Writes ``benchmarks/results/online_digits.json`` and ``.png`` (other runs:
a stem named after their options, or ``--out``). One row per (model,
stream, learner), id ``<model>/<stream>/<learner>``: the chosen rate, the
tuning scores, each metric as mean, sd and per-seed values, and the
online-accuracy curve in bins of a tenth of a block.

References:
  Jones, `Learning at Multiple Timescales
  <https://arxiv.org/abs/2211.10311>`_, NeurIPS 2022.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

import multiscale_optax as mso
from benchmarks import _digits
from benchmarks import harness
from benchmarks._digits import MODELS
from benchmarks._digits import STREAMS


@dataclasses.dataclass(frozen=True)
class Config:
  steps: int
  batch: int
  block: int  # recurring block length; also the held-out evaluation period
  num_learning_rates: int
  tuning_seeds: tuple[int, ...]
  evaluation_seeds: tuple[int, ...]
  models: tuple[str, ...]
  ablations: bool
  # The Bayesian (EKF-style) learners cost ~30x a gradient step here (C = 10
  # Jacobian rows per example, one example at a time), so the default runs
  # them on fewer models, seeds and grid points (subsets of the above).
  bayesian_models: tuple[str, ...]
  bayesian_tuning_seeds: tuple[int, ...]
  bayesian_evaluation_seeds: tuple[int, ...]
  bayesian_num_grid: int
  # The rank-10 Bayesian rows (learned and fitted prior): at rank 10 an
  # update on this MLP costs hundreds of gradient steps, about an hour of
  # the default run's budget, so only --full runs them.
  bayesian_low_rank: bool = False


DEFAULT = Config(
    steps=1000, batch=16, block=100, num_learning_rates=6,
    tuning_seeds=(100, 101), evaluation_seeds=(0, 1, 2, 3, 4),
    models=('mlp', 'cnn'), ablations=False, bayesian_models=('mlp',),
    bayesian_tuning_seeds=(100,), bayesian_evaluation_seeds=(0, 1, 2),
    bayesian_num_grid=4)
FULL = Config(
    steps=3000, batch=16, block=100, num_learning_rates=10,
    tuning_seeds=(100, 101, 102), evaluation_seeds=tuple(range(10)),
    models=('mlp', 'cnn'), ablations=True, bayesian_models=('mlp', 'cnn'),
    bayesian_tuning_seeds=(100, 101, 102),
    bayesian_evaluation_seeds=tuple(range(10)), bayesian_num_grid=10,
    bayesian_low_rank=True)

# Timescales of multiscale-Adam: log-spaced from a few steps up to the
# length of a few recurring blocks, plus a permanent (decay 1) part.
MULTISCALE_TIMESCALES = (3.0, 1000.0)
MULTISCALE_NUM_DECAYING = 5

# The Bayesian learners' prior: the permanent part starts with the variance
# of the hidden layer's He initialisation (2 / fan-in); the decaying
# subweights span (first, last, number) log-spaced timescales in steps.
BAYES_PERMANENT_VARIANCE = 2.0 / 64
BAYES_TIMESCALES = (1.0, 1000.0, 7)
# Grid endpoints (per example): the random walk's process variance of the
# diagonal EKF, and the total drift variance of the multiscale prior; the
# learned-prior row starts from one fixed drift variance.
VD_EKF_PROCESS_VARIANCES = (1e-6, 1e-3)
BAYES_DRIFT_VARIANCES = (1e-3, 1e-1)
BAYES_LEARNED_START = 1e-2
# fit_prior on the first FIT_WARMUP steps of a run (each example one
# observation, as the learner sees them), over the scales FIT_SCALES of the
# prior started at BAYES_LEARNED_START.
FIT_WARMUP = 20
FIT_SCALES = tuple(float(c) for c in np.logspace(-2.0, 2.0, 9))


# ---------------------------------------------------------------------------
# Optimizers: each maps a (traced) learning rate to a transformation.


@dataclasses.dataclass(frozen=True)
class Family:
  name: str
  build: Callable[[jax.Array], optax.GradientTransformation]
  learning_rates: tuple[float, float]  # log-spaced grid endpoints
  note: str
  # 'gradient': update(grads of the mean cross-entropy); 'categorical':
  # update(grads, **extra) from mso.categorical_observation (the Bayesian
  # learners), the grid then scales their prior instead of a rate.
  observation: str = 'gradient'
  # True: one grid point for every stream (the best mean tuning accuracy
  # over all streams) instead of one per stream.
  shared_choice: bool = False
  # The categorical observation's `fisher` ('exact', 'sampled' or
  # 'empirical'; mso.categorical_observation).
  fisher: str = 'exact'
  # True: no tuning; the grid value of each evaluation run (the scale of
  # the prior) is chosen by mso.fit_prior on the run's first FIT_WARMUP
  # steps (log-loss).
  fit_prior: bool = False
  # The Bayesian learner's rank (read by fit_prior).
  rank: int = 0


def _multiscale_adam(
    shortest=MULTISCALE_TIMESCALES[0], longest=MULTISCALE_TIMESCALES[1],
    num=MULTISCALE_NUM_DECAYING, slow_share=None, adam_first=True, b1=0.9):
  """Adam directions split over a permanent part and ``num`` decaying
  subweights with log-spaced timescales; equal rates unless ``slow_share``
  gives the permanent part's share of the total rate."""
  decays = np.concatenate(
      [[1.0], mso.decays_from_timescales(
          mso.log_spaced_timescales(shortest, longest, num))])
  if slow_share is None:
    shape = np.full(num + 1, 1.0 / (num + 1))
  else:
    shape = np.concatenate(
        [[slow_share], np.full(num, (1.0 - slow_share) / num)])

  def build(learning_rate):
    rates = learning_rate * jnp.asarray(shape, jnp.float32)
    if adam_first:
      return optax.chain(
          optax.scale_by_adam(b1=b1), mso.multiscale(rates, decays))
    # Multiscale on raw gradients (its output is already a descent
    # increment), then Adam normalising the increments.
    return optax.chain(
        mso.multiscale(rates / learning_rate, decays),
        optax.scale_by_adam(), optax.scale(learning_rate))
  return build


def _multiscale_sgd(
    shortest=MULTISCALE_TIMESCALES[0], longest=MULTISCALE_TIMESCALES[1],
    num=MULTISCALE_NUM_DECAYING):
  """Eq. 1 of the paper on raw gradients (as the paper states it): the same
  subweights and equal rates as ``_multiscale_adam``, no preconditioner."""
  decays = np.concatenate(
      [[1.0], mso.decays_from_timescales(
          mso.log_spaced_timescales(shortest, longest, num))])
  shape = np.full(num + 1, 1.0 / (num + 1))

  def build(learning_rate):
    return mso.multiscale(
        learning_rate * jnp.asarray(shape, jnp.float32), decays)
  return build


def _fast_weights(fast_share=0.75, fast_timescale=20.0, adam=True):
  fast_decay = float(mso.decays_from_timescales([fast_timescale])[0])

  def build(learning_rate):
    rates = learning_rate * jnp.asarray(
        [1.0 - fast_share, fast_share], jnp.float32)
    fast_weights = mso.multiscale(rates, [1.0, fast_decay])
    if adam:
      return optax.chain(optax.scale_by_adam(), fast_weights)
    return fast_weights
  return build


def _prior_arrays(batch, drift_variance, permanent_process_variance=0.0,
                  timescales=True):
  """Decays (NumPy) and process and initial variances (traced or not) of
  the prior of :func:`_bayesian`."""
  decays = np.concatenate([[1.0], np.exp(-1.0 / (
      np.geomspace(*BAYES_TIMESCALES) * batch))]) if timescales else np.ones(1)
  count = max(len(decays) - 1, 1)
  drift = drift_variance / count if timescales else 0.0
  process = jnp.concatenate([
      jnp.reshape(permanent_process_variance, (1,)),
      drift * (1.0 - jnp.asarray(decays[1:]) ** 2)])
  initial = jnp.concatenate([
      jnp.full((1,), BAYES_PERMANENT_VARIANCE),
      drift * jnp.ones(len(decays) - 1)])
  return decays, process, initial


def bayesian_prior(batch: int, drift_variance: float) -> mso.AR1Prior:
  """The prior of :func:`_bayesian` with ``tuned='prior_scale'`` at scale
  1: what ``fit_prior`` scales."""
  decays, process, initial = _prior_arrays(batch, drift_variance)
  return mso.AR1Prior(tuple(decays.tolist()),
                      tuple(np.asarray(process).tolist()),
                      tuple(np.asarray(initial).tolist()))


def _bayesian(batch, tuned='drift_variance', timescales=True,
              drift_variance=None, learn_prior=False, rank=None):
  """``bayesian_multiscale`` for the categorical observation, prior stated
  per example: a permanent part (decay 1, no process noise, initial
  variance ``BAYES_PERMANENT_VARIANCE``) plus, if ``timescales``, AR(1)
  subweights with ``BAYES_TIMESCALES`` (in steps of ``batch`` examples) and
  equal stationary variances summing to the drift variance. The grid value
  is the drift variance (``tuned='drift_variance'``), the permanent
  part's process variance per example (``'permanent_process_variance'``,
  which makes it a random walk: with no timescales, the single-timescale
  diagonal EKF), or a factor on every process and initial variance
  (``'prior_scale'``, the scale ``fit_prior`` chooses)."""

  def build(hyper):
    values = {'drift_variance': drift_variance,
              'permanent_process_variance': 0.0, 'prior_scale': 1.0,
              tuned: hyper}
    decays, process, initial = _prior_arrays(
        batch, values['drift_variance'],
        values['permanent_process_variance'], timescales)
    scale = values['prior_scale']
    # The diagonal rule these rows were measured with (the library's
    # default then), so that the committed results reproduce.
    return mso.bayesian_multiscale(
        decays, scale * process, 1.0, initial_variances=scale * initial,
        learn_prior=learn_prior, rank=rank,
        variance_update=None if rank else 'moment_matching')
  return build


def families(config: Config) -> list[Family]:
  adam_range = (3e-4, 1e-1)
  sgd_range = (1e-2, 1.0)
  # Decaying subweights forget, so the total rate may sit higher than SGD's.
  multiscale_sgd_range = (3e-2, 3.0)
  result = [
      Family('sgd', lambda lr: optax.sgd(lr), sgd_range, 'plain SGD'),
      Family('sgd_momentum', lambda lr: optax.sgd(lr, momentum=0.9),
             (3e-3, 3e-1), 'momentum 0.9'),
      Family('adam', lambda lr: optax.adam(lr), adam_range, 'optax.adam'),
      Family('ademamix',
             lambda lr: optax.contrib.ademamix(lr, b3=0.999, alpha=5.0),
             adam_range,
             'optax.contrib.ademamix, b3=0.999 (timescale 1000), alpha=5'),
      Family('multiscale_adam', _multiscale_adam(), adam_range,
             'scale_by_adam -> multiscale; permanent part + timescales '
             f'{MULTISCALE_TIMESCALES[0]:g}..{MULTISCALE_TIMESCALES[1]:g} '
             f'({MULTISCALE_NUM_DECAYING} log-spaced), equal rates'),
      Family('fast_weights_adam', _fast_weights(), adam_range,
             'scale_by_adam -> fast weights: 1/4 of the rate permanent, '
             '3/4 fast with timescale 20'),
      Family('adam_b1_0', lambda lr: optax.adam(lr, b1=0.0), adam_range,
             'Adam without momentum (b1=0)'),
      Family('multiscale_sgd', _multiscale_sgd(), multiscale_sgd_range,
             'multiscale on raw gradients (eq. 1): permanent part + '
             f'timescales {MULTISCALE_TIMESCALES[0]:g}..'
             f'{MULTISCALE_TIMESCALES[1]:g} ({MULTISCALE_NUM_DECAYING} '
             'log-spaced), equal rates'),
      Family('fast_weights_sgd', _fast_weights(adam=False),
             multiscale_sgd_range,
             'fast weights on raw gradients: 1/4 of the rate permanent, '
             '3/4 fast with timescale 20'),
  ]
  timescales = (f'{BAYES_TIMESCALES[0]:g}..{BAYES_TIMESCALES[1]:g} steps '
                f'({BAYES_TIMESCALES[2]} log-spaced)')
  result += [
      Family('vd_ekf', _bayesian(
          config.batch, tuned='permanent_process_variance',
          timescales=False), VD_EKF_PROCESS_VARIANCES,
             'single-timescale diagonal EKF: bayesian_multiscale with one '
             'random-walk subweight (initial variance 2/64), grid: its '
             'process variance per example; categorical observation, one '
             'example at a time', observation='categorical'),
      Family('bayesian_multiscale', _bayesian(config.batch),
             BAYES_DRIFT_VARIANCES,
             'bayesian_multiscale, one prior for all streams: permanent '
             f'part (initial variance 2/64) + timescales {timescales}, '
             'equal variances; grid: total drift variance, ONE value '
             'chosen for all streams on the tuning seeds',
             observation='categorical', shared_choice=True),
      *(Family(f'bayesian_multiscale_{fisher}', _bayesian(config.batch),
               BAYES_DRIFT_VARIANCES,
               f'bayesian_multiscale as above, fisher={fisher!r} '
               'observation (' + note + '); grid as above',
               observation='categorical', shared_choice=True, fisher=fisher)
        for fisher, note in (
            ('sampled', "BONG's step: one drawn label's gradient per "
             'example sets the information, the observed gradient moves '
             'the mean'),
            ('empirical', 'the observed gradient as the one row'))),
      Family('bayesian_multiscale_learned', _bayesian(
          config.batch, learn_prior=True), (BAYES_LEARNED_START,) * 2,
             'the same prior family, no tuning: total drift variance '
             f'{BAYES_LEARNED_START:g} at the start, its scale learned '
             'online (learn_prior=True)', observation='categorical'),
      *([Family('bayesian_multiscale_learned_rank10', _bayesian(
          config.batch, learn_prior=True, rank=10),
                (BAYES_LEARNED_START,) * 2,
                'as bayesian_multiscale_learned, rank 10',
                observation='categorical')]
        if config.bayesian_low_rank else []),
      *(Family(f'bayesian_multiscale_fit{suffix}', _bayesian(
          config.batch, tuned='prior_scale',
          drift_variance=BAYES_LEARNED_START, rank=rank or None),
               (1.0, 1.0),
               f'the prior of bayesian_multiscale_learned{suffix}, fixed, '
               'its scale chosen per run by fit_prior (log-loss) on the '
               f'first {FIT_WARMUP} steps ({len(FIT_SCALES)} scales '
               f'{FIT_SCALES[0]:g}..{FIT_SCALES[-1]:g})',
               observation='categorical', fit_prior=True, rank=rank)
        for rank, suffix in ((0, ''), (10, '_rank10'))
        if config.bayesian_low_rank or not rank),
  ]
  result.append(Family(
      'benna_fusi_adam', _benna_fusi_adam(), adam_range,
      'scale_by_adam -> multiscale_optax.benna_fusi, '
      'benna_fusi_defaults(6) chain'))
  if config.ablations:
    result += [
        Family('ms_adam_slow_half', _multiscale_adam(slow_share=0.5),
               adam_range, 'ablation: permanent part gets half the rate'),
        Family('ms_adam_tau_3_100', _multiscale_adam(longest=100.0),
               adam_range, 'ablation: timescales 3..100'),
        Family('ms_adam_tau_30_3000',
               _multiscale_adam(shortest=30.0, longest=3000.0), adam_range,
               'ablation: timescales 30..3000'),
        Family('ms_before_adam', _multiscale_adam(adam_first=False),
               adam_range, 'ablation: multiscale on gradients, then Adam'),
        Family('ms_adam_b1_0', _multiscale_adam(b1=0.0), adam_range,
               'ablation: multiscale_adam on Adam without momentum (b1=0)'),
    ]
  return result


def _benna_fusi_adam(num_variables=6):
  capacities, conductances = mso.benna_fusi_defaults(num_variables)

  def build(learning_rate):
    return optax.chain(
        optax.scale_by_adam(),
        mso.benna_fusi(capacities, conductances, learning_rate=learning_rate))
  return build


# ---------------------------------------------------------------------------
# Training: one compilation per (optimizer, model).


def make_runner(family: Family, model: str, config: Config, data):
  init_fn, apply_fn, inputs_fn = MODELS[model]
  (train_images, train_labels), (test_images, test_labels) = data
  # Raw images: each batch is rotated by its step's angle (0 except in the
  # rotation stream, where bilinear rotation by 0 is exactly the identity),
  # then turned into model inputs.
  train_images = jnp.asarray(train_images)
  train_labels = jnp.asarray(train_labels)
  test_images = jnp.asarray(test_images)
  test_labels = jnp.asarray(test_labels)
  num_chunks = config.steps // config.block

  def loss_fn(params, images, labels):
    logits = apply_fn(params, images)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return jnp.mean(loss), logits

  def train_on_batch(optimizer, params, opt_state, images, labels, key):
    """Logits of the batch at the current params, and the params and state
    after learning from it."""
    if family.observation == 'gradient':
      (_, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(
          params, images, labels)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return logits, optax.apply_updates(params, updates), opt_state

    # The Bayesian learners observe the batch's examples one at a time (a
    # scan): S is then C x C per example instead of BC x BC for a joint
    # update (B^2 = 256 times cheaper), and their prior is stated per
    # example (timescales in examples).
    def observe(carry, example):
      params, opt_state = carry
      image, label = example
      # A fresh key per example: the learner counts the examples it saw.
      _, grads, extra = mso.categorical_observation(
          apply_fn, params, image[None], label[None], fisher=family.fisher,
          key=jax.random.fold_in(key, opt_state.count)
          if family.fisher == 'sampled' else None)
      updates, opt_state = optimizer.update(
          grads, opt_state, params, **extra)
      return (optax.apply_updates(params, updates), opt_state), None

    logits = apply_fn(params, images)
    (params, opt_state), _ = jax.lax.scan(
        observe, (params, opt_state), (images, labels))
    return logits, params, opt_state

  def single(learning_rate, init_key, indices, tasks, permutations, angles):
    optimizer = family.build(learning_rate)
    params = init_fn(init_key)
    carry = (params, optimizer.init(params))
    # Draws of fisher='sampled' (other learners draw nothing).
    noise_key = jax.random.fold_in(init_key, 7)

    def step(carry, inputs):
      params, opt_state = carry
      batch_indices, task, angle = inputs
      images = inputs_fn(_digits.rotate_images(train_images[batch_indices], angle))
      labels = permutations[task][train_labels[batch_indices]]
      logits, params, opt_state = train_on_batch(
          optimizer, params, opt_state, images, labels, noise_key)
      # Accuracy of the prediction made before training on this batch.
      correct = jnp.mean(jnp.argmax(logits, -1) == labels)
      return (params, opt_state), correct

    def chunk(carry, inputs):
      carry, correct = jax.lax.scan(step, carry, inputs)
      # Held-out images seen as the stream sees them at the chunk's end.
      images = inputs_fn(_digits.rotate_images(test_images, inputs[2][-1]))
      predictions = jnp.argmax(apply_fn(carry[0], images), -1)
      held_out = jnp.mean(
          predictions[None, :] == permutations[:, test_labels], axis=1)
      return carry, (correct, held_out)

    chunked = (
        indices.reshape(num_chunks, config.block, -1),
        tasks.reshape(num_chunks, config.block),
        angles.reshape(num_chunks, config.block))
    _, (correct, held_out) = jax.lax.scan(chunk, carry, chunked)
    return correct.reshape(-1), held_out

  # One flat axis of (learning rate, seed, stream) instances.
  return jax.jit(jax.vmap(single))


# ---------------------------------------------------------------------------
# Metrics (NumPy, per run).


def _segments(tasks):
  """Start indices of task segments after the first, and their lengths."""
  switches = np.flatnonzero(np.diff(tasks)) + 1
  bounds = np.concatenate([switches, [len(tasks)]])
  return switches, np.diff(bounds)


def switch_metrics(correct, tasks, after=5, before=20, window=10,
                   tolerance=0.05):
  """Accuracy right after each switch (first ``after`` steps), and steps
  until the ``window``-step mean accuracy is within ``tolerance`` of the
  mean accuracy over the last ``before`` steps of the previous segment
  (censored at the segment length). Only switches into segments of at least
  ``window`` steps with at least ``before`` steps before them count."""
  switches, lengths = _segments(tasks)
  after_accuracy, recovery = [], []
  previous_start = 0
  for start, length in zip(switches, lengths, strict=True):
    previous_length = start - previous_start
    previous_start = start
    if length < window or previous_length < before:
      continue
    reference = correct[start - before:start].mean()
    after_accuracy.append(correct[start:start + after].mean())
    smoothed = np.convolve(
        correct[start:start + length], np.ones(window) / window, 'valid')
    recovered = np.flatnonzero(smoothed >= reference - tolerance)
    recovery.append(recovered[0] if len(recovered) else length)
  if not after_accuracy:
    return np.nan, np.nan
  return float(np.mean(after_accuracy)), float(np.mean(recovery))


def retention(held_out, tasks, block):
  """Held-out accuracy on the most recent *other* task, at the end of each
  evaluation period (``held_out``: periods x tasks)."""
  values = []
  for period in range(held_out.shape[0]):
    end = (period + 1) * block
    current = tasks[end - 1]
    earlier = tasks[:end][tasks[:end] != current]
    if len(earlier):
      values.append(held_out[period, earlier[-1]])
  return float(np.mean(values)) if values else np.nan


def run_metrics(correct, held_out, tasks, block):
  after, recovery = switch_metrics(correct, tasks)
  return {
      'online_accuracy': float(correct.mean()),
      'accuracy_after_switch': after,
      'steps_to_recover': recovery,
      'retention': retention(held_out, tasks, block),
      'final_held_out_current_task': float(held_out[-1, tasks[-1]]),
  }


# ---------------------------------------------------------------------------
# Driver.


def _summary(values):
  values = np.asarray(values, np.float64)
  if np.all(np.isnan(values)):
    return None
  return {'mean': float(np.nanmean(values)), 'sd': float(np.nanstd(values))}


class _Streams:
  """Every (stream kind, seed) run as stacked arrays."""

  def __init__(self, config: Config, num_train: int):
    seeds = config.tuning_seeds + config.evaluation_seeds
    self.runs = [(kind, seed) for kind in STREAMS for seed in seeds]
    streams = [_digits.make_stream(
        kind, seed, steps=config.steps, batch=config.batch,
        block=config.block, num_train=num_train)
               for kind, seed in self.runs]
    self.indices = np.stack([stream[0] for stream in streams])
    self.tasks = np.stack([stream[1] for stream in streams])
    self.permutations = np.stack([stream[2] for stream in streams])
    self.angles = np.stack([stream[3] for stream in streams])

  def rows(self, kind, seeds):
    return [self.runs.index((kind, seed)) for seed in seeds]


def _run_instances(runner, instances, streams, width):
  """Runs (learning rate, stream row) pairs, padded to ``width`` so that
  tuning and evaluation share one compilation."""
  padded = instances + [instances[-1]] * (width - len(instances))
  rates = jnp.asarray([rate for rate, _ in padded], jnp.float32)
  rows = np.asarray([row for _, row in padded])
  # The same initial params for every stream and learning rate of a seed.
  keys = jax.vmap(jax.random.key)(
      jnp.asarray([streams.runs[row][1] for row in rows]))
  correct, held_out = jax.block_until_ready(runner(
      rates, keys, jnp.asarray(streams.indices[rows]),
      jnp.asarray(streams.tasks[rows]),
      jnp.asarray(streams.permutations[rows]),
      jnp.asarray(streams.angles[rows])))
  count = len(instances)
  return np.asarray(correct)[:count], np.asarray(held_out)[:count]


def _tune(family, learning_rates, tuning, correct, streams, tuning_seeds):
  """The chosen rate's index per stream (``harness.tune`` over the tuning
  runs already made: a point's score on a seed is that run's online
  accuracy; a shared choice scores a seed by its mean over the streams),
  and the mean tuning accuracy per rate and stream (non-finite: -1)."""
  accuracy = {(kind, seed, float(rate)): correct[i].mean()
              for i, (rate, row) in enumerate(tuning)
              for kind, seed in [streams.runs[row]]}
  learner = harness.Learner(
      family.name, family.name, build=family.build,
      grid={'index': list(range(len(learning_rates)))})

  def score(kinds):
    def on(learner, points, seeds):
      del learner
      return np.asarray([[np.mean([
          accuracy[kind, seed, float(learning_rates[point['index']])]
          for kind in kinds]) for seed in seeds] for point in points])
    return on

  scores, best = {}, {}
  for kind in STREAMS:
    point, _ = harness.tune(learner, score([kind]), tuning_seeds,
                            lower_is_better=False)
    per_rate = np.asarray([np.mean([accuracy[kind, seed, float(rate)]
                                    for seed in tuning_seeds])
                           for rate in learning_rates])
    scores[kind] = np.where(np.isfinite(per_rate), per_rate, -1.0)
    best[kind] = point['index']
  if family.shared_choice:
    point, _ = harness.tune(learner, score(STREAMS), tuning_seeds,
                            lower_is_better=False)
    best = dict.fromkeys(STREAMS, point['index'])
  return best, scores


@functools.cache
def _example_observer(model: str) -> Callable:
  """``observe(params, (image, label))`` for ``fit_prior``: one example as
  the Bayesian learners see it (the same function for every call, so that
  ``fit_prior`` compiles once per model)."""
  _, apply_fn, inputs_fn = MODELS[model]

  def observe(params, example):
    image, label = example
    return mso.categorical_observation(
        apply_fn, params, inputs_fn(image[None]), label[None])
  return observe


def _fitted_scale(family: Family, model: str, config: Config, data,
                  streams: _Streams, row: int) -> float:
  """``mso.fit_prior`` (log-loss) on the first ``FIT_WARMUP`` steps of run
  ``row``, each example one observation: the chosen prior scale."""
  init_fn = MODELS[model][0]
  (train_images, train_labels), _ = data
  steps = slice(0, FIT_WARMUP)
  indices = streams.indices[row][steps].reshape(-1)
  tasks = np.repeat(streams.tasks[row][steps], config.batch)
  angles = np.repeat(streams.angles[row][steps], config.batch)
  images = jax.vmap(_digits.rotate_images)(
      jnp.asarray(train_images[indices])[:, None], jnp.asarray(angles))[:, 0]
  labels = streams.permutations[row][tasks, train_labels[indices]]
  params = init_fn(jax.random.key(streams.runs[row][1]))
  fit = mso.fit_prior(
      _example_observer(model), params, (images, jnp.asarray(labels)),
      bayesian_prior(config.batch, BAYES_LEARNED_START), 1.0,
      rank=family.rank, scales=FIT_SCALES, score='log_loss')
  return fit.process_scale


def benchmark(config: Config, log=print, names=None):
  """Tunes and evaluates every learner (or those named in ``names``)."""
  data = _digits.load_data()
  streams = _Streams(config, len(data[0][1]))
  all_families = families(config)
  if names is not None:
    unknown = set(names) - {family.name for family in all_families}
    if unknown:
      raise ValueError(f'unknown learners {sorted(unknown)}')
    all_families = [f for f in all_families if f.name in names]
  results = {}
  started = time.perf_counter()
  runs = [(model, family) for model in config.models
          for family in all_families
          if family.observation == 'gradient'
          or model in config.bayesian_models]
  for done, (model, family) in enumerate(runs, 1):
    bayesian = family.observation != 'gradient'
    tuning_seeds, evaluation_seeds, num_rates = (
        (config.bayesian_tuning_seeds, config.bayesian_evaluation_seeds,
         config.bayesian_num_grid) if bayesian else
        (config.tuning_seeds, config.evaluation_seeds,
         config.num_learning_rates))
    low, high = family.learning_rates
    num_rates = 1 if low == high else num_rates
    width = max(len(STREAMS) * len(tuning_seeds) * num_rates,
                len(STREAMS) * len(evaluation_seeds))
    tic = time.perf_counter()
    learning_rates = np.geomspace(low, high, num_rates)
    runner = make_runner(family, model, config, data)
    # Tuning: every learning rate on the tuning seeds.
    tuning = [(rate, row) for kind in STREAMS
              for row in streams.rows(kind, tuning_seeds)
              for rate in learning_rates]
    if family.fit_prior:
      best = dict.fromkeys(STREAMS, 0)
      scores = dict.fromkeys(STREAMS, np.zeros(1))
      evaluation = [(scale, row) for kind in STREAMS
                    for row in streams.rows(kind, evaluation_seeds)
                    for scale in [_fitted_scale(family, model, config, data,
                                                streams, row)]]
    else:
      correct, _ = _run_instances(runner, tuning, streams, width)
      best, scores = _tune(family, learning_rates, tuning, correct, streams,
                           tuning_seeds)
      # Evaluation: the chosen rate on the evaluation seeds.
      evaluation = [(learning_rates[best[kind]], row) for kind in STREAMS
                    for row in streams.rows(kind, evaluation_seeds)]
    correct, held_out = _run_instances(runner, evaluation, streams, width)
    log(f'[{done}/{len(runs)}] {model:3s} {family.name:18s} '
        f'{time.perf_counter() - tic:5.1f} s (compile, tune, evaluate), '
        f'{time.perf_counter() - started:6.1f} s total', flush=True)
    for kind in STREAMS:
      positions = [i for i, (_, row) in enumerate(evaluation)
                   if streams.runs[row][0] == kind]
      per_seed = [
          run_metrics(correct[i], held_out[i],
                      streams.tasks[evaluation[i][1]], config.block)
          for i in positions]
      entry = {
          **({'fitted_scale': [float(evaluation[i][0]) for i in positions]}
             if family.fit_prior else {}),
          'learning_rate': float(learning_rates[best[kind]]),
          'learning_rate_at_grid_edge': num_rates > 1 and best[kind] in (
              0, num_rates - 1),
          'learning_rate_grid': learning_rates.tolist(),
          'tuning_online_accuracy_per_rate': scores[kind].tolist(),
          'note': family.note,
          'tuning_seeds': list(tuning_seeds),
          'evaluation_seeds': list(evaluation_seeds),
          'per_seed': per_seed,
          'curve': correct[positions].mean(axis=0).tolist(),
      }
      for metric in per_seed[0]:
        entry[metric] = _summary([m[metric] for m in per_seed])
      results.setdefault(model, {}).setdefault(kind, {})[family.name] = (
          entry)
  return results, time.perf_counter() - started


def _format(summary, scale=100.0, digits=1):
  if summary is None:
    return '—'
  return (f'{summary["mean"] * scale:.{digits}f} ± '
          f'{summary["sd"] * scale:.{digits}f}')


def table(results) -> str:
  header = (
      '| model | stream | optimizer | lr | online acc % | acc after '
      'switch % | steps to recover | retention % |\n'
      '|---|---|---|---|---|---|---|---|')
  lines = [header]
  for model, by_stream in results.items():
    for kind, by_family in by_stream.items():
      for name, entry in by_family.items():
        edge = '*' if entry['learning_rate_at_grid_edge'] else ''
        lines.append(
            f'| {model} | {kind} | {name} | {entry["learning_rate"]:.2g}'
            f'{edge} | {_format(entry["online_accuracy"])} | '
            f'{_format(entry["accuracy_after_switch"])} | '
            f'{_format(entry["steps_to_recover"], 1.0)} | '
            f'{_format(entry["retention"])} |')
  return '\n'.join(lines)


# Each learner's natural baseline (what it adds something to).
NATURAL_BASELINE = {
    'multiscale_sgd': 'sgd', 'fast_weights_sgd': 'sgd',
    'ms_adam_b1_0': 'adam_b1_0', 'vd_ekf': 'sgd',
    'bayesian_multiscale': 'sgd', 'bayesian_multiscale_learned': 'sgd',
    'bayesian_multiscale_fit': 'sgd',
    'bayesian_multiscale_learned_rank10': 'bayesian_multiscale_learned',
    'bayesian_multiscale_fit_rank10': 'bayesian_multiscale_fit',
    'bayesian_multiscale_sampled': 'bayesian_multiscale',
    'bayesian_multiscale_empirical': 'bayesian_multiscale',
}
# Rows that are not baselines for "the best baseline" (the Bayesian learners).
BAYESIAN_FAMILIES = ('vd_ekf', 'bayesian_multiscale',
                     'bayesian_multiscale_sampled',
                     'bayesian_multiscale_empirical',
                     'bayesian_multiscale_learned',
                     'bayesian_multiscale_learned_rank10',
                     'bayesian_multiscale_fit',
                     'bayesian_multiscale_fit_rank10')


def _paired(by_family, name, baseline):
  """Per-seed differences in online accuracy (points), same seeds."""
  first, second = by_family[name], by_family[baseline]
  common = [seed for seed in first['evaluation_seeds']
            if seed in second['evaluation_seeds']]
  return 100 * np.array([
      first['per_seed'][first['evaluation_seeds'].index(seed)][
          'online_accuracy']
      - second['per_seed'][second['evaluation_seeds'].index(seed)][
          'online_accuracy']
      for seed in common])


def _verdict_line(model, kind, name, baseline, diffs):
  error = diffs.std(ddof=1) / np.sqrt(len(diffs))
  verdict = ('win' if diffs.mean() > 2 * error
             else 'lose' if diffs.mean() < -2 * error else 'tie')
  return (f'{model:3s} {kind:10s} {name:>27s} - {baseline:17s}: '
          f'{diffs.mean():+6.2f} ± {diffs.std(ddof=1):5.2f} points '
          f'(paired sd, {len(diffs)} seeds) -> {verdict}')


def best_baseline(by_family) -> str:
  """The non-Bayesian row with the highest mean online accuracy."""
  candidates = [name for name in by_family if name not in BAYESIAN_FAMILIES]
  return max(candidates,
             key=lambda name: by_family[name]['online_accuracy']['mean'])


def comparison(results) -> str:
  """Paired (same evaluation seeds) differences in online accuracy: every
  learner against its natural baseline (tuned Adam for the Adam-based ones,
  tuned SGD for those on raw gradients, momentum-free Adam for multiscale on
  it, tuned SGD for the diagonal EKF)."""
  lines = []
  for model, by_stream in results.items():
    for kind, by_family in by_stream.items():
      for name in by_family:
        baseline = NATURAL_BASELINE.get(name, 'adam')
        if name in ('adam', 'sgd', 'sgd_momentum') or (
            baseline not in by_family):
          continue
        lines.append(_verdict_line(
            model, kind, name, baseline, _paired(by_family, name, baseline)))
  return '\n'.join(lines)


def comparison_with_best(results) -> str:
  """Paired differences of every row against the best non-Bayesian row of
  its (model, stream)."""
  lines = []
  for model, by_stream in results.items():
    for kind, by_family in by_stream.items():
      if all(name in BAYESIAN_FAMILIES for name in by_family):
        continue  # a run of --families without a baseline
      best = best_baseline(by_family)
      for name in by_family:
        if name != best:
          lines.append(_verdict_line(
              model, kind, name, best, _paired(by_family, name, best)))
  return '\n'.join(lines)


# The figure's learners, with plain names; the tables on the docs page list
# every learner.
PLOT_FAMILIES = {
    'sgd': 'SGD',
    'adam': 'Adam',
    'adam_b1_0': 'Adam without momentum',
    'multiscale_adam': 'multiscale-Adam',
    'benna_fusi_adam': 'Benna–Fusi (Adam)',
    'vd_ekf': 'diagonal EKF, one timescale',
    'bayesian_multiscale': 'Bayesian multiscale',
}
PLOT_MODELS = {'mlp': 'MLP', 'cnn': 'CNN'}
PLOT_STREAMS = {'recurring': 'recurring tasks', 'one_over_f': '1/f drift'}


def plot(document, stem):
  """Draws the figure from ``document``, the results this script writes:
  one panel per (model, stream), two streams side by side at page width,
  the legend below the panels."""
  rows = {row['id']: row for row in document['rows']}
  config = document['config']
  models = [model for model in PLOT_MODELS
            if any(row['model'] == model for row in rows.values())]
  names = [name for name in PLOT_FAMILIES
           if any(row['learner'] == name for row in rows.values())]
  fig, axes = harness.figure(len(models), len(PLOT_STREAMS), width=7.5,
                             panel_height=3.3)
  # Every learner its own hue and marker. The tuned baselines are dashed and
  # thin, drawn under the library's learners (solid, thicker), so that the
  # recurring panels' dips stay legible.
  baseline = {'linestyle': '--', 'linewidth': 1.0, 'alpha': 0.85,
              'zorder': 2}
  ours = {'linestyle': '-', 'linewidth': 1.6, 'zorder': 3}
  known = {
      'sgd': {'color': '#000000', 'marker': 'o', **baseline},
      'adam': {'color': '#8C8C8C', 'marker': 's', **baseline},
      'adam_b1_0': {'color': '#56B4E9', 'marker': '^', **baseline},
      'vd_ekf': {'color': '#009E73', 'marker': 'v', **baseline},
      'multiscale_adam': {'color': '#D55E00', 'marker': 'D', **ours},
      'benna_fusi_adam': {'color': '#CC79A7', 'marker': 'P', **ours},
      'bayesian_multiscale': {'color': '#5E3C99', 'marker': 'X', **ours},
  }
  fallback = iter(harness.styles(len(names)))
  styles = {name: known.get(name) or {**next(fallback), **ours}
            for name in names}
  bin_steps = config['block'] // 10
  for row_index, model in enumerate(models):
    for col, kind in enumerate(PLOT_STREAMS):
      axis = axes[row_index, col]
      for name in names:
        entry = rows.get(f'{model}/{kind}/{name}')
        if entry is None:
          continue
        curve = 100 * np.asarray(entry[f'curve_mean_per_{bin_steps}_steps'])
        axis.plot(bin_steps * (np.arange(len(curve)) + 0.5), curve,
                  label=PLOT_FAMILIES[name],
                  markevery=max(len(curve) // 8, 1), markersize=4,
                  **styles[name])
      if kind == 'recurring':
        for boundary in range(config['block'], config['steps'],
                              config['block']):
          axis.axvline(boundary, color='0.88', linewidth=0.6, zorder=0)
      axis.set_title(f'{PLOT_MODELS[model]}, {PLOT_STREAMS[kind]}')
      axis.set_ylim(0, 100)
      axis.set_xlim(0, config['steps'])
      if row_index == len(models) - 1:
        axis.set_xlabel('step')
      if col == 0:
        axis.set_ylabel(f'online accuracy (%),\n{bin_steps}-step mean')
  legend = {}  # every learner drawn, whichever panel it is in
  for axis in axes.ravel():
    for handle, label in zip(*axis.get_legend_handles_labels()):
      legend.setdefault(label, handle)
  fig.legend(legend.values(), legend.keys(), loc='outside lower center',
             ncols=3, frameon=False, fontsize=9)
  return harness.save_figure(fig, stem)


def _binned(curve, bin_steps):
  """An online-accuracy curve averaged over bins of ``bin_steps`` steps
  (keeps the JSON small)."""
  return np.round(np.asarray(curve).reshape(-1, bin_steps).mean(axis=1),
                  4).tolist()


def comparisons(results) -> dict[str, list[str]]:
  """The config's two lists of paired differences."""
  return {
      'comparison_vs_natural_baseline': comparison(results).split('\n'),
      'comparison_vs_best_baseline': comparison_with_best(
          results).split('\n')}


def results_from_rows(rows):
  """What :func:`comparison` reads, rebuilt from saved rows: per model,
  stream and learner the evaluation seeds and each seed's accuracy."""
  results = {}
  for row in rows:
    results.setdefault(row['model'], {}).setdefault(row['stream'], {})[
        row['learner']] = {
            'online_accuracy': row['online_accuracy'],
            'evaluation_seeds': row['evaluation_seeds'],
            'per_seed': [{'online_accuracy': value}
                         for value in row['online_accuracy']['values']]}
  return results


def result_rows(results, bin_steps):
  """One row per (model, stream, learner), per-seed metrics folded into
  ``{mean, sd, values}`` (a metric that is undefined on every seed: null)."""
  rows = []
  for model, by_stream in results.items():
    for kind, by_family in by_stream.items():
      for name, entry in by_family.items():
        row = {'id': f'{model}/{kind}/{name}', 'label': name,
               'model': model, 'stream': kind, 'learner': name}
        per_seed = entry['per_seed']
        for key, value in entry.items():
          if key == 'curve':
            continue
          if key == 'per_seed':
            continue
          if key in per_seed[0] and value is not None:
            value = {**value, 'values': [m[key] for m in per_seed]}
          row[key] = value
        row[f'curve_mean_per_{bin_steps}_steps'] = _binned(
            entry['curve'], bin_steps)
        rows.append(row)
  return rows


def main(argv=None):
  parser = harness.parser(
      __doc__, full_help='longer streams, more seeds, finer grid, ablations')
  parser.add_argument('--ablations', action='store_true',
                      help='add the multiscale-Adam ablations to the default')
  parser.add_argument('--models', default=None,
                      help='comma-separated subset of mlp,cnn')
  parser.add_argument('--families', default=None,
                      help='comma-separated subset of the learners (e.g. '
                           'bayesian_multiscale_sampled); written to a JSON '
                           'named after them')
  parser.add_argument('--steps', type=int, default=None,
                      help='stream length (a multiple of the block, 100): a '
                           'quick check; written to a JSON named after it')
  args = parser.parse_args(argv)
  config = FULL if args.full else DEFAULT
  if args.ablations:
    config = dataclasses.replace(config, ablations=True)
  if args.models:
    config = dataclasses.replace(
        config, models=tuple(args.models.split(',')))
  if args.steps:
    config = dataclasses.replace(config, steps=args.steps)
  names = tuple(args.families.split(',')) if args.families else None
  suffix = ('_full' if args.full else '') + (
      '_ablations' if args.ablations and not args.full else '') + (
          '_' + '_'.join(config.models) if args.models else '') + (
              f'_steps{args.steps}' if args.steps else '') + (
                  '_' + '_'.join(names) if names else '')
  stem = args.out or f'online_digits{suffix}'
  if args.plot_only:
    document = harness.load_results(stem)
    document['config'].update(comparisons(results_from_rows(
        document['rows'])))
    print(f"rewrote the comparisons in {harness.write_results(stem, document)}")
    print(f'wrote {plot(document, stem)}')
    return None
  print(f'config: {config}', flush=True)
  results, seconds = benchmark(config, names=names)
  text = table(results)
  print(text)
  print()
  print('paired differences in online accuracy vs each learner\'s natural '
        'baseline (win/lose: |mean| > 2 standard errors):')
  print(comparison(results))
  print()
  print('paired differences in online accuracy vs the best non-Bayesian row '
        'of each (model, stream):')
  print(comparison_with_best(results))
  print(f'\ntotal {seconds:.1f} s')
  document = harness.results_document(
      'online_digits', seconds=seconds,
      rows=result_rows(results, config.block // 10),
      machine_other={'backend': jax.default_backend()},
      config={
          **dataclasses.asdict(config),
          'fit_warmup': FIT_WARMUP, 'fit_scales': list(FIT_SCALES),
          'metrics': {
              'online_accuracy': 'mean accuracy of each batch, predicted '
                                 'before training on it',
              'accuracy_after_switch': 'mean over the first 5 steps after '
                                       'a task switch',
              'steps_to_recover': '10-step mean accuracy back within 5 '
                                  'points of the last 20 steps before the '
                                  'switch (censored at the segment length)',
              'retention': 'held-out accuracy on the most recent other '
                           f'task, every {config.block} steps',
          },
          **comparisons(results),
      })
  path = harness.write_results(stem, document)
  print(f'wrote {path}')
  # (--families without a plotted learner draws no figure.)
  if any(row['learner'] in PLOT_FAMILIES for row in document['rows']):
    print(f'wrote {plot(document, stem)}')
  return document


if __name__ == '__main__':
  main()
