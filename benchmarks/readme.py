"""The README's headline results, written from ``benchmarks/results/*.json``.

``python -m benchmarks.readme`` rewrites the block of ``README.md`` between
``<!-- results:begin -->`` and ``<!-- results:end -->``; ``--check`` only
reports whether it is current (``tests/test_readme.py`` checks it too). No
number in that block is typed by hand: rerun a benchmark, then this.
"""

from __future__ import annotations

import argparse
import math
import pathlib
import sys

from benchmarks import harness

README = pathlib.Path(__file__).resolve().parents[1] / 'README.md'
BEGIN = '<!-- results:begin -->'
END = '<!-- results:end -->'

DIAGONAL_RULES = ('moment_matching', 'mean_field', 'others_as_noise',
                  'weight_marginal')
# The single-timescale learners the digits rows are compared with: the
# best of them per (model, stream) is the fair baseline.
DIGITS_BASELINES = ('sgd', 'sgd_momentum', 'adam', 'adam_b1_0', 'ademamix')
BAYES = 'bayesian_multiscale_true_prior'


def _sci(value: float, digits: int) -> str:
  """``2.1e-7``: scientific notation without the exponent's zero."""
  mantissa, exponent = f'{value:.{digits}e}'.split('e')
  return f'{mantissa}e{int(exponent)}'


def _power_of_ten(value: float) -> str:
  """``10⁷``: superscript digits, which GitHub's Markdown shows."""
  return '10' + str(round(math.log10(value))).translate(
      str.maketrans('-0123456789', '⁻⁰¹²³⁴⁵⁶⁷⁸⁹'))


def _one_f() -> str:
  one_f = harness.load_results('online_1f')

  def both(learner: str) -> str:
    return ' / '.join(
        f"{harness.row(one_f, f'main_d{dim}_r1_m5/{learner}')['ratio']['mean']:.3f}"
        for dim in (1, 10))

  def ten(learner: str) -> str:
    return f"{harness.row(one_f, f'main_d10_r1_m5/{learner}')['ratio']['mean']:.3f}"

  return f"""\
- **A drifting 1/f world** (`benchmarks/online_1f.py`; excess loss over the
  exact Kalman filter, scalar / 10-d inputs; tuned rows tuned on separate
  seeds): the multiscale learner with `kalman_learning_rates`, given the
  drift's statistics, scores {both('multiscale_kalman_rates')}; without them,
  log-spaced timescales with one scale tuned score \
{both('multiscale_generic_1_scale_tuned')}, and
  `bayesian_multiscale` learning its prior's scale from a 10× too large
  start {both('bayesian_multiscale_prior_learned_start_q_x10')}, against \
{both('sgd')} for tuned SGD ({ten('sgd_normalised_nlms')} for NLMS at
  10-d), {both('rls_forgetting')} for RLS with forgetting and {both('adam')} for \
Adam.
"""


def _digits() -> str:
  digits = harness.load_results('online_digits')

  def accuracy(model: str, stream: str, learner: str) -> float:
    return 100 * harness.row(digits, f'{model}/{stream}/{learner}')[
        'online_accuracy']['mean']

  def best(model: str, stream: str) -> tuple[float, str]:
    return max((accuracy(model, stream, name), name)
               for name in DIGITS_BASELINES)

  cells = []
  for stream, label in (('recurring', 'recurring tasks'),
                        ('one_over_f', 'tasks switching at 1/f intervals')):
    score, name = best('mlp', stream)
    ours = accuracy('mlp', stream, 'bayesian_multiscale_fit')
    cells.append(f'{ours:.1f} against {score:.1f} ({NAMES[name]}) on '
                 f'{label}')
  gains = [accuracy(m, s, 'multiscale_adam') - accuracy(m, s, 'adam')
           for m in ('mlp', 'cnn') for s in ('recurring', 'one_over_f')]
  return f"""\
- **Digits with task switches** (`benchmarks/online_digits.py`; online
  accuracy, %, of an MLP): `bayesian_multiscale` with its prior's scale
  chosen by `fit_prior` on the first \
{digits['config']['fit_warmup']} steps scores
  {cells[0]}, and
  {cells[1]}, the best of tuned SGD, momentum, Adam, Adam
  without momentum and AdEMAMix (on a stationary stream tuned Adam stays
  ahead). Multiscale on momentum Adam gains \
{min(gains):.0f} to {max(gains):.0f} points over momentum Adam.
"""


NAMES = {'sgd': 'tuned SGD', 'sgd_momentum': 'SGD with momentum',
         'adam': 'tuned Adam', 'adam_b1_0': 'Adam without momentum',
         'ademamix': 'AdEMAMix'}


def _teacher() -> str:
  teacher = harness.load_results('online_teacher')

  def ratio(row_id: str, field: str = 'ratio_to_ekf') -> float:
    return harness.row(teacher, row_id)[field]['mean']

  diagonal = [ratio(f'{BAYES}_diagonal_{rule}') for rule in DIAGONAL_RULES]
  misscaled = ratio(
      'bayesian_multiscale_prior_x0_01_noise_x10_learned_online_rank_10',
      'second_half_ratio_to_ekf')
  return f"""\
- **A drifting teacher MLP** (`benchmarks/online_teacher.py`; excess error
  over a full-covariance EKF): `bayesian_multiscale` with the true prior,
  rank 10 {ratio(BAYES + '_rank_10'):.3f} and rank 20 \
{ratio(BAYES + '_rank_20'):.3f}, diagonal {min(diagonal):.3f}–{max(diagonal):.3f};
  started with a prior 100× too tight and the noise 10× too large and
  learning both, rank 10 is at {misscaled:.3f} over the second half.
  Tuned: fixed-rate multiscale {ratio('multiscale_fixed_rates'):.3f}, SGD \
{ratio('sgd'):.3f}, Adam {ratio('adam'):.3f}, LoFi
  (rank 10, one timescale) {ratio('lofi_1_timescale_rank_10'):.3f}.
"""


def _real_streams() -> str:
  trump = harness.load_results('trump_approval')
  river = harness.load_results('river_datasets')
  plasticity = harness.load_results('plasticity_full')

  def mae(row_id: str) -> float:
    value = harness.row(trump, row_id)['mae']
    return value if isinstance(value, float) else value['mean']

  goals = [row for row in river['rows'] if row.get('section') == 'goals']
  beats = sum(row['learned_prior_beats_river_linear'] == 'yes'
              for row in goals)
  classification = [row for row in goals if row['task'] != 'regression']
  at_sgd = sum(row['learned_prior_at_or_above_tuned_sgd'] == 'yes'
               for row in classification)

  def last(row_id: str) -> float:
    return 100 * harness.row(plasticity, row_id)['last10']['mean']

  recommended = 'linear/bayesian_multiscale_recommended_prior_learned_online'
  return f"""\
- **Real streams, nothing set by hand** (`benchmarks/trump_approval.py`,
  `benchmarks/river_datasets.py`): on river's TrumpApproval a linear model
  with `bayesian_multiscale`'s recommended prior, its scale and noise
  learned online, has MAE {mae(recommended + '_rank_10'):.3f} (rank 10) and \
{mae(recommended + '_diagonal'):.3f} (diagonal), against
  {mae('linear/sgd'):.3f} for tuned SGD and \
{mae('river/published/river_best_model'):.3f} for river's best published
  model. Over river's eight bundled datasets a learned prior beats river's
  linear model on {beats} of {len(goals)},
  and matches or beats tuned linear SGD on {at_sgd} of \
{len(classification)} classification sets.
- **Loss of plasticity** (`benchmarks/plasticity.py --full`, 400
  permuted-digits tasks; accuracy on the last 10% of tasks): multiscale L2
  Init (Adam) {last('multiscale_l2_init_adam'):.1f}%, L2 Init \
{last('l2_init'):.1f}%, multiscale Adam {last('multiscale_adam'):.1f}%,
  Adam {last('adam'):.1f}%, SGD {last('sgd'):.1f}%.
"""


def _cost() -> str:
  costs = harness.load_results('cost_table')

  def adam(row_id: str) -> float:
    return harness.row(costs, row_id)['ratio_to_adam']

  size = costs['config']['size']
  return f"""\
- **Cost** (`benchmarks/cost_table.py`, from the speed benchmarks; the
  optimizer update alone, relative to Adam's): on a 2-core CPU at \
{_power_of_ten(size)}
  parameters, `multiscale` with four decaying subweights \
{adam('cpu_update/multiscale_k4'):.1f}×, `bayesian_multiscale`
  {adam('cpu_update/bayesian_k1'):.1f}× with one subweight and \
{adam('cpu_update/bayesian_k4'):.1f}× with four,
  {adam('cpu_update/bayesian_k4_learned'):.1f}× with four and its prior's scale learned, \
{adam('cpu_update/bayesian_k4_rank10'):.0f}× at rank 10.
  On an NVIDIA H200, `multiscale` with four subweights
  {adam('gpu_update/multiscale_k4'):.2f}×.
"""


def block() -> str:
  """The README's results block, from the results files."""
  precision = harness.load_results('long_run_precision')
  drift = harness.row(precision, 'params')['closed_loop_float32']
  return (_one_f() + _digits() + _teacher() + _real_streams() + _cost()
          + f"""\
- **Numerics**: slow subweights keep decaying in bfloat16/float16 storage
  (a float32 scale carries the decay); after \
{_power_of_ten(precision['config']['steps'])} float32 steps the params
  are within {_sci(drift, 1)} (relative) of a float64 run.
""")


def rewritten(text: str) -> str:
  """``text`` (the README) with its results block regenerated."""
  head, begin, rest = text.partition(BEGIN)
  _, end, tail = rest.partition(END)
  if not begin or not end:
    raise ValueError(f'README.md needs {BEGIN} ... {END}')
  return f'{head}{BEGIN}\n{block()}{END}{tail}'


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--check', action='store_true',
                      help='exit 1 if the README block is not current')
  args = parser.parse_args(argv)
  text = README.read_text('utf-8')
  new = rewritten(text)
  if args.check:
    print('README results are current' if new == text
          else 'README results are stale: python -m benchmarks.readme')
    return int(new != text)
  README.write_text(new, 'utf-8')
  print(f'wrote {README}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
