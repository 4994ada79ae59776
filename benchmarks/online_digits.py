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
accuracy on separate tuning seeds; the chosen rate is then reported on
evaluation seeds (mean ± sd, ddof 0). The learners are the
``harness.Learner`` entries of ``benchmarks/_digits_learners.py``, each
tuned and evaluated per stream by ``harness.tune_and_evaluate`` over the
runs of one compilation (``benchmarks/_digits_runs.py``).

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

import jax
import numpy as np

from benchmarks import _digits_learners as learners_lib
from benchmarks import _digits_runs as runs
from benchmarks import harness


def _format(summary, scale=100.0, digits=1):
  if summary is None:
    return '—'
  return (f'{summary["mean"] * scale:.{digits}f} ± '
          f'{summary["sd"] * scale:.{digits}f}')


def table(rows) -> str:
  """The rows as a Markdown table."""
  header = (
      '| model | stream | optimizer | lr | online acc % | acc after '
      'switch % | steps to recover | retention % |\n'
      '|---|---|---|---|---|---|---|---|')
  lines = [header]
  for row in rows:
    edge = '*' if row['learning_rate_at_grid_edge'] else ''
    lines.append(
        f'| {row["model"]} | {row["stream"]} | {row["learner"]} | '
        f'{row["learning_rate"]:.2g}{edge} | '
        f'{_format(row["online_accuracy"])} | '
        f'{_format(row["accuracy_after_switch"])} | '
        f'{_format(row["steps_to_recover"], 1.0)} | '
        f'{_format(row["retention"])} |')
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


def _arguments(argv):
  """The parsed command line, its configuration, learner names and stem."""
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
  config = runs.FULL if args.full else runs.DEFAULT
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
  return args, config, names, args.out or f'online_digits{suffix}'


def _report(rows, seconds):
  """Prints the table and both lists of paired differences."""
  results = results_from_rows(rows)
  print(table(rows))
  print()
  print('paired differences in online accuracy vs each learner\'s natural '
        'baseline (win/lose: |mean| > 2 standard errors):')
  print(comparison(results))
  print()
  print('paired differences in online accuracy vs the best non-Bayesian row '
        'of each (model, stream):')
  print(comparison_with_best(results))
  print(f'\ntotal {seconds:.1f} s')


def _document(config, rows, seconds):
  """The results file's contents."""
  return harness.results_document(
      'online_digits', seconds=seconds, rows=rows,
      machine_other={'backend': jax.default_backend()},
      config={
          **dataclasses.asdict(config),
          'fit_warmup': learners_lib.FIT_WARMUP,
          'fit_scales': list(learners_lib.FIT_SCALES),
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
          **comparisons(results_from_rows(rows)),
      })


def main(argv=None):
  args, config, names, stem = _arguments(argv)
  if args.plot_only:
    document = harness.load_results(stem)
    document['config'].update(comparisons(results_from_rows(
        document['rows'])))
    print(f"rewrote the comparisons in {harness.write_results(stem, document)}")
    print(f'wrote {plot(document, stem)}')
    return None
  print(f'config: {config}', flush=True)
  rows, seconds = runs.benchmark(config, names=names)
  _report(rows, seconds)
  document = _document(config, rows, seconds)
  path = harness.write_results(stem, document)
  print(f'wrote {path}')
  # (--families without a plotted learner draws no figure.)
  if any(row['learner'] in PLOT_FAMILIES for row in document['rows']):
    print(f'wrote {plot(document, stem)}')
  return document


if __name__ == '__main__':
  main()
