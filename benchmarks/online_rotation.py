r"""Online regression of a drifting rotation angle from digits images.

A stream like the rotated-digits regression of LoFi (Chang, Durán-Martín,
Shestopaloff, Jones & Murphy, "Low-rank extended Kalman filtering for online
learning of neural networks from streaming data", CoLLAs 2023): every step
one of scikit-learn's 1797 ``load_digits`` images (8x8, pixels / 16, drawn
uniformly with replacement) is rotated about its centre by an angle
:math:`\theta_t` (exact bilinear rotation, zero outside:
``_digits.rotate_images``), and a tanh MLP 64-32-1 (2113 params,
initialised :math:`\mathcal N(0, 1/\mathrm{fan\_in})` as
``_drifting_teacher.init_params``) predicts :math:`y_t = \theta_t /
45^\circ`. The angle drifts, so the input distribution does:

* ``ou``: an Ornstein–Uhlenbeck process sampled every step, i.e. one AR(1)
  :math:`\theta_{t+1} = \rho\theta_t + \mathcal N(0, s(1 - \rho^2))`,
  :math:`\rho = e^{-1/\tau}`, :math:`\tau` = ``OU_TIMESCALE`` steps,
  stationary sd ``ANGLE_SD_DEGREES``;
* ``one_over_f``: :math:`1/f` noise, a sum of AR(1) processes with
  log-spaced timescales ``ONE_OVER_F_TIMESCALES`` and equal stationary
  variances summing to the same :math:`s` (the convention of
  ``mso.OneOverFEnvironment.from_timescales``: each component's spectral
  density at low frequency, :math:`\approx 2 s_j\tau_j`, is proportional to
  its timescale, and the sum is :math:`\propto 1/f` between
  :math:`1/\tau_{max}` and :math:`1/\tau_{min}`);

both started from the stationary distribution and clipped to
:math:`\pm` ``ANGLE_CLIP_DEGREES``.

Online protocol (progressive validation): predict :math:`\hat y_t`, score
:math:`(\hat y_t - y_t)^2`, then learn from :math:`(x_t, y_t)`; one example
per step, the whole stream in one ``jax.lax.scan``
(``_drifting_teacher.run_online``), float64 (``main`` enters
``jax.enable_x64``). Reported: the RMSE in degrees,
:math:`45^\circ \sqrt{\overline{(\hat y_t - y_t)^2}}`, over the last 20% of
the stream (``final``) and over all of it (``all``), mean ± sd over test
seeds, and its windowed curve over time (mean squared error over test seeds
and ``--window`` steps). Context rows, no learning: predicting 0° (the
angle's mean) and predicting the previous step's angle.

Learners (registry :func:`learners`, ``harness.Learner`` entries run by
``harness.tune_and_evaluate`` on each stream; a new row is one line there):

* ``SGD``, ``Adam``: learning rate (and Adam's :math:`\beta_1 \in \{0,
  0.9\}`) tuned;
* ``Bayesian multiscale (generic prior)``: ``mso.bayesian_multiscale`` with
  ONE prior, chosen before running and not tuned (``PRIOR_*`` constants):
  :math:`k = 5` subweights per weight with timescales :math:`\tau_i = 1, 10,
  10^2, 10^3, 10^4` steps (:math:`\gamma_i = e^{-1/\tau_i}`), stationary
  variances proportional to the timescale, :math:`s_i = V\tau_i/\sum_j
  \tau_j` (so equal process variances :math:`q_i = s_i(1 - \gamma_i^2)
  \approx 2V/\sum_j\tau_j`, most prior variance in the slow subweights),
  total :math:`V = 1/64` (the first layer's initialisation variance: the
  weights may move from their initialisation by about its own spread),
  started from the stationary variances; observation noise :math:`r =
  (15^\circ/45^\circ)^2 = 1/9` (a guess of the attainable error);
* ``Bayesian multiscale (generic prior, ...)``: the same prior with another
  belief: ``variance_update='moment_matching'`` or ``'mean_field'`` (the
  plain row uses the library's default diagonal rule), or ``rank=10``;
* ``Bayesian multiscale (prior scale tuned)``: the same with all its
  variances multiplied by one factor tuned like the baselines'
  hyperparameters (added after the first run, to separate the prior's
  scale from its shape), also with ``rank=10``;
* ``Bayesian multiscale (equal variances)``: the same timescales, total
  variance and :math:`r` with equal stationary variances :math:`s_i = V/k`
  (process variances :math:`\propto 1/\tau_i`: the shape of the angle's
  own :math:`1/f` drift, and of the generic prior of
  ``benchmarks/trump_approval.py``), not tuned; also added after the first
  run;
* ``diagonal EKF (1 timescale)``: the same learner with :math:`k = 1`, a
  random walk (:math:`\gamma = 1`) started from variance :math:`V`, its
  process variance :math:`q` tuned;
* ``LoFi (rank L)``: ``_lofi.lofi`` (Chang et al. 2023), :math:`\gamma = 1`,
  :math:`\sigma_0^2 = V`, :math:`q` tuned; rank 10 (and 1, 5, 20 with
  ``--full``);
* ``full EKF``: ``_lofi.full_ekf``, the same model with the full
  :math:`2113 \times 2113` covariance (:math:`O(P^2)` per step, 36 MB of
  float64 state). Small enough for a CPU: one 500-step stream, jitted,
  float64, on the shared 2-core machine took 6.7 ms per step, against 0.47
  ms for LoFi rank 10 (1.7 ms at rank 20), 0.05 ms for the diagonal
  Bayesian learner (:math:`k = 5`) and 0.006 ms for SGD. By default it
  reuses the :math:`q` tuned for LoFi rank 10 (its own tuning grid would
  cost several minutes per stream); ``--full`` tunes it.

All EKF-type learners use the same :math:`r` and :math:`V`. Tuning: grid
search on separate tuning seeds by the mean squared error over the whole
stream, then a finer grid between the best point's neighbours
(``harness.search``); a value at the edge of its grid is flagged.
Streams and initial params are paired across learners (same seeds).

Usage::

  python -m benchmarks.online_rotation         # 3000 steps, 2 + 3 seeds
  python -m benchmarks.online_rotation --full  # 10000 steps, 3 + 8 seeds

(tuning + test seeds; ``--full`` adds LoFi ranks 1, 5, 20 and tunes the
full EKF). ``--streams ou --ou-timescale 30`` runs a faster OU angle alone
(root-mean-square change per step :math:`45^\circ\sqrt{2(1 - \rho)}
\approx 45^\circ\sqrt{2/\tau}`: 12 degrees instead of 4, so that the
previous angle is a weaker prediction), written to
``online_rotation_ou30.*``.

Writes ``benchmarks/results/online_rotation.json`` and ``.png``
(``online_rotation_full.*`` with ``--full``).

References:
  Chang, Durán-Martín, Shestopaloff, Jones & Murphy, CoLLAs 2023 (LoFi);
  Jones, Scott, Ren, ElSayed, Hermann, Mayo & Mozer, "Learning in temporally
  structured environments", ICLR 2023 (the Bayesian multiscale learner).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits

import multiscale_optax as mso
from benchmarks import _digits
from benchmarks import _drifting_teacher as teacher
from benchmarks import _lofi
from benchmarks import _network_regression as regression
from benchmarks import harness

# New streams go at the end: a stream's random draws are seeded by its index.
STREAMS = ('ou', 'one_over_f')
LAYER_SIZES = (64, 32, 1)
ANGLE_UNIT_DEGREES = 45.0  # y = angle / 45 degrees
ANGLE_SD_DEGREES = 45.0
ANGLE_CLIP_DEGREES = 90.0
OU_TIMESCALE = 300.0
ONE_OVER_F_TIMESCALES = tuple(float(t) for t in np.geomspace(1.0, 1e3, 7))
FINAL_FRACTION = 0.2

# The generic prior of the Bayesian multiscale learner (module docstring),
# fixed before the first run.
PRIOR_TIMESCALES = tuple(float(t) for t in np.geomspace(1.0, 1e4, 5))
PRIOR_TOTAL_VARIANCE = 1.0 / LAYER_SIZES[0]
PRIOR_NOISE_VARIANCE = (15.0 / ANGLE_UNIT_DEGREES) ** 2
# Tuning grids (log-spaced endpoints, points).
SGD_RATES = (1e-4, 1.0, 9)
ADAM_RATES = (1e-5, 1e-1, 9)
PROCESS_VARIANCES = (1e-9, 1.0, 10)
PRIOR_SCALES = (1e-2, 1e3, 11)
FULL_EKF_NAME = 'full EKF'
# fit_prior: the warm-up window (the first steps of each test stream) and
# its grid of prior scales.
FIT_WARMUP = 300
FIT_SCALES = tuple(float(c) for c in np.logspace(-2.0, 5.0, 15))
FIT_RANKS = (0, 10)
# The learners whose prior scale is learned online (their learned scale is
# recorded).
LEARNED_ONLINE = ('Bayesian multiscale (generic prior, learned online)',
                  'Bayesian multiscale (generic prior, learned online, '
                  'rank 10)')

def log(message: str) -> None:
  print(message, flush=True)


# ---------------------------------------------------------------------------
# The stream.


class RotationStream(NamedTuple):
  """One seed's stream (field names as ``online_teacher`` expects).

  Attributes:
    initial_params: the MLP's initialisation, every learner's start.
    inputs: rotated images, ``(T, 64)``.
    targets: :math:`y_t = \\theta_t/45^\\circ`, ``(T,)``.
    outputs: the same (the angle is observed without noise).
  """

  initial_params: Any
  inputs: jax.Array
  targets: jax.Array
  outputs: jax.Array


def angle_process(kind: str, rng: np.random.Generator, steps: int,
                  ou_timescale: float = OU_TIMESCALE) -> np.ndarray:
  """The clipped angle in degrees, ``(steps,)`` (module docstring)."""
  timescales = {'ou': (ou_timescale,),
                'one_over_f': ONE_OVER_F_TIMESCALES}[kind]
  radians = _digits.rotation_angles(
      rng, steps, timescales=timescales, sd_degrees=ANGLE_SD_DEGREES)
  return np.clip(np.rad2deg(radians), -ANGLE_CLIP_DEGREES,
                 ANGLE_CLIP_DEGREES)


def load_images() -> np.ndarray:
  return load_digits().data / 16.0


def make_streams(kind: str, seeds: list[int], steps: int,
                 images: np.ndarray, ou_timescale: float = OU_TIMESCALE,
                 ) -> RotationStream:
  """The streams of ``seeds`` stacked on a leading axis."""
  config = teacher.TeacherConfig(layer_sizes=LAYER_SIZES)
  streams = []
  for seed in seeds:
    rng = np.random.default_rng([seed, STREAMS.index(kind)])
    angles = angle_process(kind, rng, steps, ou_timescale)
    indices = rng.integers(len(images), size=steps)
    rotated = jax.vmap(_digits.rotate_images)(
        jnp.asarray(images[indices]), jnp.deg2rad(jnp.asarray(angles)))
    params = teacher.init_params(
        config, jax.random.key(int(rng.integers(2**31))))
    targets = jnp.asarray(angles / ANGLE_UNIT_DEGREES)
    streams.append(RotationStream(params, rotated, targets, targets))
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *streams)


# ---------------------------------------------------------------------------
# Learners.

# ---------------------------------------------------------------------------
# Learners.


def prior(shape: str = 'timescale') -> mso.AR1Prior:
  """The generic prior (``PRIOR_TIMESCALES``, started stationary): its
  stationary variances proportional to the timescale (``'timescale'``, the
  prior fixed before the first run) or equal (``'equal'``, process
  variances :math:`\\propto 1/\\tau`), summing to ``PRIOR_TOTAL_VARIANCE``."""
  timescales = np.asarray(PRIOR_TIMESCALES)
  weights = {'timescale': timescales,
             'equal': np.ones_like(timescales)}[shape]
  return mso.AR1Prior.from_timescales(
      timescales, PRIOR_TOTAL_VARIANCE * weights / weights.sum())


def _ekf_learner(label: str, optimizer: Any, keep: Any = None,
                 **fields: Any) -> harness.Learner:
  """A learner on the EKF contract (Jacobian, residual, noise variance
  ``PRIOR_NOISE_VARIANCE``) running ``optimizer(hyper)``."""
  return regression.learner(label, regression.Model(regression.optax_predict(
      optimizer, noise_variance=PRIOR_NOISE_VARIANCE, jacobian=True,
      keep=keep)), meta={'kind': 'learner'}, **fields)


def bayesian(label: str, tuned: bool = False, shape: str = 'timescale',
             **options: Any) -> harness.Learner:
  """``mso.bayesian_multiscale`` with the generic prior; ``options`` go to
  it unchanged (e.g. ``rank=``, ``variance_update=`` where supported). With
  ``tuned``, all its variances (process and initial) are multiplied by a
  factor ``prior_scale`` tuned on the grid ``PRIOR_SCALES``; the shape of
  the prior and :math:`r` stay fixed. ``shape``: as :func:`prior`. A prior
  learned online reports its learned scale (``learned_scale``)."""
  values = prior(shape)

  def build(hyper):
    scale = hyper['prior_scale'] if tuned else 1.0
    return mso.bayesian_multiscale(
        prior=mso.AR1Prior(
            values.decays, tuple(scale * q for q in values.process_variances),
            tuple(scale * s for s in values.initial_variances)),
        noise_variance=PRIOR_NOISE_VARIANCE, **options)

  keep = None if not options.get('learn_prior') else lambda state: {
      'learned_scale': jnp.exp(state.log_process_scale)}
  described = ', '.join(f'{key}={value!r}' for key, value in options.items())
  return _ekf_learner(
      label, build, keep,
      grid={'prior_scale': _log_grid(PRIOR_SCALES)} if tuned else None,
      refine_key='prior_scale' if tuned else None, note=(
          f'generic prior, timescales {PRIOR_TIMESCALES}, '
          + ('s_i = V tau_i / sum tau' if shape == 'timescale'
             else 's_i = V / k') + f', V = {PRIOR_TOTAL_VARIANCE:g}, r = '
          f'{PRIOR_NOISE_VARIANCE:g}' + (', variances x prior_scale (tuned)'
                                         if tuned else '')
          + (f'; {described}' if described else '')))


def _log_grid(endpoints):
  low, high, count = endpoints
  return np.geomspace(low, high, count).tolist()


def baselines(full: bool) -> list[harness.Learner]:
  """SGD, Adam, the 1-timescale diagonal EKF, LoFi and the full EKF."""
  size = teacher.TeacherConfig(layer_sizes=LAYER_SIZES).num_params
  process = {'process_variance': _log_grid(PROCESS_VARIANCES)}

  def lofi(rank):
    return _ekf_learner(
        f'LoFi (rank {rank})', lambda hyper: _lofi.lofi(
            rank, PRIOR_TOTAL_VARIANCE, PRIOR_NOISE_VARIANCE,
            process_variance=hyper['process_variance']),
        grid=process, refine_key='process_variance',
        note=f'rank {rank}, gamma = 1, sigma0^2 = V, r as the prior, q tuned')

  def plain(label, optimizer, grid):
    return regression.learner(
        label, regression.Model(regression.optax_predict(optimizer)),
        grid=grid, refine_key='learning_rate', meta={'kind': 'learner'})

  return [
      plain('SGD', lambda hyper: optax.sgd(hyper['learning_rate']),
            {'learning_rate': _log_grid(SGD_RATES)}),
      plain('Adam', lambda hyper: optax.adam(hyper['learning_rate'],
                                             b1=hyper['b1']),
            {'learning_rate': _log_grid(ADAM_RATES), 'b1': [0.0, 0.9]}),
      _ekf_learner(
          'diagonal EKF (1 timescale)', lambda hyper: mso.bayesian_multiscale(
              prior=mso.AR1Prior([1.0], [hyper['process_variance']],
                                 [PRIOR_TOTAL_VARIANCE]),
              noise_variance=PRIOR_NOISE_VARIANCE),
          grid=process, refine_key='process_variance',
          note='bayesian_multiscale with k = 1, a random walk from '
               'variance V, r as the prior, q tuned'),
      *[lofi(rank) for rank in ((1, 5, 10, 20) if full else (10,))],
      _ekf_learner(
          FULL_EKF_NAME, lambda hyper: _lofi.full_ekf(
              PRIOR_TOTAL_VARIANCE, PRIOR_NOISE_VARIANCE,
              process_variance=hyper['process_variance']),
          grid=process, refine_key='process_variance',
          reuse=None if full else harness.slug('LoFi (rank 10)'),
          note=f'full {size} x {size} covariance, gamma = 1, sigma0^2 = V'
          + (', q tuned' if full else ', q of LoFi (rank 10)')),
  ]


def learners(full: bool) -> list[harness.Learner]:
  """The registry, in table order (the streams' context rows and the
  fit_prior rows, :func:`context_learners` and :func:`fit_learners`, are
  added around it)."""
  sgd, adam, diagonal, *ekfs = baselines(full)
  return [
      sgd, adam,
      bayesian('Bayesian multiscale (generic prior)'),
      bayesian('Bayesian multiscale (generic prior, moment matching)',
               variance_update='moment_matching'),
      bayesian('Bayesian multiscale (generic prior, mean field)',
               variance_update='mean_field'),
      bayesian('Bayesian multiscale (generic prior, rank 10)', rank=10),
      bayesian('Bayesian multiscale (prior scale tuned)', tuned=True),
      bayesian('Bayesian multiscale (prior scale tuned, rank 10)',
               tuned=True, rank=10),
      bayesian('Bayesian multiscale (equal variances)', shape='equal'),
      bayesian(LEARNED_ONLINE[0], learn_prior=True,
               learn_noise_variance=True),
      bayesian(LEARNED_ONLINE[1], rank=10, learn_prior=True,
               learn_noise_variance=True),
      diagonal, *ekfs,
  ]


def context_learners() -> list[harness.Learner]:
  """No learning: predicting 0 degrees, and the previous step's angle."""

  def previous(streams):
    targets = np.asarray(streams.targets)
    return np.concatenate([np.zeros_like(targets[:, :1]), targets[:, :-1]],
                          axis=1), {}

  return [regression.learner(label, regression.Model(run=run),
                             meta={'kind': 'context'})
          for label, run in (
              ('predict 0 deg (no learning)',
               lambda streams: (np.zeros_like(streams.targets), {})),
              ('predict the previous angle (no learning)', previous))]


def fit_learners() -> list[harness.Learner]:
  """The generic prior from fit_prior, diagonal and rank 10."""
  return [regression.learner(
      'Bayesian multiscale (generic prior, fit_prior'
      + (f', rank {rank})' if rank else ')'),
      regression.fit_prior_model(prior(), PRIOR_NOISE_VARIANCE, rank,
                                 FIT_WARMUP, FIT_SCALES),
      meta={'kind': 'learner'},
      note=f'generic prior scaled by fit_prior on the first {FIT_WARMUP} '
           f'steps of each test stream ({len(FIT_SCALES)} scales '
           f'{FIT_SCALES[0]:g}..{FIT_SCALES[-1]:g}), then run from the '
           'start') for rank in FIT_RANKS]


# ---------------------------------------------------------------------------
# Scores.


def squared_errors_degrees(predictions, targets):
  return np.square(ANGLE_UNIT_DEGREES * (np.asarray(predictions)
                                         - np.asarray(targets)))


def summarise(errors, window):
  """Per-seed RMSE (degrees) at the end and overall, and the curve."""
  steps = errors.shape[-1]
  start = round(steps * (1.0 - FINAL_FRACTION))
  final = np.sqrt(errors[:, start:].mean(axis=1))
  overall = np.sqrt(errors.mean(axis=1))
  finite = bool(np.all(np.isfinite(final)) and np.all(np.isfinite(overall)))
  bins = steps // window
  curve = np.sqrt(errors[:, :bins * window].reshape(
      errors.shape[0], bins, window).mean(axis=(0, 2)))

  def value(array, reduce):
    return float(reduce(array)) if finite else None

  def sd(array):
    return np.std(array, ddof=1) if array.size > 1 else 0.0

  return {
      'rmse_final_deg': {'mean': value(final, np.mean),
                         'sd': value(final, sd), 'values': final.tolist()},
      'rmse_all_deg': {'mean': value(overall, np.mean),
                       'sd': value(overall, sd), 'values': overall.tolist()},
      'diverged_seeds': int(np.sum(~np.isfinite(final))),
      'curve_rmse_deg': curve.tolist() if finite else None,
  }

def run_stream(kind, args, images, table):
  """The rows of one stream: the context rows, ``table`` (tuned on this
  stream's tuning seeds; a learner's ``reuse`` refers to this stream) and
  the fit_prior rows. Row ids are ``<stream>/<learner id>``."""
  tuning_seeds, test_seeds = harness.seed_lists(args)
  tuning = make_streams(kind, tuning_seeds, args.steps, images,
                        args.ou_timescale)
  test = make_streams(kind, test_seeds, args.steps, images,
                      args.ou_timescale)
  targets = np.asarray(test.targets)

  def evaluate(learner, point, seeds):
    del seeds  # the test streams are made once, for these seeds
    predictions, learned = regression.predictions(learner, point, test)
    return {**summarise(squared_errors_degrees(predictions, targets),
                        args.window), **learned}

  registry = [*context_learners(), *table,
              *([] if args.skip_fit else fit_learners())]
  rows = harness.tune_and_evaluate(
      [dataclasses.replace(learner, id=f'{kind}/{learner.id}',
                           reuse=learner.reuse and f'{kind}/{learner.reuse}')
       for learner in registry],
      regression.make_score({tuple(tuning_seeds): tuning}),
      tuning_seeds=tuning_seeds, test_seeds=test_seeds,
      metric='rmse_final_deg', evaluate=evaluate,
      log=lambda message: log(f'  {kind:<10s}{message}'))
  for row in rows:
    row.update(stream=kind, learner=row['id'].split('/', 1)[1])
  return {row['label']: row for row in rows}


def _format(row, which):
  summary = row[f'rmse_{which}_deg']
  if summary['mean'] is None:
    return f"diverged ({row['diverged_seeds']} seeds)"
  return f"{summary['mean']:.2f} ± {summary['sd']:.2f}"


def format_table(results) -> str:
  kinds = list(results)
  header = ['learner'] + [f'{kind}: {which} (deg)' for kind in kinds
                          for which in ('final 20%', 'all steps')] + ['tuned']
  lines = ['| ' + ' | '.join(header) + ' |',
           '|' + '---|' * len(header)]
  for name in results[kinds[0]]:
    cells = [name]
    for kind in kinds:
      row = results[kind][name]
      cells += [_format(row, 'final'), _format(row, 'all')]
    tuned = []
    for kind in kinds:
      hyper = results[kind][name]['hyperparameters']
      if hyper:
        tuned.append(kind + ': ' + ', '.join(
            f'{key}={value:.3g}' if isinstance(value, float)
            else f'{key}={value}' for key, value in hyper.items()))
    cells.append('; '.join(tuned) or '-')
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def plot(results, window, stem, title):
  """RMSE curves, one panel per stream; ``results``: stream -> name -> row."""
  from matplotlib import ticker  # pylint: disable=import-outside-toplevel

  kinds = list(results)
  fig, axes = harness.figure(1, len(kinds), width=6.2 * len(kinds),
                             panel_height=5.6)
  names = list(results[kinds[0]])
  styles = harness.styles(len(names))
  for col, kind in enumerate(kinds):
    axis = axes[0, col]
    for name, style in zip(names, styles, strict=True):
      curve = results[kind][name]['curve_rmse_deg']
      if curve is None:
        continue
      steps = (np.arange(len(curve)) + 0.5) * window
      context = results[kind][name]['kind'] == 'context'
      axis.plot(steps, curve, label=name, color=style['color'],
                linestyle=style['linestyle'], marker=style['marker'],
                markevery=max(len(curve) // 6, 1), markersize=4,
                linewidth=1.0 if context else 1.7)
    axis.set_title(f"{'OU' if kind == 'ou' else '1/f'} angle")
    axis.set_xlabel('step')
    axis.set_yscale('log')
    axis.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.yaxis.set_major_formatter(ticker.ScalarFormatter())
    axis.yaxis.set_minor_formatter(ticker.NullFormatter())
    axis.grid(alpha=0.3, which='both')
    if col == 0:
      axis.set_ylabel(f'RMSE (degrees, {window}-step windows, '
                      'mean over test seeds)')
  handles, labels = axes[0, 0].get_legend_handles_labels()
  fig.legend(handles, labels, loc='outside lower center', ncol=3,
             frameon=False)
  fig.suptitle(title)
  return harness.save_figure(fig, stem)

def parse_args(argv=None):
  """The command line (module docstring), with the run's defaults filled."""
  parser = harness.parser(
      __doc__, full_help='longer streams, more seeds, more LoFi ranks, the '
      'full EKF tuned')
  teacher.add_run_arguments(parser)
  parser.add_argument('--window', type=int, default=None,
                      help='steps per point of the RMSE curve')
  parser.add_argument('--streams', default=','.join(STREAMS),
                      help='comma-separated subset of ' + ','.join(STREAMS))
  parser.add_argument('--ou-timescale', type=float, default=OU_TIMESCALE,
                      help='timescale (steps) of the OU angle; another '
                      'value adds it to the output name')
  parser.add_argument('--skip', default='',
                      help='comma-separated learner names to leave out')
  parser.add_argument('--skip-fit', action='store_true',
                      help='leave out the fit_prior rows')
  args = parser.parse_args(argv)
  teacher.fill_run_defaults(args, default=(3000, 2, 3), full=(10_000, 3, 8))
  if args.window is None:
    args.window = max(args.steps // 30, 1)
  return args


def results_config(args, kinds):
  """The ``config`` block of the results file."""
  values = prior()
  return {
      'steps': args.steps, 'tuning_seeds': args.tuning_seeds,
      'test_seeds': args.test_seeds, 'window': args.window,
      'streams': kinds, 'layer_sizes': list(LAYER_SIZES),
      'num_params': teacher.TeacherConfig(
          layer_sizes=LAYER_SIZES).num_params,
      'angle_unit_degrees': ANGLE_UNIT_DEGREES,
      'angle_sd_degrees': ANGLE_SD_DEGREES,
      'angle_clip_degrees': ANGLE_CLIP_DEGREES,
      'ou_timescale': args.ou_timescale,
      'one_over_f_timescales': list(ONE_OVER_F_TIMESCALES),
      'final_fraction': FINAL_FRACTION,
      'prior': {'timescales': list(PRIOR_TIMESCALES),
                'decays': list(values.decays),
                'process_variances': list(values.process_variances),
                'stationary_variances': list(values.initial_variances),
                'total_variance': PRIOR_TOTAL_VARIANCE,
                'noise_variance': PRIOR_NOISE_VARIANCE},
      'dtype': 'float64',
      'metric': 'RMSE in degrees of the online predictions (predicted '
                'before learning from the example); final: last '
                f'{FINAL_FRACTION:.0%} of the stream',
  }


def main(argv=None):
  args = parse_args(argv)
  variant = ('' if args.ou_timescale == OU_TIMESCALE
             else f'_ou{args.ou_timescale:g}')
  stem = args.out or ('online_rotation_full' if args.full
                      else 'online_rotation') + variant
  title = (f'rotated digits, angle / 45 deg regressed by a {LAYER_SIZES} '
           f'tanh MLP, {args.test_seeds} test seeds x {args.steps} steps')
  if args.plot_only:
    document = harness.load_results(stem)
    results = {}
    for row in document['rows']:
      results.setdefault(row['stream'], {})[row['label']] = row
    log(f"wrote {plot(results, document['config']['window'], stem, title)}")
    return document
  skip = {name for name in args.skip.split(',') if name}
  table = [learner for learner in learners(args.full)
           if learner.label not in skip]
  ids = {learner.id for learner in table}
  for learner in table:
    if learner.reuse is not None and learner.reuse not in ids:
      raise ValueError(f'{learner.label!r} reuses {learner.reuse!r}, which '
                       'is skipped')
  kinds = args.streams.split(',')
  log(f'online rotation benchmark, jax {jax.__version__} on '
      f'{jax.devices()[0].platform}: {args.tuning_seeds} tuning + '
      f'{args.test_seeds} test seeds x {args.steps} steps, streams {kinds}')
  started = time.perf_counter()
  images = load_images()
  with jax.enable_x64(True):
    results = {kind: run_stream(kind, args, images, table) for kind in kinds}
  seconds = time.perf_counter() - started
  log('')
  log(format_table(results))
  log(f'\ntotal time {seconds:.1f} s')
  rows = [row for stream_rows in results.values()
          for row in stream_rows.values()]
  document = harness.results_document(
      'online_rotation', seconds=seconds, rows=rows,
      config=results_config(args, kinds))
  path = harness.write_results(stem, document)
  log(f'wrote {path} and {plot(results, args.window, stem, title)}')
  return document


if __name__ == '__main__':
  main()
