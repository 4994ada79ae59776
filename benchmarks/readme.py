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

# The rows the TrumpApproval sentence ranges over: the linear model's
# untuned Bayesian learners with the library's beliefs.
TRUMP_UNTUNED = (
    'bayesian_multiscale_generic_prior_learned_scales',
    'bayesian_multiscale_generic_prior_learned_scales_moment_matching',
    'bayesian_multiscale_generic_prior_learned_scales_mean_field',
    'bayesian_multiscale_generic_prior_learned_scales_others_as_noise',
    'bayesian_multiscale_generic_prior_learned_scales_rank_1',
    'bayesian_multiscale_generic_prior_learned_scales_rank_10',
    'bayesian_multiscale_default_prior_rank_0',
    'bayesian_multiscale_default_prior_rank_10',
    'bayesian_multiscale_generic_prior_fixed',
)
DIAGONAL_RULES = ('moment_matching', 'mean_field', 'others_as_noise',
                  'weight_marginal')


def _signed(value: float, spec: str) -> str:
  """``value`` with a sign, the minus as a typographic minus."""
  return format(value, '+' + spec).replace('-', '\u2212')


def _sci(value: float, digits: int) -> str:
  """``2.1e-7``: scientific notation without the exponent's zero."""
  mantissa, exponent = f'{value:.{digits}e}'.split('e')
  return f'{mantissa}e{int(exponent)}'


def _power_of_ten(value: float) -> str:
  return f'10^{round(math.log10(value))}'


def block() -> str:
  """The README's results block, from the results files."""
  one_f = harness.load_results('online_1f')
  digits = harness.load_results('online_digits')
  teacher = harness.load_results('online_teacher')
  trump = harness.load_results('trump_approval')
  h200 = harness.load_results('step_speed_h200')
  cpu = harness.load_results('step_speed')
  precision = harness.load_results('long_run_precision')

  def ratio(learner: str, dim: int) -> str:
    row = harness.row(one_f, f'main_d{dim}_r1_m5/{learner}')
    return f"{row['ratio']['mean']:.3f}"

  def both(learner: str) -> str:
    return f'{ratio(learner, 1)} / {ratio(learner, 10)}'

  kalman = harness.row(one_f, 'main_d1_r1_m5/kalman_filter_bayes_optimal')
  identity = kalman['kalman_checks']['max_abs_diff_vs_steady_state_kalman']

  def gain(model: str, stream: str) -> float:
    """Points of online accuracy multiscale-Adam gains over Adam."""
    ours = harness.row(digits, f'{model}/{stream}/multiscale_adam')
    adam = harness.row(digits, f'{model}/{stream}/adam')
    return 100 * (ours['online_accuracy']['mean']
                  - adam['online_accuracy']['mean'])

  switching = [gain(model, stream) for model in ('mlp', 'cnn')
               for stream in ('recurring', 'one_over_f')]

  def teacher_ratio(row_id: str) -> float:
    return harness.row(teacher, row_id)['ratio_to_ekf']['mean']

  diagonal = [teacher_ratio(f'bayesian_multiscale_true_prior_diagonal_{rule}')
              for rule in DIAGONAL_RULES]
  trump_mae = [harness.row(trump, f'linear/{row_id}')['mae']['mean']
               for row_id in TRUMP_UNTUNED]
  river_best = harness.row(trump, 'river/published/river_best_model')['mae']

  def h200_ratio(row_id: str, field: str = 'ratio_to_momentum') -> str:
    return f'{harness.row(h200, row_id)[field]:.3f}'

  cpu_size = 50_000_000
  cpu_k1 = harness.row(cpu, f'n{cpu_size}/multiscale_k1')['ratio_to_momentum']
  drift = harness.row(precision, 'params')['closed_loop_float32']
  bayes = 'bayesian_multiscale_true_prior'
  return f"""\
- **Bayes-optimal in a drifting 1/f world** (`benchmarks/online_1f.py`, excess
  loss relative to the exact Kalman filter; baselines tuned on separate
  seeds): the multiscale learner with `kalman_learning_rates` scores \
{ratio('multiscale_kalman_rates', 1)}
  for scalar inputs (identical predictions, max |Δŷ| = {_sci(identity, 0)} \
in float64) and
  {ratio('multiscale_kalman_rates', 10)} for 10-dimensional inputs, against \
{both('sgd')} for tuned SGD,
  {both('rls_forgetting')} for RLS with forgetting and {both('adam')} for \
Adam.
- **Real data with task switches** (`benchmarks/online_digits.py`, digits
  streamed to an MLP and a CNN): multiscale-Adam beats tuned Adam by \
{min(switching):.0f} to {max(switching):.0f}
  points of online accuracy on streams whose task recurs or switches at 1/f
  intervals, is within a point on stationary streams, and splits a stream of
  drifting rotations ({_signed(gain('mlp', 'rotation'), '.1f')} MLP, \
{_signed(gain('cnn', 'rotation'), '.1f')} CNN). Adam without momentum gains \
more
  still on the switching streams: momentum is itself a fast weight with a
  negative learning rate.
- **Bayesian multiscale** (`bayesian_multiscale`, no tuning, true prior):
  in the 1/f world the default diagonal belief is \
{both(bayes + '_diagonal_others_as_noise')} of the exact
  Kalman filter (scalar / 10-d inputs) and rank 10 is \
{both(bayes + '_rank_10')}. On a
  drifting teacher MLP, against a full-covariance EKF: rank 10 \
{teacher_ratio(bayes + '_rank_10'):.3f}, rank
  20 {teacher_ratio(bayes + '_rank_20'):.3f}, the diagonal rules \
{min(diagonal):.3f}–{max(diagonal):.3f}, tuned fixed-rate multiscale
  {teacher_ratio('multiscale_fixed_rates'):.3f}, tuned SGD \
{teacher_ratio('sgd'):.3f}, tuned Adam {teacher_ratio('adam'):.3f}, LoFi \
(rank 10, one timescale,
  tuned) {teacher_ratio('lofi_1_timescale_rank_10'):.3f}. On river's \
TrumpApproval a linear model with one untuned
  prior scores MAE {min(trump_mae):.3f} to {max(trump_mae):.3f} depending on \
prior and belief (river's
  best: {river_best:.3f}). All in `benchmarks/results/`; the docs page has \
the tables.
- **Speed** (`benchmarks/step_speed.py`, step time relative to
  `optax.sgd(momentum=0.9)` at 5·{_power_of_ten(h200['config']['size'] / 5)} \
float32 parameters on an NVIDIA H200
  with jax {h200['machine']['jax']}): one decaying subweight \
{h200_ratio('multiscale_k1')}×, four {h200_ratio('multiscale_k4')}×, Adam \
{h200_ratio('adam')}×;
  bfloat16 subweights bring four to \
{h200_ratio('multiscale_k4', 'ratio_to_momentum_bfloat16_state')}×. On a \
2-core CPU, where XLA does
  not fuse multi-output loops, one decaying subweight costs {cpu_k1:.2f}× at \
5·{_power_of_ten(cpu_size / 5)}
  parameters.
- **Numerics**: slow subweights keep decaying in bfloat16/float16 storage
  (a float32 scale carries the decay); after \
{_power_of_ten(precision['config']['steps'])} float32 steps the params
  are within {_sci(drift, 1)} (relative) of a float64 run.
"""


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
