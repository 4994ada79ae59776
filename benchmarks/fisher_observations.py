r"""Bayesian learning at the cost of one backward pass: the Fisher modes.

``mso.categorical_observation(..., fisher=...)`` gives the Bayesian
multiscale learner one of three observations of a classifier's example:
``'exact'`` (the generalised Gauss-Newton EKF: one Jacobian row per class,
:math:`C` backward passes and a :math:`C \times C` solve), ``'sampled'``
(BONG's step: the gradient of :math:`\log p(\hat y)` for a label drawn
from the model's predictive sets the information, a row carrying the
observed label's gradient moves the mean; one extra backward pass, a
:math:`2 \times 2` solve) and ``'empirical'`` (one row, the observed
label's gradient). This benchmark runs the three side
by side with Adam on the digits streams of ``online_digits.py``, one example
per step (batch 1), the whole stream in one ``jax.lax.scan``, and reports

* online accuracy (the prediction for each example made before learning
  from it), mean ± sd over test seeds, on each stream (recurring tasks,
  1/f task switches, stationary, drifting rotation);
* the end-to-end step time (forward, backward(s), update) of each learner,
  median over rounds run round-robin in one process, and its ratio to
  Adam's.

The prior, fixed before the first run and the same for every stream and
mode: a permanent part (decay 1, initial variance 2/64) and 7 AR(1)
subweights with timescales log-spaced from 1 to 1000 examples and equal
stationary variances summing to 0.0215 (the one-prior drift variance that
``online_digits.py`` chose on its tuning seeds), the diagonal belief with the
library's default rule. Adam's learning rate is tuned on a separate seed
over ``ADAM_RATES`` (``harness.tune``: the best mean accuracy over the
four streams on that seed). The MLP is ``online_digits.mlp_apply`` (64-64-10,
ReLU). Issue goals: ``'sampled'`` within 1 point of ``'exact'`` on every
stream, at no more than 1.5 times Adam's end-to-end step time.

Usage::

  python -m benchmarks.fisher_observations          # 1500 steps, 3 seeds
  python -m benchmarks.fisher_observations --steps 100 --test-seeds 2 \
      --rounds 1 --out scratch                     # a quick check

Writes ``benchmarks/results/fisher_observations.json``: one row per learner
(``adam``, ``exact``, ``sampled``, ``empirical``) with
``online_accuracy_<stream>`` (mean, sd with ddof 0, per-seed values),
``seconds_per_step`` and ``ratio_to_adam``; the ``sampled`` row also has
``points_behind_exact_<stream>``.
"""

from __future__ import annotations

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import multiscale_optax as mso
from benchmarks import _digits
from benchmarks import harness
from benchmarks import online_digits as digits

MODES = ('exact', 'sampled', 'empirical')
ADAM_RATES = (1e-3, 3e-3, 1e-2, 3e-2)
DRIFT_VARIANCE = 0.0215
TUNING_SEED = 100


def bayesian_optimizer() -> optax.GradientTransformationExtraArgs:
  """The fixed prior of the module docstring (batch of 1 example)."""
  return digits._bayesian(1, drift_variance=DRIFT_VARIANCE)(DRIFT_VARIANCE)


def make_run(learner: str, steps: int, data, learning_rate: float = 0.0):
  """A jitted ``(init_key, noise_key, indices, tasks, permutations, angles)
  -> correct`` for one stream: online correctness per example."""
  (train_images, train_labels), _ = data
  train_images = jnp.asarray(train_images)
  train_labels = jnp.asarray(train_labels)
  apply_fn = _digits.mlp_apply
  if learner == 'adam':
    optimizer = optax.adam(learning_rate)
  else:
    optimizer = bayesian_optimizer()

  def learn(params, opt_state, image, label, key):
    if learner == 'adam':
      def loss(params):
        logits = apply_fn(params, image)
        return optax.softmax_cross_entropy_with_integer_labels(
            logits, label).sum(), logits
      (_, logits), grads = jax.value_and_grad(loss, has_aux=True)(params)
      updates, opt_state = optimizer.update(grads, opt_state, params)
    else:
      info, grads, extra = mso.categorical_observation(
          apply_fn, params, image, label, fisher=learner,
          key=key if learner == 'sampled' else None)
      logits = jnp.log(info.predictions)
      updates, opt_state = optimizer.update(grads, opt_state, params, **extra)
    return logits, optax.apply_updates(params, updates), opt_state

  def run(init_key, noise_key, indices, tasks, permutations, angles):
    params = _digits.mlp_init(init_key)

    def step(carry, inputs):
      params, opt_state = carry
      index, task, angle, key = inputs
      image = _digits.rotate_images(train_images[index], angle)
      label = permutations[task][train_labels[index]]
      logits, params, opt_state = learn(params, opt_state, image, label, key)
      return (params, opt_state), jnp.mean(jnp.argmax(logits, -1) == label)

    keys = jax.random.split(noise_key, steps)
    _, correct = jax.lax.scan(
        step, (params, optimizer.init(params)),
        (indices, tasks, angles, keys))
    return correct

  return jax.jit(run)


def stream_inputs(kind: str, seed: int, steps: int, num_train: int):
  indices, tasks, permutations, angles = _digits.make_stream(
      kind, seed, steps=steps, batch=1, block=100, num_train=num_train)
  return (jnp.asarray(indices), jnp.asarray(tasks),
          jnp.asarray(permutations), jnp.asarray(angles))


def accuracy(run, kind, seed, steps, num_train) -> float:
  correct = run(jax.random.key(seed), jax.random.key(seed + 7),
                *stream_inputs(kind, seed, steps, num_train))
  return float(jnp.mean(correct))


def tune_adam(steps, data, num_train, log) -> float:
  """Adam's learning rate: the best mean online accuracy over the streams
  on ``TUNING_SEED`` (``harness.tune``; ties: the first rate)."""

  def score(learner, points, seeds):
    del learner
    return np.asarray([[np.mean([
        accuracy(make_run('adam', steps, data, point['learning_rate']),
                 kind, seed, steps, num_train)
        for kind in _digits.STREAMS]) for seed in seeds] for point in points])

  best, scores = harness.tune(
      harness.Learner('adam', 'Adam', build=lambda point: point,
                      grid={'learning_rate': ADAM_RATES}),
      score, [TUNING_SEED], lower_is_better=False)
  for rate, value in zip(ADAM_RATES, scores.mean(axis=1), strict=True):
    log(f'  adam lr {rate:g}: tuning accuracy {value:.3f}')
  return best['learning_rate']


def step_times(runs, steps, num_train, rounds):
  """Median seconds per step of each run on one stream, round-robin."""
  inputs = stream_inputs('stationary', 0, steps, num_train)
  keys = (jax.random.key(0), jax.random.key(1))
  for run in runs.values():
    jax.block_until_ready(run(*keys, *inputs))
  times = {name: [] for name in runs}
  for _ in range(rounds):
    for name, run in runs.items():
      start = time.perf_counter()
      jax.block_until_ready(run(*keys, *inputs))
      times[name].append((time.perf_counter() - start) / steps)
  return {name: float(np.median(values)) for name, values in times.items()}


def main(argv=None) -> int:
  parser = harness.parser(__doc__)
  parser.add_argument('--steps', type=int, default=1500)
  parser.add_argument('--test-seeds', type=int, default=3)
  parser.add_argument('--rounds', type=int, default=5)
  args = parser.parse_args(argv)
  if args.plot_only:
    parser.error('fisher_observations draws no figure (its rows are a table)')
  stem = args.out or 'fisher_observations'
  started = time.perf_counter()
  data = _digits.load_data()
  num_train = len(data[0][1])
  adam_rate = tune_adam(args.steps, data, num_train, print)
  runs = {'adam': make_run('adam', args.steps, data, adam_rate)}
  runs.update({mode: make_run(mode, args.steps, data) for mode in MODES})
  rows = {}
  for name, run in runs.items():
    rows[name] = {'id': name, 'label': name}
    for kind in _digits.STREAMS:
      values = [accuracy(run, kind, seed, args.steps, num_train)
                for seed in range(args.test_seeds)]
      rows[name][f'online_accuracy_{kind}'] = {
          'mean': float(np.mean(values)), 'sd': float(np.std(values)),
          'values': values}
      print(f'{name:10s} {kind:11s} online accuracy '
            f'{100 * np.mean(values):.1f} ± {100 * np.std(values):.1f}')
  for kind in _digits.STREAMS:
    gap = (rows['exact'][f'online_accuracy_{kind}']['mean']
           - rows['sampled'][f'online_accuracy_{kind}']['mean'])
    # Next to the stream's accuracy, as in the committed file.
    sampled = rows['sampled']
    rows['sampled'] = {}
    for key, value in sampled.items():
      rows['sampled'][key] = value
      if key == f'online_accuracy_{kind}':
        rows['sampled'][f'points_behind_exact_{kind}'] = 100 * gap
  seconds = step_times(runs, args.steps, num_train, args.rounds)
  for name in runs:
    rows[name]['seconds_per_step'] = seconds[name]
    rows[name]['ratio_to_adam'] = seconds[name] / seconds['adam']
    print(f'{name:10s} {1e3 * seconds[name]:.3f} ms per step, '
          f'{seconds[name] / seconds["adam"]:.2f} x Adam')
  document = harness.results_document(
      'fisher_observations', rows=list(rows.values()),
      seconds=time.perf_counter() - started,
      config={'steps': args.steps, 'test_seeds': args.test_seeds,
              'tuning_seed': TUNING_SEED, 'batch': 1, 'model': 'mlp',
              'streams': list(_digits.STREAMS), 'rounds': args.rounds,
              'adam_rates': list(ADAM_RATES), 'adam_rate': adam_rate,
              'drift_variance': DRIFT_VARIANCE})
  path = harness.write_results(stem, document)
  print(f'wrote {path} in {document["seconds"]:.0f} s')
  return 0


if __name__ == '__main__':
  sys.exit(main())
