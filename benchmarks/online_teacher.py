r"""Online regression on a drifting teacher MLP, against a full-covariance EKF.

A teacher network (8→16→1 tanh, 161 weights) drifts: every weight is its
mean :math:`w_0` plus :math:`k = 6` AR(1) subweights with timescales
:math:`\tau_j = 4^j` (1 to 1024 steps) and equal stationary variances (a
:math:`1/f` spectrum, as ``mso.OneOverFEnvironment.from_timescales``); see
``benchmarks/_drifting_teacher.py``. Each step a student of the same
architecture sees :math:`x_t \sim \mathcal N(0, I_8)`, predicts
:math:`\hat y_t`, then sees :math:`y_t = f(x_t; w_t) + \mathcal N(0, r)`
and learns. All learners start from :math:`w_0` (the prior mean) and see the
same streams (paired seeds).

Reference: the extended Kalman filter on the joint subweight state
(:math:`kP = 966` dimensions, full covariance, :math:`O((kP)^2)` per step),
given the true prior. ``dynamax``'s EKF is not used: it forms the dynamics
Jacobian and :math:`F \Sigma F^\top` (:math:`O(n^3)` per step), where the
diagonal transition here needs only :math:`O(n^2)`.

Score: the online excess error :math:`\overline{(\hat y_t - f(x_t;
w_t))^2}` over all steps (the squared prediction error of :math:`y_t` is this
plus :math:`r` in expectation; it is reported too), and its ratio to the
EKF's, per seed, mean ± sd over test seeds. Paired differences against the
Bayesian multiscale learner (true prior) are reported per learner.

Learners:

* ``SGD`` (learning rate tuned), ``Adam`` (learning rate and
  :math:`\beta_1 \in \{0, 0.9\}` tuned);
* ``multiscale (fixed rates)``: eq. (1) on plain gradients, ``mso.multiscale``
  with the teacher's decays and rates :math:`\alpha_j \propto \tau_j^p`
  (scale and :math:`p` tuned);
* ``VD-EKF (1 timescale)``: ``mso.bayesian_multiscale`` with one subweight,
  a random walk (:math:`\gamma = 1`) with process variance :math:`q` tuned,
  starting from the prior's total variance :math:`k v`;
* ``LoFi (1 timescale, rank 10)``: the low-rank EKF of Chang et al. (2023),
  ``benchmarks/_lofi.py``: one random walk per weight (:math:`\gamma = 1`),
  a diagonal-plus-rank-10 precision, its process variance :math:`q` and
  initial variance tuned (equal rank to the rank-10 Bayesian row; its state,
  11 arrays per weight, is about that of the diagonal Bayesian learner);
* ``Bayesian multiscale (true prior)``: ``mso.bayesian_multiscale`` with the
  teacher's decays, process variances and noise variance, the library's
  default belief; no tuning;
* ``Bayesian multiscale (true prior, diagonal, ...)``: the same with each
  diagonal ``variance_update`` (moment matching, mean field, others as
  noise, weight marginal) named explicitly;
* ``Bayesian multiscale (true prior, rank L)``, :math:`L` = 1, 5, 10, 20:
  the covariance :math:`\mathrm{diag}(D) - UU^\top` over all :math:`kP`
  subweights (``rank=L``; :math:`L \ge kP` is the full EKF);
* ``Bayesian multiscale (prior scale tuned)``: the same with the process
  variances scaled by a factor tuned like the baselines' hyperparameters
  (the best prior for the diagonal approximation need not be the true one);
* ``Bayesian multiscale (learned prior, ×10 / ×0.1 start)``: the process
  variances (and initial variances) scaled by 10 or 0.1 and the prior's
  scale learned online (``learn_prior=True``, default step size); no tuning.
  The learned scale at the last step (relative to the truth) is reported;
* ``block-diagonal EKF``: a second reference between the diagonal learner
  and the full EKF, with a full :math:`k \times k` covariance per weight and
  none between weights (``_drifting_teacher.blockwise_ekf_predictions``): it
  separates what the diagonal learner loses by ignoring correlations
  between the subweights of one weight from what it loses between weights.

Tuning: grid search on separate tuning seeds, then a finer grid between the
best point's neighbours; a tuned value at the edge of its grid is flagged.

Each row of the JSON also gives the learner's ``kind`` (reference, tuned
baseline, Bayesian), its ``belief`` (timescales, rank, ``variance_update``)
and ``state_arrays_per_param``, the optimizer state's floats per weight
(from ``optimizer.init``; for the references, their covariance and means).

Usage::

  python -m benchmarks.online_teacher          # 3000 steps, 2 tuning + 6 test seeds
  python -m benchmarks.online_teacher --full   # 10000 steps, 3 + 12 seeds
  python -m benchmarks.online_teacher --layer-sizes 160 1   # linear control

Writes ``benchmarks/results/online_teacher.json`` and ``online_teacher.png``
(``online_teacher_full.*`` with ``--full``; another teacher adds its layer
sizes and variance to the name).

References:
  Jones, Scott, Ren, ElSayed, Hermann, Mayo & Mozer, "Learning in temporally
  structured environments", ICLR 2023 (the Bayesian multiscale learner);
  Jones, `Learning at Multiple Timescales
  <https://arxiv.org/abs/2211.10311>`_, NeurIPS 2022, eq. (1).
"""

from __future__ import annotations

import dataclasses
import functools
import time

import jax

jax.config.update('jax_enable_x64', True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import multiscale_optax as mso  # noqa: E402
from benchmarks import _beliefs  # noqa: E402
from benchmarks import _drifting_teacher as teacher  # noqa: E402
from benchmarks import _lofi  # noqa: E402
from benchmarks import harness  # noqa: E402

EKF_NAME = 'full EKF (reference)'
BAYES_NAME = 'Bayesian multiscale (true prior)'
BLOCK_NAME = 'block-diagonal EKF (k x k per weight, true prior)'


def log(message: str) -> None:
  print(message, flush=True)


def sample_batch(config, seeds, num_steps):
  keys = jax.vmap(jax.random.key)(jnp.asarray(seeds))
  return jax.vmap(
      lambda key: teacher.sample_stream(config, key, num_steps))(keys)


def excess_errors(predictions, streams):
  """Per seed (and grid point): mean of (yhat - f(x; w_t))^2."""
  return jnp.mean(jnp.square(predictions - streams.outputs), axis=-1)


def second_half_excess_errors(predictions, streams):
  """Per seed: the excess error over the second half of the stream."""
  half = predictions.shape[-1] // 2
  return jnp.mean(jnp.square(
      predictions[..., half:] - streams.outputs[..., half:]), axis=-1)


def target_errors(predictions, streams):
  return jnp.mean(jnp.square(predictions - streams.targets), axis=-1)


def run_optimizer(optimizer, stream, noise_variance=1.0, jacobian=False):
  predictions, _ = teacher.run_online(
      teacher.mlp_apply, stream.initial_params, optimizer, stream.inputs,
      stream.targets, noise_variance=noise_variance, pass_jacobian=jacobian)
  return predictions


def predict_all(predict, hyper, streams):
  """Predictions of ``predict(hyper, stream)`` for every seed (vmapped)."""
  return jax.vmap(lambda stream: predict(hyper, stream))(streams)


def make_score(streams):
  """The harness's score over a grid: ``streams`` maps seeds to their data.

  A learner's ``build(point)`` is its ``predict(hyper, stream)``; the grid
  points run vmapped, one excess error per point and seed.
  """

  @functools.partial(jax.jit, static_argnums=0)
  def errors(predict, grid, streams):
    def loss(hyper):
      return excess_errors(predict_all(predict, hyper, streams), streams)

    return jax.lax.map(loss, grid, batch_size=len(jax.tree.leaves(grid)[0]))

  def score(learner, points, seeds):
    grid = {name: jnp.asarray([point[name] for point in points])
            for name in points[0]}
    return np.asarray(errors(learner.build(points[0]), grid,
                             streams[tuple(seeds)]))

  return score


BAYES_RANKS = (1, 5, 10, 20)
LOFI_RANK = 10
# The mis-scaled start: process and initial variances this many times too
# small, noise variance this many times too large; then learned online or
# fitted by fit_prior on the first FIT_WARMUP steps of each test stream.
MISSCALED_PRIOR = 0.01
MISSCALED_NOISE = 10.0
FIT_WARMUP = 300
FIT_SCALES = tuple(float(c) for c in np.logspace(-1.0, 5.0, 13))
MISSCALED_RANKS = (0, 10)



def state_arrays_per_param(optimizer, params):
  """Floats of ``optimizer``'s state per param (counts and scalars too)."""
  shapes = jax.eval_shape(optimizer.init, params)
  size = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(shapes))
  return size / sum(leaf.size for leaf in jax.tree.leaves(params))


def learners(config):
  """``name -> (predict(hyper, stream), grid or None, refine_key, meta)``.

  ``meta`` describes the learner for the results table: its ``kind``, its
  ``belief`` (for Bayesian learners and references) and ``optimizer(hyper)``,
  which builds the optax transformation (for the state's size).
  """
  decays = config.decays
  process = config.process_variances
  noise = config.noise_variance
  timescales = np.asarray(config.timescales)
  total_variance = float(np.sum(config.stationary_variances))

  def multiscale_optimizer(hyper):
    shape = jnp.asarray(timescales) ** hyper['power']
    rates = hyper['scale'] * shape / jnp.sum(shape)
    return mso.multiscale(rates, decays)

  def multiscale(hyper, stream):
    return run_optimizer(multiscale_optimizer(hyper), stream)

  def vd_ekf_optimizer(hyper):
    return mso.bayesian_multiscale(
        [1.0], [hyper['process_variance']], noise,
        initial_variances=[total_variance],
        variance_update=_beliefs.MEASURED_DIAGONAL_RULE)

  def vd_ekf(hyper, stream):
    return run_optimizer(vd_ekf_optimizer(hyper), stream, noise,
                         jacobian=True)

  def lofi_optimizer(hyper):
    return _lofi.lofi(LOFI_RANK, hyper['initial_variance'], noise,
                      process_variance=hyper['process_variance'])

  def lofi(hyper, stream):
    return run_optimizer(lofi_optimizer(hyper), stream, noise,
                         jacobian=True)

  def bayes_optimizer(scale, **options):
    # The stationary initial variances, passed explicitly: the library
    # computes its default only for concrete process variances, and
    # ``scale`` is traced while tuning.
    if not options.get('rank'):
      options = {'variance_update': _beliefs.MEASURED_DIAGONAL_RULE, **options}
    return lambda hyper: mso.bayesian_multiscale(
        decays, scale * process, noise, initial_variances=tuple(
            scale * value for value in config.stationary_variances),
        **options)

  def bayes(scale, **options):
    def predict(hyper, stream):
      del hyper
      return run_optimizer(bayes_optimizer(scale, **options)(None), stream,
                           noise, jacobian=True)
    return predict

  def bayes_tuned(hyper, stream):
    return bayes(hyper['prior_scale'])(None, stream)

  def bayes_learned_optimizer(factor):
    return lambda hyper: mso.bayesian_multiscale(
        decays, factor * process, noise,
        initial_variances=factor * config.stationary_variances,
        learn_prior=True, variance_update=_beliefs.MEASURED_DIAGONAL_RULE)

  def bayes_learned(factor):
    def predict(hyper, stream):
      del hyper
      predictions, scales = teacher.run_online(
          teacher.mlp_apply, stream.initial_params,
          bayes_learned_optimizer(factor)(None), stream.inputs,
          stream.targets, noise_variance=noise, pass_jacobian=True,
          keep_state=lambda params, state: jnp.exp(state.log_process_scale))
      # The process variances in use are factor * c * q: report factor * c,
      # the learned scale relative to the truth (1 is the true prior).
      return predictions, {'final_prior_scale': factor * scales[-1]}
    return predict

  def misscaled_optimizer(rank, learn):
    options = {'rank': rank} if rank else {
        'variance_update': _beliefs.MEASURED_DIAGONAL_RULE}
    return lambda hyper: mso.bayesian_multiscale(
        decays, MISSCALED_PRIOR * process, MISSCALED_NOISE * noise,
        initial_variances=MISSCALED_PRIOR * config.stationary_variances,
        learn_prior=learn, learn_noise_variance=learn, **options)

  def misscaled(rank, learn):
    def predict(hyper, stream):
      del hyper
      predictions, scales = teacher.run_online(
          teacher.mlp_apply, stream.initial_params,
          misscaled_optimizer(rank, learn)(None), stream.inputs,
          stream.targets, noise_variance=MISSCALED_NOISE * noise,
          pass_jacobian=True,
          keep_state=lambda params, state: (
              state.log_process_scale, state.log_noise_scale))
      # The model's process variances are rho c (0.01 q) and its noise
      # rho (10 r): relative to the truth, c / 1000 and 10 rho.
      return predictions, {
          'final_prior_scale': MISSCALED_PRIOR / MISSCALED_NOISE
          * jnp.exp(scales[0][-1]),
          'final_noise_scale': MISSCALED_NOISE * jnp.exp(scales[1][-1])}
    return predict

  def blockwise(hyper, stream):
    del hyper
    return teacher.blockwise_ekf_predictions(
        teacher.mlp_apply, stream.initial_params, decays, process,
        config.stationary_variances, noise, stream.inputs,
        stream.targets).predictions

  def meta(kind, optimizer=None, **belief):
    return {'kind': kind, 'optimizer': optimizer, 'belief': belief or None}

  num = len(timescales)
  default = {'timescales': num, 'rank': 0,
             'variance_update': _beliefs.MEASURED_DIAGONAL_RULE}
  # Grids: hyperparameter -> values, searched as their product (the first
  # name outermost), then a finer grid in the refined one (harness.search).
  table = {
      'SGD': (lambda hyper, stream: run_optimizer(
          optax.sgd(hyper['learning_rate']), stream),
              {'learning_rate': harness.log_grid(1e-4, 1.0, 17)},
              'learning_rate',
              meta('tuned baseline',
                   lambda hyper: optax.sgd(hyper['learning_rate']))),
      'Adam': (lambda hyper, stream: run_optimizer(
          optax.adam(hyper['learning_rate'], b1=hyper['b1']), stream),
               {'learning_rate': harness.log_grid(1e-5, 0.1, 17),
                'b1': [0.0, 0.9]}, 'learning_rate',
               meta('tuned baseline', lambda hyper: optax.adam(
                   hyper['learning_rate'], b1=hyper['b1']))),
      'multiscale (fixed rates)': (
          multiscale, {'scale': harness.log_grid(1e-3, 3.0, 15),
                       'power': [-1.0, -0.5, -0.25, 0.0, 0.25, 0.5]},
          'scale',
          meta('tuned baseline', multiscale_optimizer)),
      'VD-EKF (1 timescale)': (
          vd_ekf, {'process_variance': harness.log_grid(1e-9, 1e-1, 11)},
          'process_variance',
          meta('tuned baseline', vd_ekf_optimizer, timescales=1, rank=0,
               variance_update=_beliefs.MEASURED_DIAGONAL_RULE, decay=1.0)),
      f'LoFi (1 timescale, rank {LOFI_RANK})': (
          lofi, {'process_variance': harness.log_grid(1e-9, 1e-1, 11),
                 'initial_variance': (total_variance * np.geomspace(
                     1e-3, 3.0, 8)).tolist()},
          'process_variance',
          meta('tuned baseline', lofi_optimizer, timescales=1,
               rank=LOFI_RANK, covariance='precision diag + low rank',
               decay=1.0)),
      BAYES_NAME: (bayes(1.0), None, None,
                   meta('Bayesian', bayes_optimizer(1.0), **default)),
  }
  for update in _beliefs.VARIANCE_UPDATES:
    table[_beliefs.bayes_name(update)] = (
        bayes(1.0, variance_update=update), None, None,
        meta('Bayesian', bayes_optimizer(1.0, variance_update=update),
             timescales=num, rank=0, variance_update=update))
  for rank in BAYES_RANKS:
    table[_beliefs.bayes_name(rank=rank)] = (
        bayes(1.0, rank=rank), None, None,
        meta('Bayesian', bayes_optimizer(1.0, rank=rank), timescales=num,
             rank=rank, covariance='diag - low rank'))
  table['Bayesian multiscale (prior scale tuned)'] = (
      bayes_tuned, {'prior_scale': harness.log_grid(0.03, 3.0, 9)},
      'prior_scale',
      meta('Bayesian', lambda hyper: bayes_optimizer(
          hyper['prior_scale'])(None), **default))
  for factor in (10.0, 0.1):
    table[f'Bayesian multiscale (learned prior, x{factor:g} start)'] = (
        bayes_learned(factor), None, None,
        meta('Bayesian', bayes_learned_optimizer(factor), **default))
  for rank in MISSCALED_RANKS:
    belief = {**default, 'rank': rank} if rank else default
    suffix = f', rank {rank})' if rank else ')'
    for learn, what in ((False, 'fixed'), (True, 'learned online')):
      table[f'Bayesian multiscale (prior x{MISSCALED_PRIOR:g}, noise '
            f'x{MISSCALED_NOISE:g}, {what}{suffix}'] = (
                misscaled(rank, learn), None, None,
                meta('Bayesian', misscaled_optimizer(rank, learn),
                     **belief))
  size = config.num_params * num
  table[BLOCK_NAME] = (
      blockwise, None, None,
      meta('reference', timescales=num,
           covariance='k x k block per weight',
           state_arrays_per_param=num * num + num))
  table[EKF_NAME] = (
      None, None, None,
      meta('reference', timescales=num, covariance='full',
           state_arrays_per_param=(size * size + size)
           / config.num_params))
  return table


def run(config, args):
  tuning_seeds = list(range(1000, 1000 + args.tuning_seeds))
  test_seeds = list(range(args.test_seeds))
  started = time.perf_counter()
  tuning = sample_batch(config, tuning_seeds, args.steps)
  test = sample_batch(config, test_seeds, args.steps)
  log(f'teacher {config.layer_sizes} ({config.num_params} weights), '
      f'k={len(config.timescales)}, v={config.component_variance}, '
      f'r={config.noise_variance}: {len(tuning_seeds)} tuning + '
      f'{len(test_seeds)} test seeds x {args.steps} steps')

  excess, target, hyperparameters, seconds = {}, {}, {}, {}
  second_half, edges = {}, {}
  score = make_score({tuple(tuning_seeds): tuning})

  def report(name, predictions, hyper=None, tic=None):
    excess[name] = np.asarray(excess_errors(predictions, test))
    second_half[name] = np.asarray(
        second_half_excess_errors(predictions, test))
    target[name] = np.asarray(target_errors(predictions, test))
    hyperparameters[name] = hyper
    seconds[name] = time.perf_counter() - tic
    log(f'  {name:<52s} excess {excess[name].mean():.4f}  '
        f'({seconds[name]:.1f} s)')

  tic = time.perf_counter()
  ekf = jax.jit(jax.vmap(lambda stream: teacher.joint_ekf_predictions(
      teacher.mlp_apply, stream.initial_params, config.decays,
      config.process_variances, config.stationary_variances,
      config.noise_variance, stream.inputs, stream.targets).predictions))(
          test)
  report(EKF_NAME, ekf, tic=tic)

  table = learners(config)
  params = test.initial_params
  example = jax.tree.map(lambda leaf: leaf[0], params)
  described = {}
  for name, (predict, grid, refine_key, meta) in table.items():
    described[name] = {'kind': meta['kind'], 'belief': meta['belief']}
    if predict is None:
      continue
    tic = time.perf_counter()
    hyper = None
    if grid is not None:
      best, edges[name] = harness.search(harness.Learner(
          id=harness.slug(name), label=name,
          build=lambda point, predict=predict: predict, grid=grid,
          refine={refine_key: {'scale': 'log', 'num': 9}}), score,
                                         tuning_seeds)
      hyper = dict(best)
      chosen = jax.tree.map(jnp.asarray, best)
    else:
      chosen = None
    predictions = jax.jit(lambda streams, chosen=chosen, predict=predict:
                          predict_all(predict, chosen, streams))(test)
    if isinstance(predictions, tuple):
      predictions, extra = predictions
      hyper = {key: np.asarray(value).tolist()
               for key, value in extra.items()}
    report(name, predictions, hyper, tic)
    if meta['optimizer'] is not None:
      described[name]['state_arrays_per_param'] = state_arrays_per_param(
          meta['optimizer'](best if grid is not None else None), example)
  for name, (_, _, _, meta) in table.items():
    if meta['optimizer'] is None and meta['belief'] is not None:
      described[name]['state_arrays_per_param'] = meta['belief'].pop(
          'state_arrays_per_param')
  for rank in MISSCALED_RANKS:
    tic = time.perf_counter()
    name = (f'Bayesian multiscale (prior x{MISSCALED_PRIOR:g}, noise '
            f'x{MISSCALED_NOISE:g}, fit_prior'
            + (f', rank {rank})' if rank else ')'))
    predictions, fits = teacher.fit_and_run(
        mso.AR1Prior(config.decays, MISSCALED_PRIOR * config.process_variances,
                     MISSCALED_PRIOR * config.stationary_variances),
        MISSCALED_NOISE * config.noise_variance, rank, test, FIT_WARMUP,
        FIT_SCALES)
    described[name] = {'kind': 'Bayesian',
                       'belief': {'timescales': len(config.timescales),
                                  'rank': rank, 'fit_prior': True}}
    report(name, jnp.asarray(predictions), {
        'fitted_scale': [fit.process_scale for fit in fits],
        'fitted_noise_scale': [fit.noise_scale for fit in fits],
        'fit_at_grid_edge': [fit.at_grid_edge for fit in fits]}, tic)

  reference = excess[EKF_NAME]
  bayes = excess[BAYES_NAME]
  rows = []
  for name, values in excess.items():
    finite = bool(np.all(np.isfinite(values)))
    ratios = values / reference
    late_ratios = second_half[name] / second_half[EKF_NAME]
    difference = values - bayes
    summary = lambda value, finite=finite: value if finite else None  # noqa: E731
    rows.append({
        'id': harness.slug(name), 'label': name,
        **described[name],
        'excess_error': {
            'mean': summary(float(values.mean())),
            'sd': summary(float(values.std(ddof=1))),
            'values': values.tolist()},
        'target_error': {'mean': summary(float(target[name].mean()))},
        'ratio_to_ekf': {'mean': summary(float(ratios.mean())),
                         'sd': summary(float(ratios.std(ddof=1)))},
        'second_half_ratio_to_ekf': {
            'mean': summary(float(late_ratios.mean())),
            'sd': summary(float(late_ratios.std(ddof=1)))},
        'minus_bayes': {'mean': summary(float(difference.mean())),
                        'sd': summary(float(difference.std(ddof=1)))},
        'seeds_worse_than_bayes': int(np.sum(difference > 0)),
        'diverged_seeds': int(np.sum(~np.isfinite(values))),
        'hyperparameters': hyperparameters[name],
        'at_grid_edge': edges.get(name, []),
        'seconds': seconds[name],
    })
  total = time.perf_counter() - started
  return rows, total


def format_table(rows, num_seeds):
  lines = [f"{'learner':<52s} ratio to full EKF   seeds worse than Bayes"]
  for row in rows:
    ratio = row['ratio_to_ekf']
    lines.append(f"{row['label']:<52s} " + (
        'diverged' if ratio['mean'] is None else
        f"{ratio['mean']:.4f} ± {ratio['sd']:.4f}   "
        f"{row['seeds_worse_than_bayes']}/{num_seeds}"))
  return '\n'.join(lines)


# Kinds of learner, each in its own style: diagonal Bayesian, low-rank
# Bayesian, references, LoFi, other tuned baselines.
KINDS = ('Bayesian multiscale, diagonal', 'Bayesian multiscale, low rank',
         'reference (EKF)', 'LoFi', 'tuned baseline')


def kind_of(row):
  belief = row.get('belief') or {}
  if row.get('kind') == 'Bayesian':
    return KINDS[1] if belief.get('rank') else KINDS[0]
  if row.get('kind') == 'reference':
    return KINDS[2]
  if belief.get('rank'):
    return KINDS[3]
  return KINDS[4]


def plot(rows, stem, title):
  from matplotlib.patches import Patch  # pylint: disable=import-outside-toplevel

  shown = [row for row in rows
           if row['label'] != EKF_NAME and row['ratio_to_ekf']['mean']]
  means = np.asarray([row['ratio_to_ekf']['mean'] for row in shown])
  sds = np.asarray([row['ratio_to_ekf']['sd'] for row in shown])
  styles = dict(zip(KINDS, harness.styles(len(KINDS)), strict=True))
  fig, axes = harness.figure(width=9.0,
                             panel_height=1.4 + 0.26 * len(shown))
  axis = axes[0, 0]
  axis.barh(range(len(shown)), means - 1.0, left=1.0, xerr=sds,
            color=[styles[kind_of(row)]['color'] for row in shown])
  for position, mean in enumerate(means):
    axis.text(mean + 0.004, position + 0.3, f'{mean:.3f}', fontsize=8)
  axis.axvline(1.0, color='k', lw=1)
  axis.axvline(1.05, color='k', lw=0.8, ls=':')
  axis.set_yticks(range(len(shown)), [row['label'] for row in shown])
  axis.invert_yaxis()
  axis.set_xlim(0.98, max(1.1, float(np.max(means + sds)) * 1.02))
  axis.set_xlabel('online excess error / full EKF (dotted: 1.05)')
  axis.set_title(title)
  used = [kind for kind in KINDS if any(kind_of(r) == kind for r in shown)]
  fig.legend(handles=[Patch(color=styles[kind]['color'], label=kind)
                      for kind in used], loc='outside lower center',
             ncols=len(used), frameon=False)
  return harness.save_figure(fig, stem)


def main(argv=None):
  parser = harness.parser(__doc__, full_help='more steps and seeds')
  teacher.add_run_arguments(parser)
  parser.add_argument(
      '--layer-sizes', type=int, nargs='+', default=None,
      help='teacher widths, input to output (default 8 16 1; e.g. 160 1 '
      'for a linear teacher with as many weights)')
  parser.add_argument('--component-variance', type=float, default=None)
  args = parser.parse_args(argv)
  teacher.fill_run_defaults(args, default=(3000, 2, 6), full=(10_000, 3, 12))
  config = teacher.TeacherConfig()
  variant = ''
  if args.layer_sizes is not None:
    config = dataclasses.replace(config, layer_sizes=tuple(args.layer_sizes))
    variant += '_' + '-'.join(map(str, args.layer_sizes))
  if args.component_variance is not None:
    config = dataclasses.replace(
        config, component_variance=args.component_variance)
    variant += f'_v{args.component_variance:g}'
  stem = args.out or (('online_teacher_full' if args.full
                       else 'online_teacher') + variant)
  title = (f'drifting teacher {config.layer_sizes}, {config.num_params} '
           f'weights, k={len(config.timescales)}, {args.test_seeds} test '
           f'seeds x {args.steps} steps')
  if args.plot_only:
    log(f"wrote {plot(harness.load_results(stem)['rows'], stem, title)}")
    return
  log(f'online teacher benchmark, jax {jax.__version__} on '
      f'{jax.devices()[0].platform}')
  rows, total = run(config, args)
  log('')
  log(format_table(rows, args.test_seeds))
  log(f'\ntotal time {total:.1f} s')
  document = harness.results_document(
      'online_teacher', seconds=total, rows=rows, config={
          'layer_sizes': list(config.layer_sizes),
          'num_params': config.num_params,
          'timescales': list(map(float, config.timescales)),
          'component_variance': config.component_variance,
          'noise_variance': config.noise_variance,
          'steps': args.steps, 'tuning_seeds': args.tuning_seeds,
          'test_seeds': args.test_seeds, 'dtype': 'float64',
          'misscaled_prior': MISSCALED_PRIOR,
          'misscaled_noise': MISSCALED_NOISE, 'fit_warmup': FIT_WARMUP,
          'fit_scales': list(FIT_SCALES),
          'metric': 'mean over all steps of (yhat_t - f(x_t; w_t))^2',
      })
  log(f'wrote {harness.write_results(stem, document)} and '
      f'{plot(rows, stem, title)}')


if __name__ == '__main__':
  main()
