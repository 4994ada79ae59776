r"""Loss of plasticity on permuted digits: does a learner keep learning?

A scikit-learn-digits analogue of the permuted-MNIST protocol of Dohare et
al. (*Loss of plasticity in deep continual learning*, Nature 2024) and Kumar
et al. (*Maintaining plasticity in continual learning via regenerative
regularization*, the L2 Init paper). The 1797 8x8 digit images (scaled to
[0, 1]) are shown under a fixed random pixel permutation per task, a new
permutation for every task; each task presents ``examples`` images (distinct,
drawn at random from all 1797, in random order), one online pass, ``batch``
images per step. Every batch is predicted *before* the learner trains on it;
a task's accuracy is the accuracy of these predictions over its examples.
The network is never reset, so the question is whether task 200 is learned
as fast as task 1. A permutation destroys the spatial structure, so what
carries over between tasks is only how trainable the network still is.

Model: a ReLU MLP 64-100-100-10 (He initialisation, zero biases), its
parameters a list of one ``{'weights', 'bias'}`` dict per layer. (One flat
vector sliced into layers was 8x slower per SGD step on CPU: the backward
pass of every slice writes a full-length vector.)

Learners (each a :class:`harness.Learner`):

* ``sgd``, ``adam``: ``optax.sgd`` and ``optax.adam``, learning rate tuned;
* ``l2_init`` (Kumar et al.): Adam on the loss
  :math:`L(\theta) + \lambda\lVert\theta - \theta_0\rVert^2` (the
  regulariser's gradient goes through Adam as the loss's does), learning
  rate and :math:`\lambda` tuned;
* ``multiscale_l2_init`` (L2 Init's multiscale generalisation):
  ``mso.multiscale`` on raw gradients with the initial params as the
  permanent part, learning rate 0 (as in L2 Init, which under SGD is this
  with one decaying subweight, ``mso.from_l2_init``), plus the
  ``multiscale`` learner's 5 decaying subweights, equal rates
  :math:`\alpha_i = c/5`, the total rate :math:`c` tuned. Each subweight is
  pulled toward zero at its own rate, :math:`\lambda_i =
  (1-\gamma_i)/\alpha_i`, so the weights relax toward :math:`\theta_0`
  over several timescales;
* ``multiscale_l2_init_adam``: the same subweights after
  ``optax.scale_by_adam()``; the pull toward :math:`\theta_0` is then
  decoupled from Adam (as in AdamW), unlike ``l2_init``'s;
* ``shrink_perturb`` (Ash & Adams 2020, applied every step as in Dohare et
  al.): an SGD step, then :math:`\theta \leftarrow (1-\lambda)\theta +
  \sigma\varepsilon`. Here :math:`\sigma^2 = \lambda(2-\lambda)\,v_0` with
  :math:`v_0` each weight's He initialisation variance (0 for biases): without
  gradients each weight is then an AR(1) process whose stationary
  distribution is the initial one, so one number :math:`\lambda` sets both
  the shrink and the noise; learning rate and :math:`\lambda` tuned;
* ``multiscale``: ``mso.multiscale`` on raw gradients, a permanent part plus
  5 decaying subweights with log-spaced timescales 1..1e4 steps, equal rates
  :math:`\alpha_i = c/6`, the total rate :math:`c` tuned. (Rates
  :math:`\propto\tau_i^{-1/3}` learned each task far worse in a 30-task
  pilot: they put most of the rate into subweights that forget within a
  task of 300 steps, and a total rate high enough for the slow parts to
  learn made the fast parts unstable.)
* ``multiscale_adam``: the same subweights after ``optax.scale_by_adam()``;
* ``bayesian_multiscale``: ``mso.bayesian_multiscale`` observing each
  example through ``mso.categorical_observation`` (``fisher='exact'``, the
  EKF's Gauss-Newton form: 10 backward passes per example; the empirical
  Fisher, one pass, learned each task far worse in a pilot), with a prior
  fixed a priori (nothing tuned): a random-walk permanent part plus AR(1)
  subweights with timescales 1..1e4 steps, process variances
  :math:`q_i \propto 1/\tau_i` (the permanent part's that of the slowest),
  initial variances the stationary ones, scaled so that they sum to 2/64
  (the He variance of the first layer), as
  ``benchmarks/trump_approval.py``'s ``default_prior``. It runs on fewer
  test seeds (one step costs about as much as a hundred SGD steps).

Multiscale learning and L2 Init
-------------------------------
Both pull the weights back, but toward different anchors. Take one
permanent subweight :math:`\omega_0` and one fast subweight :math:`\omega_1`
with decay :math:`\gamma` and rate :math:`\alpha`, :math:`w = \omega_0 +
\omega_1`:

.. math::

  \omega_1 \leftarrow \gamma\,\omega_1 - \alpha\nabla L
  = \omega_1 - \alpha\Big(\nabla L + \tfrac{1-\gamma}{\alpha}\,\omega_1\Big),

which is a gradient step on :math:`L + \tfrac{1-\gamma}{2\alpha}
\omega_1^2 = L + \tfrac{1-\gamma}{2\alpha}\lVert w - \omega_0\rVert^2`: an
L2 pull of strength :math:`(1-\gamma)/\alpha` on the fast part, i.e. toward
the slow weight :math:`\omega_0`. L2 Init is the same penalty with the anchor
frozen at :math:`\theta_0` (:math:`\lambda\lVert\theta-\theta_0\rVert^2`).
With many decaying subweights every one relaxes toward zero at its own
rate, so the weight relaxes toward the slower parts, a regeneration toward a
*moving* anchor: the slow weight, which itself learns (at the small rate
:math:`\alpha_0`) what stays true across tasks, where L2 Init can only keep
what :math:`\theta_0` had. Neither bounds the slow weight: under the
multiscale learner it is plain SGD at rate :math:`\alpha_0`, so it could
still lose plasticity over a long enough stream; the decaying parts only
keep most of each task's change from accumulating in it. The Bayesian
learner adds process noise to every subweight, the permanent one included,
so its variances (its step sizes) never shrink to zero.

Tuning: every tuned learner's grid is scored by the mean online accuracy
over all tasks on the tuning seeds (``harness.tune``); the best point alone
is then run on the test seeds. The metrics per row (test seeds): accuracy
per task (mean over seeds), ``first10`` and ``last10`` (mean accuracy of the
first and last 10% of tasks), their ``ratio`` last10/first10 per seed, and
``mean_accuracy`` over all tasks. Every (learner, seed set) is one
``jax.jit`` of a ``jax.vmap`` (grid points x seeds) of a ``jax.lax.scan``
over tasks and steps.

Usage::

  python -m benchmarks.plasticity          # 200 tasks x 100 images
  python -m benchmarks.plasticity --only sgd adam --tasks 50
  python -m benchmarks.plasticity --full   # 400 tasks x 300 images

Writes ``benchmarks/results/plasticity.json`` and ``plasticity.png``
(``plasticity_full.*`` with ``--full``).

References:
  Dohare, Hernandez-Garcia, Lan, Rahman, Mahmood & Sutton, Loss of
  plasticity in deep continual learning, Nature 632, 2024.
  Kumar, Marklund & Van Roy, Maintaining plasticity in continual learning
  via regenerative regularization, CoLLAs 2024 (arXiv:2308.11958).
  Ash & Adams, On warm-starting neural network training, NeurIPS 2020.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits

import multiscale_optax as mso

from . import harness

NAME = 'plasticity'
NUM_PIXELS = 64
NUM_CLASSES = 10
HIDDEN = (100, 100)
# Timescales (steps) of the multiscale and Bayesian learners' decaying
# subweights: log-spaced, first, last, number.
TIMESCALES = (1.0, 1e4, 5)
# The Bayesian prior's total initial variance: the He variance 2/64 of the
# first layer.
BAYES_TOTAL_VARIANCE = 2.0 / NUM_PIXELS


@dataclasses.dataclass(frozen=True)
class Config:
  tasks: int
  examples: int  # per task
  batch: int
  tuning_seeds: tuple[int, ...]
  test_seeds: tuple[int, ...]
  # The Bayesian learner costs more per step; it may run on fewer seeds.
  bayesian_test_seeds: tuple[int, ...]


# The default run is a quick look (about 3 minutes on 2 cores); the
# evidence is the --full run: twice as many tasks, three times the examples
# per task, twice the tuning seeds.
DEFAULT = Config(tasks=200, examples=100, batch=1, tuning_seeds=(100,),
                 test_seeds=(0, 1, 2), bayesian_test_seeds=(0,))
FULL = Config(tasks=400, examples=300, batch=1, tuning_seeds=(100, 101),
              test_seeds=(0, 1, 2), bayesian_test_seeds=(0, 1))


# ---------------------------------------------------------------------------
# Data, model and streams.


def load_images() -> tuple[np.ndarray, np.ndarray]:
  """All 1797 digits, images flattened and scaled to [0, 1], labels."""
  digits = load_digits()
  return ((digits.data / 16.0).astype(np.float32),
          digits.target.astype(np.int32))


def make_stream(seed: int, tasks: int, examples: int,
                num_images: int) -> tuple[np.ndarray, np.ndarray]:
  """One seed's stream: a pixel permutation per task, ``(tasks, 64)``, and
  each task's image indices, ``(tasks, examples)`` (distinct within a task,
  in random order)."""
  rng = np.random.default_rng([seed, 19])
  permutations = np.stack([rng.permutation(NUM_PIXELS) for _ in range(tasks)])
  indices = np.stack([rng.choice(num_images, examples, replace=False)
                      for _ in range(tasks)])
  return permutations.astype(np.int32), indices.astype(np.int32)


LAYERS = tuple(zip((NUM_PIXELS, *HIDDEN), (*HIDDEN, NUM_CLASSES),
                   strict=True))
NUM_PARAMS = sum(i * o + o for i, o in LAYERS)


def init_variances() -> list[dict[str, np.ndarray]]:
  """Each parameter's initial variance, shaped as the params: 2/fan-in for
  weights, 0 for biases."""
  return [{'weights': np.full((fan_in, fan_out), 2.0 / fan_in, np.float32),
           'bias': np.zeros(fan_out, np.float32)}
          for fan_in, fan_out in LAYERS]


def mlp_init(key: jax.Array) -> list[dict[str, jax.Array]]:
  """He-initialised weights and zero biases, one dict per layer."""
  keys = jax.random.split(key, len(LAYERS))
  return [{'weights': jax.random.normal(layer_key, (fan_in, fan_out))
                      * np.sqrt(2.0 / fan_in),
           'bias': jnp.zeros(fan_out)}
          for layer_key, (fan_in, fan_out) in zip(keys, LAYERS, strict=True)]


def mlp_apply(params: list[dict[str, jax.Array]],
              images: jax.Array) -> jax.Array:
  """Logits ``(..., 10)`` of images ``(..., 64)``."""
  hidden = images
  for number, layer in enumerate(params):
    hidden = hidden @ layer['weights'] + layer['bias']
    if number < len(params) - 1:
      hidden = jax.nn.relu(hidden)
  return hidden


# ---------------------------------------------------------------------------
# Learners: harness.Learner entries whose ``build(point)`` gives the optax
# transformation; :func:`training` turns it and the point into the
# ``init(params) -> state`` and ``step(params, state, images, labels, key)
# -> (logits, params, state)`` a stream runs, the logits those of the params
# *before* the step. The point's ``observation`` (``'gradient'``, the
# default, or ``'categorical'``) and ``fisher`` say how a batch is observed;
# ``strength`` (L2 Init) and ``shrink`` (shrink and perturb) add to a
# gradient step. Numeric hyperparameters may be traced (they are vmapped
# over grid points).

TrainStep = tuple[Callable[[Any], Any], Callable[..., tuple[Any, Any, Any]]]


def _loss(params, images, labels):
  logits = mlp_apply(params, images)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return jnp.mean(loss), logits


def gradient_training(optimizer: optax.GradientTransformation, *,
                      l2_init: Any = None, shrink: Any = None) -> TrainStep:
  """An optax optimizer on the cross-entropy, optionally with L2 Init
  (:math:`\\lambda\\lVert\\theta-\\theta_0\\rVert^2` added to the loss) or
  shrink-and-perturb after every step."""
  noise_sd_unit = jax.tree.map(np.sqrt, init_variances())

  def init(params):
    return {'opt': optimizer.init(params), 'anchor': params}

  def step(params, state, images, labels, key):
    (_, logits), grads = jax.value_and_grad(_loss, has_aux=True)(
        params, images, labels)
    if l2_init is not None:
      grads = optax.tree.add_scale(
          grads, 2.0 * l2_init, optax.tree.sub(params, state['anchor']))
    updates, opt_state = optimizer.update(grads, state['opt'], params)
    params = optax.apply_updates(params, updates)
    if shrink is not None:
      scale = jnp.sqrt(shrink * (2.0 - shrink))
      noise = optax.tree.random_like(key, params)
      params = jax.tree.map(
          lambda param, unit, epsilon: (1.0 - shrink) * param
          + scale * unit * epsilon, params, noise_sd_unit, noise)
    return logits, params, {'opt': opt_state, 'anchor': state['anchor']}
  return init, step


def categorical_training(optimizer: optax.GradientTransformationExtraArgs,
                         fisher: str) -> TrainStep:
  """A Bayesian learner observing a batch one example at a time through
  ``mso.categorical_observation(..., fisher=fisher)``: the prior advances
  one step per example."""

  def step(params, state, images, labels, key):
    logits = mlp_apply(params, images)

    def observe(carry, example):
      params, state, key = carry
      image, label = example
      key, sample_key = jax.random.split(key)
      _, grads, extra = mso.categorical_observation(
          mlp_apply, params, image[None], label[None], fisher=fisher,
          key=sample_key)
      updates, state = optimizer.update(grads, state, params, **extra)
      return (optax.apply_updates(params, updates), state, key), None

    (params, state, _), _ = jax.lax.scan(
        observe, (params, state, key), (images, labels))
    return logits, params, state
  return optimizer.init, step


def training(optimizer: optax.GradientTransformation,
             point: dict[str, Any]) -> TrainStep:
  """How a learner built at ``point`` trains (the section's comment)."""
  if point.get('observation', 'gradient') == 'categorical':
    return categorical_training(optimizer, point['fisher'])
  return gradient_training(optimizer, l2_init=point.get('strength'),
                           shrink=point.get('shrink'))


def multiscale_shape() -> tuple[np.ndarray, np.ndarray]:
  """Decays and relative rates of the multiscale learners: a permanent part
  and ``TIMESCALES``, equal rates summing to 1 (so the tuned scale is the
  total rate, comparable with SGD's and Adam's learning rates)."""
  timescales = mso.log_spaced_timescales(*TIMESCALES)
  decays = np.concatenate([[1.0], mso.decays_from_timescales(timescales)])
  rates = np.full(len(decays), 1.0 / len(decays))
  return decays, rates


def anchored_multiscale_shape() -> tuple[np.ndarray, np.ndarray]:
  """Decays and relative rates of L2 Init's multiscale generalisation: the
  permanent part with rate 0 (so it stays the initial params, as in L2
  Init) and the ``TIMESCALES`` subweights, equal rates summing to 1."""
  decays, _ = multiscale_shape()
  decaying = len(decays) - 1
  rates = np.concatenate([[0.0], np.full(decaying, 1.0 / decaying)])
  return decays, rates


def multiscale_method(scale: Any, adam: bool,
                      anchored: bool = False) -> optax.GradientTransformation:
  """``mso.multiscale`` with the (anchored) subweights at total rate
  ``scale``, on raw gradients or after ``scale_by_adam``."""
  decays, rates = (anchored_multiscale_shape() if anchored
                   else multiscale_shape())
  learner = mso.multiscale(scale * jnp.asarray(rates, jnp.float32), decays)
  if adam:
    return optax.chain(optax.scale_by_adam(), learner)
  return learner


def bayesian_prior() -> mso.AR1Prior:
  """The Bayesian prior (module docstring): a permanent random walk first,
  then the AR(1) parts, process variances :math:`\\propto 1/\\tau_i`, the
  initial variances the stationary ones (the permanent part's that of the
  slowest AR(1) part), scaled to sum to ``BAYES_TOTAL_VARIANCE``."""
  timescales = mso.log_spaced_timescales(*TIMESCALES)
  ar_decays = np.exp(-1.0 / timescales)
  stationary = np.asarray(mso.AR1Prior(
      ar_decays, 1.0 / timescales).stationary_variances)
  process = np.concatenate([[1.0 / timescales[-1]], 1.0 / timescales])
  initial = np.concatenate([[stationary[-1]], stationary])
  scale = BAYES_TOTAL_VARIANCE / np.sum(initial)
  return mso.AR1Prior(np.concatenate([[1.0], ar_decays]), scale * process,
                      scale * initial)


def bayesian_optimizer() -> optax.GradientTransformationExtraArgs:
  """``mso.bayesian_multiscale`` (diagonal, default rule) with the prior of
  :func:`bayesian_prior`."""
  return mso.bayesian_multiscale(prior=bayesian_prior(), noise_variance=1.0)


def _gradient_learners(timescales: str) -> list[harness.Learner]:
  """SGD, Adam, L2 Init and shrink and perturb."""
  return [
      harness.Learner(
          'sgd', 'SGD', lambda h: optax.sgd(h['lr']),
          grid={'lr': harness.log_grid(3e-3, 1e-1, 4)},
          note='optax.sgd, learning rate tuned'),
      harness.Learner(
          'adam', 'Adam', lambda h: optax.adam(h['lr']),
          grid={'lr': harness.log_grid(1e-4, 3e-3, 4)},
          note='optax.adam, learning rate tuned'),
      harness.Learner(
          'l2_init', 'L2 Init (Adam)', lambda h: optax.adam(h['lr']),
          grid={'lr': harness.log_grid(3e-4, 1e-2, 4),
                'strength': harness.log_grid(1e-4, 1e-1, 4)},
          note='Adam on loss + strength * |theta - theta_0|^2 (Kumar et '
               'al.); learning rate and strength tuned'),
      harness.Learner(
          'multiscale_l2_init', 'multiscale L2 Init (SGD)',
          lambda h: multiscale_method(h['scale'], False, anchored=True),
          grid={'scale': harness.log_grid(1e-2, 1e-1, 4)},
          note=f'mso.multiscale on gradients: the initial params as a '
               f'permanent part with rate 0 + timescales {timescales}, '
               'equal rates summing to scale (with one subweight this is '
               'mso.from_l2_init); scale tuned',
          meta={'decays': multiscale_shape()[0],
                'relative_rates': anchored_multiscale_shape()[1]}),
      harness.Learner(
          'multiscale_l2_init_adam', 'multiscale L2 Init (Adam)',
          lambda h: multiscale_method(h['scale'], True, anchored=True),
          grid={'scale': harness.log_grid(1e-4, 1e-2, 5)},
          note='scale_by_adam -> mso.multiscale with the same anchored '
               'subweights (the pull toward the initial params is '
               'decoupled from Adam); scale tuned',
          meta={'decays': multiscale_shape()[0],
                'relative_rates': anchored_multiscale_shape()[1]}),
      harness.Learner(
          'shrink_perturb', 'shrink and perturb (SGD)',
          lambda h: optax.sgd(h['lr']),
          grid={'lr': harness.log_grid(1e-2, 1e-1, 3),
                'shrink': harness.log_grid(1e-5, 1e-3, 3)},
          note='SGD step, then theta <- (1 - shrink) theta + sigma eps every '
               'step, sigma^2 = shrink (2 - shrink) * He variance (so the '
               'weights relax to the initial distribution); learning rate '
               'and shrink tuned'),
  ]


def learners() -> list[harness.Learner]:
  """The registry (module docstring), in the order of the rows."""
  decays, rates = multiscale_shape()
  timescales = (f'{TIMESCALES[0]:g}..{TIMESCALES[1]:g} steps '
                f'({TIMESCALES[2]} log-spaced)')
  prior = bayesian_prior()
  return [
      *_gradient_learners(timescales),
      harness.Learner(
          'multiscale', 'multiscale (SGD)',
          lambda h: multiscale_method(h['scale'], False),
          grid={'scale': harness.log_grid(1e-2, 1e-1, 4)},
          note=f'mso.multiscale on gradients: permanent part + timescales '
               f'{timescales}, equal rates summing to scale (the total '
               'rate); scale tuned',
          meta={'decays': decays, 'relative_rates': rates}),
      harness.Learner(
          'multiscale_adam', 'multiscale (Adam)',
          lambda h: multiscale_method(h['scale'], True),
          grid={'scale': harness.log_grid(1e-4, 1e-2, 5)},
          note='scale_by_adam -> mso.multiscale with the same subweights; '
               'scale tuned',
          meta={'decays': decays, 'relative_rates': rates}),
      harness.Learner(
          'bayesian_multiscale', 'Bayesian multiscale',
          lambda h: bayesian_optimizer(),
          fixed={'observation': 'categorical', 'fisher': 'exact'},
          note='mso.bayesian_multiscale (diagonal, default variance rule) '
               "with categorical_observation(fisher='exact'), one "
               'example at a time; prior fixed a priori: random-walk '
               f'permanent part + timescales {timescales}, q_i ~ 1/tau_i, '
               'stationary initial variances summing to 2/64; nothing tuned',
          meta={'prior': {'decays': prior.decays,
                          'process_variances': prior.process_variances,
                          'initial_variances': prior.initial_variances}}),
  ]


# ---------------------------------------------------------------------------
# Running a stream.


def run_stream(train: TrainStep, key: jax.Array, images: jax.Array,
               labels: jax.Array, permutations: jax.Array,
               indices: jax.Array, batch: int) -> jax.Array:
  """Online accuracy per task, ``(tasks,)``, of one learner on one stream.

  ``indices`` is ``(tasks, examples)``; each task's examples are shown in
  batches of ``batch`` (``examples`` a multiple of it), each predicted
  before the learner steps on it.
  """
  init_key, key = jax.random.split(key)
  params = mlp_init(init_key)
  tasks, examples = indices.shape
  batches = indices.reshape(tasks, examples // batch, batch)

  def task(carry, inputs):
    permutation, task_batches = inputs

    def step(carry, batch_indices):
      params, state, key = carry
      key, step_key = jax.random.split(key)
      batch_images = images[batch_indices][:, permutation]
      batch_labels = labels[batch_indices]
      logits, params, state = train[1](
          params, state, batch_images, batch_labels, step_key)
      correct = jnp.sum(jnp.argmax(logits, -1) == batch_labels)
      return (params, state, key), correct

    carry, correct = jax.lax.scan(step, carry, task_batches)
    return carry, jnp.sum(correct) / examples

  carry = (params, train[0](params), key)
  _, accuracy = jax.lax.scan(task, carry, (permutations, batches))
  return accuracy


def run_learner(learner: harness.Learner, points: Sequence[dict[str, Any]],
                seeds: Sequence[int], config: Config) -> np.ndarray:
  """Accuracy per task, ``(points, seeds, tasks)``: one jit of a vmap over
  (point, seed) of :func:`run_stream`."""
  images, labels = load_images()
  streams = [make_stream(seed, config.tasks, config.examples, len(labels))
             for seed in seeds]
  permutations = np.stack([s[0] for s in streams] * len(points))
  indices = np.stack([s[1] for s in streams] * len(points))
  keys = jnp.stack([jax.random.key(seed) for seed in seeds] * len(points))
  # Numeric hyperparameters are vmapped; others (strings) must agree.
  names = sorted(points[0])
  numeric = [n for n in names if isinstance(points[0][n], (int, float))]
  static = {n: points[0][n] for n in names if n not in numeric}
  if any({n: p[n] for n in static} != static for p in points):
    raise ValueError('non-numeric hyperparameters must agree across points')
  hyper = {n: jnp.repeat(jnp.asarray([p[n] for p in points], jnp.float32),
                         len(seeds)) for n in numeric}
  images, labels = jnp.asarray(images), jnp.asarray(labels)

  def single(hyper, key, permutations, indices):
    point = {**static, **hyper}
    return run_stream(training(learner.build(point), point), key, images, labels, permutations, indices,
                      config.batch)

  accuracy = jax.jit(jax.vmap(single))(hyper, keys, jnp.asarray(permutations),
                                       jnp.asarray(indices))
  return np.asarray(accuracy).reshape(len(points), len(seeds), config.tasks)


# ---------------------------------------------------------------------------
# Metrics.


def edge_count(tasks: int) -> int:
  """How many tasks the first and last 10% hold (at least one)."""
  return max(1, round(0.1 * tasks))


def plasticity_metrics(accuracy: np.ndarray) -> dict[str, Any]:
  """Metrics of per-task accuracy ``(seeds, tasks)``: ``first10``,
  ``last10`` (mean over the first/last 10% of tasks), ``ratio``
  (last10/first10 per seed) and ``mean_accuracy`` (over all tasks), each a
  summary over seeds, and ``accuracy_per_task`` (mean over seeds)."""
  accuracy = np.asarray(accuracy, float)
  count = edge_count(accuracy.shape[-1])
  first = accuracy[:, :count].mean(axis=1)
  last = accuracy[:, -count:].mean(axis=1)
  return {'first10': harness.summary(first), 'last10': harness.summary(last),
          'ratio': harness.summary(last / first),
          'mean_accuracy': harness.summary(accuracy.mean(axis=1)),
          'accuracy_per_task': accuracy.mean(axis=0).tolist()}


# ---------------------------------------------------------------------------
# The benchmark.


def run(config: Config, only: Sequence[str] | None = None,
        log: Callable[[str], None] = print) -> list[dict[str, Any]]:
  """Tune and evaluate every learner (or those in ``only``); the rows."""
  curves: dict[tuple[str, tuple[int, ...]], np.ndarray] = {}

  def score(learner, points, seeds):
    accuracy = run_learner(learner, points, seeds, config)
    curves[learner.id, tuple(seeds)] = accuracy
    return accuracy.mean(axis=2)

  rows = []
  for learner in learners():
    if only and learner.id not in only:
      continue
    seeds = (config.bayesian_test_seeds if learner.id.startswith('bayes')
             else config.test_seeds)
    start = time.perf_counter()
    [row] = harness.tune_and_evaluate(
        [learner], score, tuning_seeds=config.tuning_seeds, test_seeds=seeds,
        metric='mean_accuracy', lower_is_better=False, log=log)
    row.update(plasticity_metrics(curves[learner.id, tuple(seeds)][0]))
    row['test_seeds'] = list(seeds)
    row['seconds'] = round(time.perf_counter() - start, 1)
    rows.append(row)
  return rows


def plot(document: dict[str, Any], stem: str) -> None:
  rows = document['rows']
  fig, axes = harness.figure(width=6.4, panel_height=4.0)
  ax = axes[0, 0]
  window = max(1, document['config']['tasks'] // 20)
  for row, style in zip(rows, harness.styles(len(rows)), strict=True):
    curve = harness.running_mean(np.asarray(row['accuracy_per_task']),
                                 window)
    ax.plot(np.arange(1, len(curve) + 1), 100 * curve, label=row['label'],
            color=style['color'], linestyle=style['linestyle'],
            marker=style['marker'], markevery=max(1, len(curve) // 8),
            markersize=4, linewidth=1.3)
  ax.set_xlabel('task')
  ax.set_ylabel(f'online accuracy (%), mean of {window} tasks')
  ax.set_title('Permuted digits: accuracy per task (test seeds)')
  fig.legend(*ax.get_legend_handles_labels(), loc='outside lower center',
             ncols=3, frameon=False)
  harness.save_figure(fig, stem)


def main(argv: Sequence[str] | None = None) -> None:
  parser = harness.parser(__doc__, full_help='400 tasks of 300 images, 2 tuning seeds')
  parser.add_argument('--only', nargs='*', default=None,
                      help='run only these learner ids')
  parser.add_argument('--tasks', type=int, default=None,
                      help='override the number of tasks')
  args = parser.parse_args(argv)
  stem = args.out or (f'{NAME}_full' if args.full else NAME)
  if args.plot_only:
    plot(harness.load_results(stem), stem)
    return
  config = FULL if args.full else DEFAULT
  if args.tasks is not None:
    config = dataclasses.replace(config, tasks=args.tasks)
  start = time.perf_counter()
  rows = run(config, args.only)
  config_record = {**dataclasses.asdict(config), 'hidden': HIDDEN,
                   'timescales': TIMESCALES, 'num_params': NUM_PARAMS,
                   'edge_tasks': edge_count(config.tasks),
                   'tuning_metric': 'mean online accuracy over all tasks'}
  document = harness.results_document(
      NAME, config=config_record, rows=rows,
      seconds=time.perf_counter() - start)
  path = harness.write_results(stem, document)
  plot(document, stem)
  print(f'wrote {path}')


if __name__ == '__main__':
  main()
