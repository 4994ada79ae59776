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
* ``Bayesian multiscale (true prior, moment matching)``:
  ``mso.bayesian_multiscale`` with the teacher's prior (``mso.AR1Prior``)
  and noise variance, diagonal, ``variance_update='moment_matching'`` (the
  rule these rows were first measured with; the library's default is now
  ``'others_as_noise'``, which has its row below); no tuning. The other
  rows labelled "moment matching" use the same rule;
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

Every learner is a ``harness.Learner`` (registry :func:`learners`), run by
``harness.tune_and_evaluate``: grid search on separate tuning seeds, then a
finer grid between the best point's neighbours; a tuned value at the edge of
its grid is flagged. Runs in float64 (``main`` enters ``jax.enable_x64``).

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
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import multiscale_optax as mso
from benchmarks import _beliefs
from benchmarks import _drifting_teacher as teacher
from benchmarks import _lofi
from benchmarks import _network_regression as regression
from benchmarks import harness

EKF_NAME = 'full EKF (reference)'
EKF_ID = harness.slug(EKF_NAME)
# The row every other is compared with, paired by seed (its id predates the
# label, which names the diagonal rule it runs with).
BAYES_ID = 'bayesian_multiscale_true_prior'
BAYES_NAME = 'Bayesian multiscale (true prior, moment matching)'
BLOCK_NAME = 'block-diagonal EKF (k x k per weight, true prior)'
MOMENT_MATCHING = _beliefs.MEASURED_DIAGONAL_RULE

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


def log(message: str) -> None:
  print(message, flush=True)


def sample_batch(config, seeds, num_steps):
  keys = jax.vmap(jax.random.key)(jnp.asarray(seeds))
  return jax.vmap(
      lambda key: teacher.sample_stream(config, key, num_steps))(keys)


def second_half_excess_errors(predictions, streams):
  """Per seed: the excess error over the second half of the stream."""
  half = predictions.shape[-1] // 2
  return jnp.mean(jnp.square(
      predictions[..., half:] - streams.outputs[..., half:]), axis=-1)


def target_errors(predictions, streams):
  return jnp.mean(jnp.square(predictions - streams.targets), axis=-1)


def scaled_prior(config, scale):
  """The teacher's prior with process and initial variances times
  ``scale`` (a float, or traced while it is tuned)."""
  prior = config.prior
  return mso.AR1Prior(
      prior.decays, tuple(scale * q for q in prior.process_variances),
      tuple(scale * s for s in prior.initial_variances))


class _Registry:
  """Builds the learners of one teacher; ``example`` are abstract params
  (for the size of an optimizer's state)."""

  def __init__(self, config):
    self.config = config
    self.noise = config.noise_variance
    self.example = jax.eval_shape(
        lambda: teacher.init_params(config, jax.random.key(0)))

  def learner(self, label, optimizer, kind, *, jacobian=False, keep=None,
              belief=None, noise=None, **fields):
    """A learner running ``optimizer(hyper)`` (its state size in ``meta``);
    with ``jacobian``, on the EKF contract with noise variance ``noise``
    (default the teacher's)."""
    grid = fields.get('grid') or {}
    first = {name: values[0] for name, values in grid.items()}
    meta = {'kind': kind, 'belief': belief,
            'state_arrays_per_param': regression.state_arrays_per_param(
                optimizer(first), self.example)}
    if noise is None:
      noise = self.noise
    predict = regression.optax_predict(
        optimizer, noise_variance=noise if jacobian else 1.0,
        jacobian=jacobian, keep=keep)
    return regression.learner(label, regression.Model(predict), meta=meta,
                              **fields)

  def bayes(self, label, scale=1.0, *, belief, keep=None, fields=None,
            **options):
    """``mso.bayesian_multiscale`` on the teacher's prior times ``scale``
    (a float, or the name of the tuned hyperparameter); ``options`` go to
    it, ``fields`` to the Learner."""
    if not options.get('rank'):
      options = {'variance_update': MOMENT_MATCHING, **options}
    noise = options.pop('noise_variance', self.noise)

    def optimizer(hyper):
      factor = hyper[scale] if isinstance(scale, str) else scale
      return mso.bayesian_multiscale(
          prior=scaled_prior(self.config, factor), noise_variance=noise,
          **options)

    return self.learner(label, optimizer, 'Bayesian', jacobian=True,
                        keep=keep, belief=belief, noise=noise,
                        **(fields or {}))


def _default_belief(config):
  return {'timescales': len(config.timescales), 'rank': 0,
          'variance_update': MOMENT_MATCHING}


def baselines(registry):
  """SGD, Adam, fixed multiscale rates, the 1-timescale diagonal EKF and
  LoFi, each tuned."""
  config = registry.config
  shape = jnp.asarray(config.timescales)
  total = float(np.sum(config.stationary_variances))
  process = {'process_variance': harness.log_grid(1e-9, 1e-1, 11)}

  def multiscale(hyper):
    powers = shape ** hyper['power']
    return mso.multiscale(hyper['scale'] * powers / jnp.sum(powers),
                          config.decays)

  return [
      registry.learner('SGD', lambda h: optax.sgd(h['learning_rate']),
                     'tuned baseline', refine_key='learning_rate',
                     grid={'learning_rate': harness.log_grid(1e-4, 1.0, 17)}),
      registry.learner(
          'Adam', lambda h: optax.adam(h['learning_rate'], b1=h['b1']),
          'tuned baseline', refine_key='learning_rate',
          grid={'learning_rate': harness.log_grid(1e-5, 0.1, 17),
                'b1': [0.0, 0.9]}),
      registry.learner(
          'multiscale (fixed rates)', multiscale, 'tuned baseline',
          refine_key='scale',
          grid={'scale': harness.log_grid(1e-3, 3.0, 15),
                'power': [-1.0, -0.5, -0.25, 0.0, 0.25, 0.5]}),
      registry.learner(
          'VD-EKF (1 timescale, moment matching)', lambda h: (
              mso.bayesian_multiscale(
                  prior=mso.AR1Prior([1.0], [h['process_variance']],
                                     [total]),
                  noise_variance=registry.noise,
                  variance_update=MOMENT_MATCHING)),
          'tuned baseline', jacobian=True, id='vd_ekf_1_timescale',
          grid=process, refine_key='process_variance', belief={
              'timescales': 1, 'rank': 0, 'variance_update': MOMENT_MATCHING,
              'decay': 1.0}),
      registry.learner(
          f'LoFi (1 timescale, rank {LOFI_RANK})', lambda h: _lofi.lofi(
              LOFI_RANK, h['initial_variance'], registry.noise,
              process_variance=h['process_variance']),
          'tuned baseline', jacobian=True, refine_key='process_variance',
          grid={**process, 'initial_variance': (total * np.geomspace(
              1e-3, 3.0, 8)).tolist()},
          belief={'timescales': 1, 'rank': LOFI_RANK,
                  'covariance': 'precision diag + low rank', 'decay': 1.0}),
  ]


def true_prior_learners(registry):
  """The Bayesian learner with the true prior: each diagonal rule, each
  rank, and its prior's scale tuned or learned online."""
  num = len(registry.config.timescales)
  default = _default_belief(registry.config)
  rows = [registry.bayes(BAYES_NAME, belief=default,
                         fields={'id': BAYES_ID})]
  for update in _beliefs.VARIANCE_UPDATES:
    rows.append(registry.bayes(
        _beliefs.bayes_name(update), variance_update=update,
        belief={'timescales': num, 'rank': 0, 'variance_update': update}))
  for rank in BAYES_RANKS:
    rows.append(registry.bayes(
        _beliefs.bayes_name(rank=rank), rank=rank, belief={
            'timescales': num, 'rank': rank,
            'covariance': 'diag - low rank'}))
  rows.append(registry.bayes(
      'Bayesian multiscale (prior scale tuned, moment matching)',
      'prior_scale', belief=default, fields={
          'id': 'bayesian_multiscale_prior_scale_tuned',
          'grid': {'prior_scale': harness.log_grid(0.03, 3.0, 9)},
          'refine_key': 'prior_scale'}))
  for factor in (10.0, 0.1):
    # The process variances in use are factor * c * q: report factor * c,
    # the learned scale relative to the truth (1 is the true prior).
    rows.append(registry.bayes(
        f'Bayesian multiscale (learned prior, x{factor:g} start, moment '
        'matching)', factor, belief=default, learn_prior=True,
        keep=lambda state, factor=factor: {
            'final_prior_scale': factor * jnp.exp(state.log_process_scale)},
        fields={'id': harness.slug(
            f'Bayesian multiscale (learned prior, x{factor:g} start)')}))
  return rows


def _misscaled_scales(state):
  # The model's process variances are rho c (0.01 q) and its noise rho
  # (10 r): relative to the truth, c / 1000 and 10 rho (recorded also where
  # they stay fixed).
  return {'final_prior_scale': MISSCALED_PRIOR / MISSCALED_NOISE
          * jnp.exp(state.log_process_scale),
          'final_noise_scale': MISSCALED_NOISE * jnp.exp(
              state.log_noise_scale)}


def misscaled_learners(registry):
  """The prior 100 times too tight and the noise 10 times too large, left
  fixed or learned online."""
  config, rows = registry.config, []
  default = _default_belief(config)
  for rank in MISSCALED_RANKS:
    belief = {**default, 'rank': rank} if rank else default
    options = {'rank': rank} if rank else {}
    for learn, what in ((False, 'fixed'), (True, 'learned online')):
      name = (f'Bayesian multiscale (prior x{MISSCALED_PRIOR:g}, noise '
              f'x{MISSCALED_NOISE:g}, {what}')
      rows.append(registry.bayes(
          name + (f', rank {rank})' if rank else ', moment matching)'),
          MISSCALED_PRIOR, belief=belief, keep=_misscaled_scales,
          noise_variance=MISSCALED_NOISE * config.noise_variance,
          learn_prior=learn, learn_noise_variance=learn, **options,
          fields={'id': harness.slug(name + (f', rank {rank})' if rank
                                             else ')'))}))
  return rows


def fit_prior_learners(config):
  """The mis-scaled prior fitted by fit_prior on the first ``FIT_WARMUP``
  steps of each test stream (the library's default diagonal rule)."""
  rows = []
  for rank in MISSCALED_RANKS:
    rows.append(regression.learner(
        f'Bayesian multiscale (prior x{MISSCALED_PRIOR:g}, noise '
        f'x{MISSCALED_NOISE:g}, fit_prior' + (f', rank {rank})' if rank
                                               else ')'),
        regression.fit_prior_model(
            scaled_prior(config, MISSCALED_PRIOR),
            MISSCALED_NOISE * config.noise_variance, rank, FIT_WARMUP,
            FIT_SCALES),
        meta={'kind': 'Bayesian', 'belief': {
            'timescales': len(config.timescales), 'rank': rank,
            'fit_prior': True}}))
  return rows


def references(config):
  """The full EKF on the joint subweight state (the reference every ratio
  is to) and the block-diagonal EKF, both with the true prior."""
  num, size = len(config.timescales), config.num_params * len(
      config.timescales)
  prior = config.prior

  def ekf(filter_):
    return regression.Model(lambda hyper, stream: filter_(
        teacher.mlp_apply, stream.initial_params, prior.decays,
        prior.process_variances, prior.initial_variances,
        config.noise_variance, stream.inputs, stream.targets).predictions)

  return (regression.learner(
      EKF_NAME, ekf(teacher.joint_ekf_predictions), meta={
          'kind': 'reference', 'belief': {
              'timescales': num, 'covariance': 'full'},
          'state_arrays_per_param': (size * size + size) / config.num_params}),
          regression.learner(
              BLOCK_NAME, ekf(teacher.blockwise_ekf_predictions), meta={
                  'kind': 'reference', 'belief': {
                      'timescales': num,
                      'covariance': 'k x k block per weight'},
                  'state_arrays_per_param': num * num + num}))


def learners(config):
  """The registry, in table order: the full EKF first (the reference),
  then the baselines, the Bayesian learner and the block-diagonal EKF."""
  registry = _Registry(config)
  ekf, block = references(config)
  return [ekf, *baselines(registry), *true_prior_learners(registry),
          *misscaled_learners(registry), block, *fit_prior_learners(config)]


def make_evaluate(test):
  """The row fields of a chosen point on the test streams: excess, target
  and second-half errors, their ratios to the full EKF's (the first learner
  evaluated), and the learned values. ``evaluate.excess`` keeps every
  learner's per-seed excess errors for :func:`add_paired_differences`."""
  excess, late = {}, {}

  def evaluate(learner, point, seeds):
    del seeds  # the test streams are sampled once, for these seeds
    values, learned = regression.predictions(learner, point, test)
    excess[learner.id] = np.asarray(regression.excess_errors(values, test))
    late[learner.id] = np.asarray(second_half_excess_errors(values, test))
    error = excess[learner.id]

    def mean_sd(array):
      summary = harness.summary(array)
      return {'mean': summary['mean'], 'sd': summary['sd']}

    return {'excess_error': harness.summary(error),
            'target_error': {'mean': harness.summary(np.asarray(
                target_errors(values, test)))['mean']},
            'ratio_to_ekf': mean_sd(error / excess[EKF_ID]),
            'second_half_ratio_to_ekf': mean_sd(late[learner.id]
                                                / late[EKF_ID]),
            'diverged_seeds': int(np.sum(~np.isfinite(error))),
            **learned}

  evaluate.excess = excess
  return evaluate


def add_paired_differences(rows, excess):
  """Each row's per-seed difference from the Bayesian learner with the
  true prior (``minus_bayes``) and on how many seeds it is worse."""
  for row in rows:
    difference = excess[row['id']] - excess[BAYES_ID]
    summary = harness.summary(difference)
    finite = bool(np.all(np.isfinite(excess[row['id']])))
    row['minus_bayes'] = {'mean': summary['mean'] if finite else None,
                          'sd': summary['sd'] if finite else None}
    row['seeds_worse_than_bayes'] = int(np.sum(difference > 0))
  return rows


def run(config, args):
  """Every learner on the teacher ``config``: rows and the wall time."""
  tuning_seeds, test_seeds = harness.seed_lists(args)
  started = time.perf_counter()
  tuning = sample_batch(config, tuning_seeds, args.steps)
  test = sample_batch(config, test_seeds, args.steps)
  log(f'teacher {config.layer_sizes} ({config.num_params} weights), '
      f'k={len(config.timescales)}, v={config.component_variance}, '
      f'r={config.noise_variance}: {len(tuning_seeds)} tuning + '
      f'{len(test_seeds)} test seeds x {args.steps} steps')
  evaluate = make_evaluate(test)
  rows = harness.tune_and_evaluate(
      learners(config), regression.make_score({tuple(tuning_seeds): tuning}),
      tuning_seeds=tuning_seeds, test_seeds=test_seeds,
      metric='excess_error', evaluate=evaluate, log=log)
  return (add_paired_differences(rows, evaluate.excess),
          time.perf_counter() - started)


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
  with jax.enable_x64(True):
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
