"""The end-to-end rows of ``benchmarks/step_speed.py`` and their use in
``benchmarks/cost_table.py``."""

from __future__ import annotations

import json

import pytest

from benchmarks import cost_table
from benchmarks import harness
from benchmarks import step_speed


def test_learners_per_batch_and_their_timed_parts():
  at_one = step_speed.end_to_end_learners(1)
  assert at_one[:2] == ['adam', 'draw']
  assert len(at_one) == 2 + len(step_speed.END_TO_END_SUBWEIGHTS) * len(
      step_speed.FISHER_MODES)
  assert step_speed.end_to_end_learners(16) == list(
      step_speed.BATCHED_LEARNERS)
  parts = {learner: step_speed._backward_part(learner) for learner in at_one}
  assert parts['adam'] == 'gradient'
  assert parts['draw'] is None
  assert parts['bayesian_k4_sampled'] == 'observation_sampled'


def test_wide_model_has_about_a_million_params_counted_from_its_init():
  assert step_speed.MODEL_PARAMS['wide'] == (
      64 * 1000 + 1000 + 1000 * 1000 + 1000 + 1000 * 10 + 10)
  assert '1,076,010 params' in step_speed.MODEL_DESCRIPTIONS['wide']
  assert set(step_speed.MODEL_DESCRIPTIONS) == {'mlp', 'cnn', 'wide'}


def test_fewer_scan_steps_on_larger_batches_and_the_wide_model():
  assert step_speed.scan_steps(200, 'mlp', 1) == 200
  assert step_speed.scan_steps(200, 'mlp', 64) == 25
  assert step_speed.scan_steps(200, 'wide', 1) == 4
  assert step_speed.scan_steps(200, 'wide', 64) == 1


def test_only_is_refused_end_to_end():
  with pytest.raises(SystemExit):
    step_speed.main(['--end-to-end', '--only', 'adam'])


def test_tiny_end_to_end_run_writes_batched_rows_with_shares(
    tmp_path, monkeypatch):
  # Batch 1 with one k and one fisher mode keeps the compiles few.
  monkeypatch.setattr(step_speed, 'END_TO_END_SUBWEIGHTS', (1,))
  monkeypatch.setattr(step_speed, 'FISHER_MODES', ('sampled',))
  monkeypatch.setattr(step_speed, 'SETTLE_SECONDS', 0.0)
  stem = tmp_path / 'step_speed_fisher'
  step_speed.main(['--end-to-end', '--models', 'mlp', '--batches', '1', '2',
                   '--scan-steps', '2', '--rounds', '1', '--out', str(stem)])
  document = json.loads(stem.with_suffix('.json').read_text('utf-8'))
  harness.check_document(document)
  rows = {row['id']: row for row in document['rows']}
  assert set(rows) == {
      'mlp/b1/adam', 'mlp/b1/draw', 'mlp/b1/bayesian_k1_sampled',
      'mlp/b2/adam', 'mlp/b2/bayesian_k1_sampled', 'mlp/b2/bayesian_k1_exact'}
  assert rows['mlp/b2/bayesian_k1_exact']['batch'] == 2
  assert rows['mlp/b2/adam']['params'] == step_speed.MODEL_PARAMS['mlp']
  for row_id, row in rows.items():
    assert row['median_us_per_step'] > 0
    if row['learner'] == 'adam':
      assert row['ratio_to_adam'] == 1.0
    if row['learner'] == 'draw':
      assert 'backward_share' not in row
      continue
    rest = row['update_share' if row['learner'] == 'adam' else 'filter_share']
    assert 0.0 < row['backward_share'] <= 1.0, row_id
    assert 0.0 <= rest < 1.0, row_id
    assert row['backward_share'] + rest == pytest.approx(1.0)


def test_cost_table_reads_the_batch_1_rows_by_their_new_ids():
  rows = [{'id': row_id, 'label': row_id, 'batch': 1,
           'model_description': f'{row_id.split("/")[0]} model',
           'ratio_to_adam': 2.5} for row_id in cost_table.END_TO_END_ROWS]
  document = harness.results_document(
      'step_speed', config={'end_to_end': True}, rows=rows, seconds=0.0,
      command='python -m benchmarks.step_speed --end-to-end')
  table = cost_table.end_to_end_rows(document)
  assert [row['id'] for row in table] == [
      f'end_to_end/{row_id}' for row_id in cost_table.END_TO_END_ROWS]
  assert table[0]['setting'] == 'training step, batch 1, mlp model'
  assert all(row['ratio_to_adam'] == 2.5 for row in table)


def test_cost_table_adds_every_batch_of_the_batched_models():
  rows = [{'id': f'{model}/b{batch}/{learner}', 'label': learner,
           'model': model,
           'learner': learner, 'batch': batch,
           'model_description': f'{model} model', 'ratio_to_adam': 3.0}
          for model in ('mlp', 'cnn', 'wide') for batch in (1, 16)
          for learner in ('adam', 'bayesian_k1_sampled', 'bayesian_k4_exact',
                          'bayesian_k4_sampled')]
  document = harness.results_document(
      'step_speed', config={}, rows=rows, seconds=0.0,
      command='python -m benchmarks.step_speed --end-to-end')
  ids = [row['id'] for row in cost_table.end_to_end_rows(document)]
  assert ids[:len(cost_table.END_TO_END_ROWS)] == [
      f'end_to_end/{row_id}' for row_id in cost_table.END_TO_END_ROWS]
  assert ids[len(cost_table.END_TO_END_ROWS):] == [
      f'end_to_end/{model}/b{batch}/bayesian_k1_sampled'
      for model in ('mlp', 'wide') for batch in (1, 16)]


def test_cost_table_traffic_and_compile_rows():
  traffic = harness.results_document(
      'update_traffic', config={'size': 10_000_000, 'leaves': 4},
      rows=[{'id': 'bayesian_k1_rank10', 'label': 'rank 10',
             'weighted_arrays_moved': 199.0,
             'minimum_arrays': 28, 'weighted_to_minimum': 199 / 28,
             'ratio_to_adam': 40.0, 'median_ms': 650.0}],
      seconds=0.0, command='python -m benchmarks.update_traffic')
  (row,) = cost_table.traffic_rows(traffic)
  assert row['id'] == 'cpu_traffic/bayesian_k1_rank10'
  assert row['ratio_to_adam'] == 40.0
  assert 'moves 199 arrays per param, minimum 28' in row['setting']
  compiled = harness.results_document(
      'compile_time', config={'leaf_size': 256},
      rows=[{'id': f'leaves10/{learner}', 'label': learner, 'leaves': 10,
             'learner': learner,
             'compile_seconds': seconds, 'ratio_to_rank0': seconds / 2.0}
            for learner, seconds in (('adam', 0.5),
                                     ('bayesian_k4_rank0', 2.0),
                                     ('bayesian_k4_rank10', 5.0))],
      seconds=0.0, command='python -m benchmarks.compile_time')
  rows = cost_table.compile_rows(compiled)
  assert [row['id'] for row in rows] == [
      'compile/leaves10/bayesian_k4_rank0',
      'compile/leaves10/bayesian_k4_rank10']
  assert rows[1]['ratio_to_adam'] == 10.0
  assert rows[1]['ratio_to_rank0'] == 2.5
