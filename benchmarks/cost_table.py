"""One table of what a step costs, gathered from the speed benchmarks.

Every cost the docs quote comes from this table (``docs/speed.md``): one row
per learner and setting, its step time relative to Adam's measured in the
same process, and where, when and by which command it was measured. It
reads, and does not re-measure:

* ``step_speed.json`` (``python -m benchmarks.step_speed``): the optimizer
  update alone, float32 params in four leaves, on this project's 2-core
  CPU;
* ``step_speed_h200.json``: the same on an NVIDIA H200 (ratios to momentum
  SGD; Adam's ratio gives the ratio to Adam);
* ``step_speed_fisher.json`` (``python -m benchmarks.step_speed
  --end-to-end``): a whole training step (forward, backward passes and
  update) of a digits classifier, and of an MLP of about 10^6 params, on
  a batch of 1, 16 or 64 examples;
* ``update_traffic.json`` (``python -m benchmarks.update_traffic``): the
  Bayesian update alone (diagonal and low rank), with the arrays it moves
  per parameter against the minimum;
* ``compile_time.json`` (``python -m benchmarks.compile_time``): seconds to
  compile the Bayesian step against the number of params leaves, as a
  ratio to Adam's compile time (not a step time).

Usage::

  python -m benchmarks.cost_table

Writes ``benchmarks/results/cost_table.json``.
"""

from __future__ import annotations

import sys
from typing import Any

from benchmarks import harness

STEM = 'cost_table'
# The update-only rows: optimizer id -> label.
UPDATE_ROWS = {
    'adam': '`optax.adam`',
    'sgd_momentum_0.9': '`optax.sgd(momentum=0.9)`',
    'multiscale_k1': '`multiscale`, 1 decaying subweight',
    'multiscale_k4': '`multiscale`, 4 decaying subweights',
    'multiscale_k4_bf16': '`multiscale`, 4 decaying, bfloat16 state',
    'bayesian_k1': '`bayesian_multiscale`, k = 1, diagonal',
    'bayesian_k1_learned': '`bayesian_multiscale`, k = 1, scale learned',
    'bayesian_k1_learned_per_weight':
        '`bayesian_multiscale`, k = 1, scales learned per weight',
    'bayesian_k4': '`bayesian_multiscale`, k = 4, diagonal',
    'bayesian_k4_learned': '`bayesian_multiscale`, k = 4, scale learned',
    'bayesian_k4_learned_per_weight':
        '`bayesian_multiscale`, k = 4, scales learned per weight',
    'bayesian_k1_rank10': '`bayesian_multiscale`, k = 1, rank 10',
    'bayesian_k4_rank10': '`bayesian_multiscale`, k = 4, rank 10',
}
# The end-to-end rows: id in step_speed_fisher.json -> label.
END_TO_END_ROWS = {
    'mlp/b1/bayesian_k4_exact':
        "`bayesian_multiscale`, k = 4, `fisher='exact'`",
    'mlp/b1/bayesian_k4_sampled':
        "`bayesian_multiscale`, k = 4, `fisher='sampled'`",
    'cnn/b1/bayesian_k4_exact':
        "`bayesian_multiscale`, k = 4, `fisher='exact'`",
    'cnn/b1/bayesian_k4_sampled':
        "`bayesian_multiscale`, k = 4, `fisher='sampled'`",
}
# The batched end-to-end rows: learner -> label, at every batch of these
# models.
BATCHED_ROWS = {
    'bayesian_k1_sampled': "`bayesian_multiscale`, k = 1, `fisher='sampled'`",
    'bayesian_k1_exact': "`bayesian_multiscale`, k = 1, `fisher='exact'`",
}
BATCHED_MODELS = ('mlp', 'wide')
# The update_traffic rows: id -> label.
TRAFFIC_ROWS = {
    'bayesian_k1_tau1': '`bayesian_multiscale`, k = 1, timescales from 1',
    'bayesian_k4_tau1': '`bayesian_multiscale`, k = 4, timescales from 1',
    'bayesian_k1_rank1': '`bayesian_multiscale`, k = 1, rank 1',
    'bayesian_k1_rank10': '`bayesian_multiscale`, k = 1, rank 10',
    'bayesian_k4_rank1': '`bayesian_multiscale`, k = 4, rank 1',
    'bayesian_k4_rank10': '`bayesian_multiscale`, k = 4, rank 10',
}


def _where(document: dict[str, Any]) -> str:
  machine = document['machine']
  devices = ', '.join(machine.get('devices') or []) or 'unknown device'
  cores = machine.get('cpu_count')
  return f'{devices}' + (f', {cores} cores' if cores else '')


def _provenance(document: dict[str, Any]) -> dict[str, Any]:
  date = document['machine'].get('date')
  return {'date': date[:10] if date else 'not recorded',
          'command': document.get('command') or document['config'].get(
              'provenance', 'not recorded'),
          'where': _where(document)}


def update_rows(document: dict[str, Any], size: int) -> list[dict]:
  """The CPU update-only rows at ``size`` params."""
  rows = []
  for optimizer, label in UPDATE_ROWS.items():
    row_id = f'n{size}/{optimizer}'
    if not any(row['id'] == row_id for row in document['rows']):
      continue
    row = harness.row(document, row_id)
    rows.append({
        'id': f'cpu_update/{optimizer}', 'label': label,
        'setting': f'update only, {size:,} params', 'kind': 'cpu_update',
        'ratio_to_adam': row['ratio_to_adam'],
        'median_ms': row['median_ms'],
        'state_arrays_per_param': row['state_arrays_per_param'],
        'ratio_to_fixed_prior': _ratio_to_fixed_prior(
            document, size, optimizer, row),
        **_provenance(document)})
  return rows


def _ratio_to_fixed_prior(document: dict[str, Any], size: int,
                          optimizer: str, row: dict[str, Any]
                          ) -> float | None:
  """A learned-prior row's step time over the same learner's with its
  prior fixed (both timed in the same process), else ``None``."""
  if '_learned' not in optimizer:
    return None
  fixed = harness.row(document, f'n{size}/{optimizer.split("_learned")[0]}')
  return row['median_ms'] / fixed['median_ms']


def gpu_rows(document: dict[str, Any]) -> list[dict]:
  """The H200 update-only rows, as ratios to Adam."""
  adam = harness.row(document, 'adam')['ratio_to_momentum']
  return [{
      'id': f'gpu_update/{row["optimizer"]}',
      'label': UPDATE_ROWS.get(row['optimizer'], row['optimizer']),
      'setting': f'update only, {int(document["config"]["size"]):,} params',
      'kind': 'gpu_update', 'ratio_to_adam': row['ratio_to_momentum'] / adam,
      **_provenance(document)} for row in document['rows']]


def end_to_end_rows(document: dict[str, Any]) -> list[dict]:
  """The training-step rows: :data:`END_TO_END_ROWS`, then
  :data:`BATCHED_ROWS` at every batch of :data:`BATCHED_MODELS`."""
  labels = dict(END_TO_END_ROWS)
  for row in document['rows']:
    if (row.get('model') in BATCHED_MODELS
        and row.get('learner') in BATCHED_ROWS):
      labels.setdefault(row['id'], BATCHED_ROWS[row['learner']])
  rows = []
  for row_id, label in labels.items():
    row = harness.row(document, row_id)
    rows.append({
        'id': f'end_to_end/{row_id}', 'label': label,
        'setting': f'training step, batch {row["batch"]}, '
                   f'{row["model_description"]}',
        'kind': 'end_to_end', 'ratio_to_adam': row['ratio_to_adam'],
        **_provenance(document)})
  return rows


def traffic_rows(document: dict[str, Any]) -> list[dict]:
  """The Bayesian update-only rows of ``update_traffic.json``."""
  config = document['config']
  rows = []
  for row_id, label in TRAFFIC_ROWS.items():
    if not any(row['id'] == row_id for row in document['rows']):
      continue
    row = harness.row(document, row_id)
    rows.append({
        'id': f'cpu_traffic/{row_id}', 'label': label,
        'setting': (
            f'update only, {config["size"]:,} params in {config["leaves"]} '
            f'leaves; moves {row["weighted_arrays_moved"]:.0f} arrays per '
            f'param, minimum {row["minimum_arrays"]}'),
        'kind': 'cpu_traffic', 'ratio_to_adam': row['ratio_to_adam'],
        'median_ms': row['median_ms'],
        'weighted_to_minimum': row['weighted_to_minimum'],
        **_provenance(document)})
  return rows


def compile_rows(document: dict[str, Any]) -> list[dict]:
  """Compile time of the Bayesian step over Adam's, per leaf count."""
  config = document['config']
  rows = []
  for row in document['rows']:
    if row['learner'] == 'adam':
      continue
    adam = harness.row(document, f'leaves{row["leaves"]}/adam')
    rank = row['learner'].rsplit('rank', 1)[1]
    rows.append({
        'id': f'compile/{row["id"]}',
        'label': f'`bayesian_multiscale`, k = 4, rank {rank}',
        'setting': (f'compile time (not a step), {row["leaves"]} leaves of '
                    f'{config["leaf_size"]} params: '
                    f'{row["compile_seconds"]:.1f} s, '
                    f'{row["ratio_to_rank0"]:.2f}x rank 0'),
        'kind': 'compile', 'compile_seconds': row['compile_seconds'],
        'ratio_to_rank0': row['ratio_to_rank0'],
        'ratio_to_adam': row['compile_seconds'] / adam['compile_seconds'],
        **_provenance(document)})
  return rows


def main(argv: list[str] | None = None) -> int:
  parser = harness.parser(__doc__)
  parser.add_argument('--size', type=int, default=10_000_000,
                      help='the CPU rows\' parameter count')
  args = parser.parse_args(argv)
  if args.plot_only:
    parser.error('cost_table draws no figure')
  cpu = harness.load_results('step_speed')
  rows = [*update_rows(cpu, args.size),
          *gpu_rows(harness.load_results('step_speed_h200')),
          *end_to_end_rows(harness.load_results('step_speed_fisher')),
          *traffic_rows(harness.load_results('update_traffic')),
          *compile_rows(harness.load_results('compile_time'))]
  document = harness.results_document(
      STEM, config={'size': args.size,
                    'sources': ['step_speed', 'step_speed_h200',
                                'step_speed_fisher', 'update_traffic',
                                'compile_time']},
      rows=rows, seconds=0.0)
  print(f'wrote {harness.write_results(args.out or STEM, document)}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
