"""Tests of ``benchmarks/compile_time.py``."""

import json

from benchmarks import compile_time
from benchmarks import harness


def test_tiny_run_writes_one_row_per_leaf_count_and_learner(tmp_path):
  stem = tmp_path / 'compile_time'
  assert compile_time.main([
      '--leaves', '1', '3', '--ranks', '0', '2', '--leaf-size', '4',
      '--repeats', '1', '--out', str(stem)]) == 0
  written = json.loads(stem.with_suffix('.json').read_text())
  harness.check_document(written)
  rows = {row['id']: row for row in written['rows']}
  assert set(rows) == {
      f'leaves{count}/{learner}' for count in (1, 3)
      for learner in ('adam', 'bayesian_k4_rank0', 'bayesian_k4_rank2')}
  for count in (1, 3):
    assert rows[f'leaves{count}/bayesian_k4_rank0']['ratio_to_rank0'] == 1.0
    assert all(row['compile_seconds'] > 0 for row in rows.values())
