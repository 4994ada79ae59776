r"""Running the digits streams: configurations, compiled runs and metrics.

A library module for ``online_digits`` (it imports no script). Every
(learner, model) is one ``jax.jit`` compilation: streams, seeds and grid
values are one ``jax.vmap`` axis, steps a ``jax.lax.scan``. Each learner is
tuned and evaluated per stream by ``harness.tune_and_evaluate``; see
:class:`LearnerRuns` for how one compilation serves every stream.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import multiscale_optax as mso
from benchmarks import _digits
from benchmarks import _digits_learners as learners_lib
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


def is_bayesian(learner: harness.Learner) -> bool:
  """Whether ``learner`` observes examples through the categorical
  observation (the Bayesian learners)."""
  return learner.fixed.get('observation', 'gradient') != 'gradient'


def grid_name(learner: harness.Learner) -> str:
  """The one hyperparameter a run's lanes vary: the grid's, or the prior
  scale that ``fit_prior`` sets per run."""
  return next(iter(learner.grid), 'prior_scale')


# ---------------------------------------------------------------------------
# Training: one compilation per (learner, model).


def _gradient_step(optimizer, apply_fn, params, opt_state, images, labels):
  """Logits of the batch at ``params``; params and state after one step on
  the gradient of its mean cross-entropy."""

  def loss_fn(params):
    logits = apply_fn(params, images)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return jnp.mean(loss), logits

  (_, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  updates, opt_state = optimizer.update(grads, opt_state, params)
  return logits, optax.apply_updates(params, updates), opt_state


def _categorical_step(optimizer, apply_fn, fisher, params, opt_state, images,
                      labels, key):
  """The Bayesian learners observe the batch's examples one at a time (a
  scan): S is then C x C per example instead of BC x BC for a joint update
  (B^2 = 256 times cheaper), and their prior is stated per example."""

  def observe(carry, example):
    params, opt_state = carry
    image, label = example
    # A fresh key per example: the learner counts the examples it saw.
    _, grads, extra = mso.categorical_observation(
        apply_fn, params, image[None], label[None], fisher=fisher,
        key=jax.random.fold_in(key, opt_state.count)
        if fisher == 'sampled' else None)
    updates, opt_state = optimizer.update(grads, opt_state, params, **extra)
    return (optax.apply_updates(params, updates), opt_state), None

  logits = apply_fn(params, images)
  (params, opt_state), _ = jax.lax.scan(
      observe, (params, opt_state), (images, labels))
  return logits, params, opt_state


def make_runner(learner: harness.Learner, model: str, config: Config,
                data) -> Callable:
  """``runner(values, init_keys, indices, tasks, permutations, angles) ->
  (correct, held_out)``: one flat vmapped axis of (grid value, seed,
  stream) instances, ``values`` the lanes' :func:`grid_name` value."""
  init_fn, apply_fn, inputs_fn = MODELS[model]
  (train_images, train_labels), (test_images, test_labels) = data
  # Raw images: each batch is rotated by its step's angle (0 except in the
  # rotation stream, where bilinear rotation by 0 is exactly the identity),
  # then turned into model inputs.
  train_images, train_labels, test_images, test_labels = map(
      jnp.asarray, (train_images, train_labels, test_images, test_labels))
  num_chunks = config.steps // config.block
  name, fisher = grid_name(learner), learner.fixed.get('fisher', 'exact')

  def single(value, init_key, indices, tasks, permutations, angles):
    optimizer = learner.build({**learner.fixed, name: value})
    params = init_fn(init_key)
    # Draws of fisher='sampled' (other learners draw nothing).
    noise_key = jax.random.fold_in(init_key, 7)

    def step(carry, inputs):
      params, opt_state = carry
      batch_indices, task, angle = inputs
      images = inputs_fn(_digits.rotate_images(
          train_images[batch_indices], angle))
      labels = permutations[task][train_labels[batch_indices]]
      if is_bayesian(learner):
        logits, params, opt_state = _categorical_step(
            optimizer, apply_fn, fisher, params, opt_state, images, labels,
            noise_key)
      else:
        logits, params, opt_state = _gradient_step(
            optimizer, apply_fn, params, opt_state, images, labels)
      # Accuracy of the prediction made before training on this batch.
      return (params, opt_state), jnp.mean(jnp.argmax(logits, -1) == labels)

    def chunk(carry, inputs):
      carry, correct = jax.lax.scan(step, carry, inputs)
      # Held-out images seen as the stream sees them at the chunk's end.
      images = inputs_fn(_digits.rotate_images(test_images, inputs[2][-1]))
      predictions = jnp.argmax(apply_fn(carry[0], images), -1)
      held_out = jnp.mean(
          predictions[None, :] == permutations[:, test_labels], axis=1)
      return carry, (correct, held_out)

    chunked = (indices.reshape(num_chunks, config.block, -1),
               tasks.reshape(num_chunks, config.block),
               angles.reshape(num_chunks, config.block))
    _, (correct, held_out) = jax.lax.scan(
        chunk, (params, optimizer.init(params)), chunked)
    return correct.reshape(-1), held_out

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
  """The row's metrics of one run."""
  after, recovery = switch_metrics(correct, tasks)
  return {
      'online_accuracy': float(correct.mean()),
      'accuracy_after_switch': after,
      'steps_to_recover': recovery,
      'retention': retention(held_out, tasks, block),
      'final_held_out_current_task': float(held_out[-1, tasks[-1]]),
  }


def summary(values):
  """``{mean, sd (ddof 0), values}`` ignoring NaNs; ``None`` if all NaN."""
  array = np.asarray(values, np.float64)
  if np.all(np.isnan(array)):
    return None
  return {'mean': float(np.nanmean(array)), 'sd': float(np.nanstd(array)),
          'values': list(values)}


def binned(curve, bin_steps):
  """An online-accuracy curve averaged over bins of ``bin_steps`` steps
  (keeps the JSON small), in float64 (pass a list of Python floats)."""
  return np.round(np.asarray(curve).reshape(-1, bin_steps).mean(axis=1),
                  4).tolist()


# ---------------------------------------------------------------------------
# Streams and runs.


class Streams:
  """Every (stream kind, seed) run as stacked arrays."""

  def __init__(self, config: Config, num_train: int):
    # (The Bayesian learners' seeds are subsets of these.)
    seeds = config.tuning_seeds + config.evaluation_seeds
    self.runs = [(kind, seed) for kind in STREAMS for seed in seeds]
    streams = [_digits.make_stream(
        kind, seed, steps=config.steps, batch=config.batch,
        block=config.block, num_train=num_train) for kind, seed in self.runs]
    self.indices = np.stack([stream[0] for stream in streams])
    self.tasks = np.stack([stream[1] for stream in streams])
    self.permutations = np.stack([stream[2] for stream in streams])
    self.angles = np.stack([stream[3] for stream in streams])

  def rows(self, kind: str, seeds: Sequence[int]) -> list[int]:
    return [self.runs.index((kind, seed)) for seed in seeds]


def run_instances(runner, instances, streams: Streams, width: int):
  """Runs (grid value, stream row) pairs, padded to ``width`` so that
  tuning and evaluation share one compilation."""
  padded = instances + [instances[-1]] * (width - len(instances))
  values = jnp.asarray([value for value, _ in padded], jnp.float32)
  rows = np.asarray([row for _, row in padded])
  # The same initial params for every stream and grid value of a seed.
  keys = jax.vmap(jax.random.key)(
      jnp.asarray([streams.runs[row][1] for row in rows]))
  correct, held_out = jax.block_until_ready(runner(
      values, keys, jnp.asarray(streams.indices[rows]),
      jnp.asarray(streams.tasks[rows]),
      jnp.asarray(streams.permutations[rows]),
      jnp.asarray(streams.angles[rows])))
  count = len(instances)
  return np.asarray(correct)[:count], np.asarray(held_out)[:count]


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


def fitted_scale(learner: harness.Learner, model: str, config: Config, data,
                 streams: Streams, row: int) -> float:
  """``mso.fit_prior`` (log-loss) on the first ``FIT_WARMUP`` steps of run
  ``row``, each example one observation: the chosen prior scale."""
  init_fn = MODELS[model][0]
  (train_images, train_labels), _ = data
  steps = slice(0, learners_lib.FIT_WARMUP)
  indices = streams.indices[row][steps].reshape(-1)
  tasks = np.repeat(streams.tasks[row][steps], config.batch)
  angles = np.repeat(streams.angles[row][steps], config.batch)
  images = jax.vmap(_digits.rotate_images)(
      jnp.asarray(train_images[indices])[:, None], jnp.asarray(angles))[:, 0]
  labels = streams.permutations[row][tasks, train_labels[indices]]
  params = init_fn(jax.random.key(streams.runs[row][1]))
  fit = mso.fit_prior(
      _example_observer(model), params, (images, jnp.asarray(labels)),
      learners_lib.bayesian_prior(config.batch,
                                  learners_lib.BAYES_LEARNED_START), 1.0,
      rank=learner.fixed['rank'], scales=learners_lib.FIT_SCALES,
      score='log_loss')
  return fit.process_scale


class LearnerRuns:
  """One (learner, model) of the registry on every stream.

  Its :attr:`learners` are the per-stream rows' learners (id
  ``<model>/<stream>/<learner>``; with ``shared_choice`` the first stream's
  is scored by the mean over all streams and the others ``reuse`` its
  point), :meth:`score` and :meth:`evaluate` what
  ``harness.tune_and_evaluate`` calls. Every tuning run of every stream is
  made in one call of the one compilation, on the first :meth:`score`; the
  evaluation runs of every stream likewise, on the first :meth:`evaluate`
  (a call costs its padded width, so a call per stream would cost four
  times as much): it reads the other streams' choices with
  ``harness.choose`` on the same tuning scores, and each :meth:`evaluate`
  checks that its point is the one it ran.
  """

  def __init__(self, learner: harness.Learner, model: str, config: Config,
               data, streams: Streams):
    self.template, self.model, self.config = learner, model, config
    self.data, self.streams = data, streams
    bayesian = is_bayesian(learner)
    self.tuning_seeds = (config.bayesian_tuning_seeds if bayesian
                         else config.tuning_seeds)
    self.evaluation_seeds = (config.bayesian_evaluation_seeds if bayesian
                             else config.evaluation_seeds)
    self.name = grid_name(learner)
    self.values = list(learner.grid.get(self.name, [1.0]))
    self.width = max(
        len(STREAMS) * len(self.tuning_seeds) * len(self.values),
        len(STREAMS) * len(self.evaluation_seeds))
    self.runner = make_runner(learner, model, config, data)
    shared = learner.meta.get('shared_choice', False)
    first = f'{model}/{STREAMS[0]}/{learner.id}'
    self.learners = [dataclasses.replace(
        learner, id=f'{model}/{kind}/{learner.id}',
        meta={'model': model, 'stream': kind, 'learner': learner.id},
        reuse=first if shared and kind != STREAMS[0] else None)
                     for kind in STREAMS]
    self.scored_streams = {first: STREAMS} if shared else {}
    self._accuracy: dict[tuple[str, int, float], Any] | None = None
    self._evaluated: dict[str, dict[str, Any]] | None = None

  def _tuning_accuracy(self) -> dict[tuple[str, int, float], Any]:
    """(stream, seed, grid value) -> online accuracy of the tuning run."""
    if self._accuracy is None:
      tuning = [(value, row) for kind in STREAMS
                for row in self.streams.rows(kind, self.tuning_seeds)
                for value in self.values]
      correct, _ = run_instances(self.runner, tuning, self.streams,
                                 self.width)
      self._accuracy = {
          (*self.streams.runs[row], float(value)): correct[i].mean()
          for i, (value, row) in enumerate(tuning)}
    return self._accuracy

  def score(self, learner: harness.Learner, points, seeds) -> np.ndarray:
    """A point's score on a seed: the online accuracy of its tuning run,
    averaged over the learner's scored streams."""
    accuracy = self._tuning_accuracy()
    kinds = self.scored_streams.get(learner.id, [learner.meta['stream']])
    return np.asarray([[np.mean([
        accuracy[kind, seed, float(point[self.name])] for kind in kinds])
                        for seed in seeds] for point in points])

  def _choices(self) -> dict[str, dict[str, Any]]:
    """Each stream's chosen point, as ``harness.tune_and_evaluate``
    chooses it."""
    chosen: dict[str, dict[str, Any]] = {}
    for learner in self.learners:
      chosen[learner.id] = harness.choose(
          learner, self.score, self.tuning_seeds, chosen=chosen,
          lower_is_better=False)['hyperparameters']
    return {learner.meta['stream']: chosen[learner.id]
            for learner in self.learners}

  def _evaluate_all(self) -> dict[str, dict[str, Any]]:
    """Every stream's chosen point on the evaluation seeds, one call."""
    points = self._choices()
    fit = self.template.meta.get('fit_prior', False)
    evaluation = [
        (fitted_scale(self.template, self.model, self.config, self.data,
                      self.streams, row) if fit else points[kind][self.name],
         row) for kind in STREAMS
        for row in self.streams.rows(kind, self.evaluation_seeds)]
    correct, held_out = run_instances(self.runner, evaluation, self.streams,
                                      self.width)
    result = {}
    for kind in STREAMS:
      positions = [i for i, (_, row) in enumerate(evaluation)
                   if self.streams.runs[row][0] == kind]
      per_seed = [run_metrics(correct[i], held_out[i],
                              self.streams.tasks[evaluation[i][1]],
                              self.config.block) for i in positions]
      result[kind] = {
          'point': points[kind],
          **({'fitted_scale': [float(evaluation[i][0]) for i in positions]}
             if fit else {}),
          **self._tuning_fields(kind, points[kind]),
          **{metric: summary([m[metric] for m in per_seed])
             for metric in per_seed[0]},
          f'curve_mean_per_{self.config.block // 10}_steps': binned(
              correct[positions].mean(axis=0).tolist(),
              self.config.block // 10)}
    return result

  def _tuning_fields(self, kind: str, point: dict[str, Any]) -> dict:
    """The row's record of the grid and the tuning on stream ``kind``."""
    best, count = self.values.index(point[self.name]), len(self.values)
    if self.template.meta.get('fit_prior', False):
      per_value = np.zeros(1)
    else:
      accuracy = self._tuning_accuracy()
      per_value = np.asarray([np.mean([
          accuracy[kind, seed, float(value)] for seed in self.tuning_seeds])
                              for value in self.values])
    return {
        'learning_rate': float(self.values[best]),
        'learning_rate_at_grid_edge': count > 1 and best in (0, count - 1),
        'learning_rate_grid': list(self.values),
        'tuning_online_accuracy_per_rate': np.where(
            np.isfinite(per_value), per_value, -1.0).tolist(),
        'tuning_seeds': list(self.tuning_seeds),
        'evaluation_seeds': list(self.evaluation_seeds)}

  def evaluate(self, learner: harness.Learner, point, seeds) -> dict:
    """The row's fields of ``learner``'s stream (:meth:`_evaluate_all`)."""
    if self._evaluated is None:
      self._evaluated = self._evaluate_all()
    fields = dict(self._evaluated[learner.meta['stream']])
    if fields.pop('point') != point or list(seeds) != list(
        self.evaluation_seeds):
      raise RuntimeError(f'{learner.id}: evaluated at another point or on '
                         'other seeds than tune_and_evaluate asks for')
    return fields


def benchmark(config: Config, log: Callable[..., None] = print,
              names: Sequence[str] | None = None,
              ) -> tuple[list[dict[str, Any]], float]:
  """Tunes and evaluates every learner (or those named in ``names``) with
  ``harness.tune_and_evaluate``; the rows, in (model, stream, learner)
  order, and the seconds it took."""
  data = _digits.load_data()
  streams = Streams(config, len(data[0][1]))
  registry = learners_lib.learners(config)
  if names is not None:
    unknown = set(names) - {learner.id for learner in registry}
    if unknown:
      raise ValueError(f'unknown learners {sorted(unknown)}')
    registry = [learner for learner in registry if learner.id in names]
  runs = [(model, learner) for model in config.models for learner in registry
          if not is_bayesian(learner) or model in config.bayesian_models]
  rows, chosen, started = [], {}, time.perf_counter()
  for done, (model, learner) in enumerate(runs, 1):
    tic = time.perf_counter()
    learner_runs = LearnerRuns(learner, model, config, data, streams)
    rows += harness.tune_and_evaluate(
        learner_runs.learners, learner_runs.score,
        tuning_seeds=learner_runs.tuning_seeds,
        test_seeds=learner_runs.evaluation_seeds, metric='online_accuracy',
        lower_is_better=False, log=lambda line: None,
        evaluate=learner_runs.evaluate, chosen=chosen)
    log(f'[{done}/{len(runs)}] {model:3s} {learner.id:18s} '
        f'{time.perf_counter() - tic:5.1f} s (compile, tune, evaluate), '
        f'{time.perf_counter() - started:6.1f} s total', flush=True)
  order = {(model, kind): (config.models.index(model), STREAMS.index(kind))
           for model in config.models for kind in STREAMS}
  rows.sort(key=lambda row: order[row['model'], row['stream']])
  return rows, time.perf_counter() - started
