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
by side with Adam on the digits streams of ``online_digits.py``
(``benchmarks/_digits.py``), one example
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
library's default rule. The learners are ``harness.Learner`` entries run by
``harness.tune_and_evaluate``: Adam's learning rate is tuned on a separate
seed over ``ADAM_RATES`` (the best mean accuracy over the four streams on
that seed); the Bayesian learners have nothing to tune. The MLP is
``_digits.mlp_apply`` (64-64-10, ReLU). Issue goals: ``'sampled'`` within 1 point of ``'exact'`` on every
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
from benchmarks import _digits_learners
from benchmarks import harness

MODES = ('exact', 'sampled', 'empirical')
ADAM_RATES = (1e-3, 3e-3, 1e-2, 3e-2)
DRIFT_VARIANCE = 0.0215
TUNING_SEED = 100


def bayesian_optimizer() -> optax.GradientTransformationExtraArgs:
  """The fixed prior of the module docstring (batch of 1 example)."""
  return _digits_learners.bayesian(1)({'drift_variance': DRIFT_VARIANCE})


def learners() -> list[harness.Learner]:
  """Adam (learning rate tuned) and the three Fisher modes (nothing
  tuned); ``build`` gives the transformation, ``fixed['fisher']`` the
  observation (``None``: Adam's gradient of the cross-entropy)."""
  return [
      harness.Learner('adam', 'adam', lambda point: optax.adam(
          point['learning_rate']), grid={'learning_rate': ADAM_RATES},
                      fixed={'fisher': None},
                      note='optax.adam, learning rate tuned'),
      *(harness.Learner(mode, mode, lambda point: bayesian_optimizer(),
                        fixed={'fisher': mode},
                        note=f'bayesian_multiscale, fisher={mode!r}, the '
                             'fixed prior')
        for mode in MODES)]


def make_run(optimizer: optax.GradientTransformation, fisher: str | None,
             steps: int, data):
  """A jitted ``(init_key, noise_key, indices, tasks, permutations, angles)
  -> correct`` for one stream: online correctness per example, learning
  with ``optimizer`` from the gradient (``fisher=None``) or the categorical
  observation with that ``fisher``."""
  (train_images, train_labels), _ = data
  train_images = jnp.asarray(train_images)
  train_labels = jnp.asarray(train_labels)
  apply_fn = _digits.mlp_apply

  def learn(params, opt_state, image, label, key):
    if fisher is None:
      def loss(params):
        logits = apply_fn(params, image)
        return optax.softmax_cross_entropy_with_integer_labels(
            logits, label).sum(), logits
      (_, logits), grads = jax.value_and_grad(loss, has_aux=True)(params)
      updates, opt_state = optimizer.update(grads, opt_state, params)
    else:
      info, grads, extra = mso.categorical_observation(
          apply_fn, params, image, label, fisher=fisher,
          key=key if fisher == 'sampled' else None)
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


def tune_and_evaluate(steps: int, data, test_seeds, log,
                      ) -> tuple[list[dict], dict]:
  """Every learner's row (``harness.tune_and_evaluate``: Adam tuned by the
  mean online accuracy over the streams on ``TUNING_SEED``, each row the
  online accuracy per stream on the test seeds) and its compiled run."""
  num_train = len(data[0][1])
  runs = {}

  def make(learner, point):
    runs[learner.id] = make_run(learner.build(point), point['fisher'],
                                steps, data)
    return runs[learner.id]

  def score(learner, points, seeds):
    return np.asarray([[np.mean([
        accuracy(make(learner, point), kind, seed, steps, num_train)
        for kind in _digits.STREAMS]) for seed in seeds] for point in points])

  def evaluate(learner, point, seeds):
    run, fields = make(learner, point), {}
    for kind in _digits.STREAMS:
      values = [accuracy(run, kind, seed, steps, num_train) for seed in seeds]
      fields[f'online_accuracy_{kind}'] = {
          'mean': float(np.mean(values)), 'sd': float(np.std(values)),
          'values': values}
      log(f'{learner.id:10s} {kind:11s} online accuracy '
          f'{100 * np.mean(values):.1f} ± {100 * np.std(values):.1f}')
    return fields

  return harness.tune_and_evaluate(
      learners(), score, tuning_seeds=[TUNING_SEED], test_seeds=test_seeds,
      metric=f'online_accuracy_{_digits.STREAMS[0]}', lower_is_better=False,
      log=log,
      evaluate=evaluate), runs


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


def _points_behind_exact(rows: dict[str, dict]) -> None:
  """Adds to the ``sampled`` row, next to each stream's accuracy, how many
  points it is behind ``exact`` there."""
  sampled = rows['sampled']
  rows['sampled'] = {}
  for key, value in sampled.items():
    rows['sampled'][key] = value
    if key.startswith('online_accuracy_'):
      kind = key[len('online_accuracy_'):]
      rows['sampled'][f'points_behind_exact_{kind}'] = 100 * (
          rows['exact'][key]['mean'] - value['mean'])


def main(argv=None) -> int:
  parser = harness.parser(__doc__)
  parser.add_argument('--steps', type=int, default=1500)
  parser.add_argument('--test-seeds', type=int, default=3)
  parser.add_argument('--rounds', type=int, default=5)
  args = parser.parse_args(argv)
  if args.plot_only:
    parser.error('fisher_observations draws no figure (its rows are a table)')
  started = time.perf_counter()
  data = _digits.load_data()
  rows_list, runs = tune_and_evaluate(args.steps, data,
                                      range(args.test_seeds), print)
  rows = {row['id']: row for row in rows_list}
  _points_behind_exact(rows)
  seconds = step_times(runs, args.steps, len(data[0][1]), args.rounds)
  for name in runs:
    rows[name]['seconds_per_step'] = seconds[name]
    rows[name]['ratio_to_adam'] = seconds[name] / seconds['adam']
    print(f'{name:10s} {1e3 * seconds[name]:.3f} ms per step, '
          f'{seconds[name] / seconds["adam"]:.2f} x Adam')
  adam_rate = rows['adam']['hyperparameters']['learning_rate']
  document = harness.results_document(
      'fisher_observations', rows=list(rows.values()),
      seconds=time.perf_counter() - started,
      config={'steps': args.steps, 'test_seeds': args.test_seeds,
              'tuning_seed': TUNING_SEED, 'batch': 1, 'model': 'mlp',
              'streams': list(_digits.STREAMS), 'rounds': args.rounds,
              'adam_rates': list(ADAM_RATES), 'adam_rate': adam_rate,
              'drift_variance': DRIFT_VARIANCE})
  path = harness.write_results(args.out or 'fisher_observations', document)
  print(f'wrote {path} in {document["seconds"]:.0f} s')
  return 0


if __name__ == '__main__':
  sys.exit(main())
