"""The benchmark harness: the results schema, tuning, and the docs renderer."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import harness

DOCS_EXT = pathlib.Path(__file__).resolve().parents[2] / 'docs' / '_ext'
sys.path.insert(0, str(DOCS_EXT))
import benchmark_tables  # noqa: E402

RESULT_FILES = sorted(harness.RESULTS.glob('*.json'))

# Run in a fresh interpreter: importing some scripts switches on float64.
# Every script's argument parser, stopped once it has parsed: a recorded
# command that no longer parses exits with argparse's status 2.
_PARSE_RECORDED_COMMANDS = '''
import argparse, importlib, json, pathlib, shlex, sys

class Parsed(Exception):
  pass

parse = argparse.ArgumentParser.parse_args
def parse_then_stop(self, args=None, namespace=None):
  parse(self, args, namespace)
  raise Parsed

argparse.ArgumentParser.parse_args = parse_then_stop
for path in map(pathlib.Path, sys.argv[1:]):
  words = shlex.split(json.loads(path.read_text('utf-8'))['command'])
  if words[:2] != ['python', '-m'] or not words[2].startswith('benchmarks.'):
    sys.exit(f'{path.name}: {words} is not python -m benchmarks.<script>')
  try:
    importlib.import_module(words[2]).main(words[3:])
  except Parsed:
    continue
  except SystemExit:
    sys.exit(f'{path.name}: {words[2]} does not parse {words[3:]}')
  sys.exit(f'{path.name}: {words[2]}.main never parsed its arguments')
'''


@pytest.mark.parametrize('path', RESULT_FILES, ids=lambda p: p.name)
def test_every_results_file_follows_the_schema(path):
  document = json.loads(path.read_text('utf-8'))
  harness.check_document(document)
  assert tuple(document) == harness.TOP_LEVEL_KEYS
  for row in document['rows']:
    for key, value in row.items():
      if isinstance(value, dict):  # one nested level, no deeper
        assert not any(isinstance(v, dict) for v in value.values()), (
            path.name, row['id'], key)


def test_results_files_are_found():
  # The tests parametrized over RESULT_FILES would pass on an empty glob.
  assert len(RESULT_FILES) >= 20


def test_every_recorded_command_reruns_with_its_script():
  """Each results file records the ``python -m benchmarks.<script> ...``
  command that rebuilds it, and that script's parser accepts it."""
  result = subprocess.run(
      [sys.executable, '-c', _PARSE_RECORDED_COMMANDS,
       *map(str, RESULT_FILES)],
      cwd=harness.RESULTS.parent.parent, capture_output=True, text=True,
      check=False, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]


def test_check_document_rejects_other_layouts():
  good = {'schema': harness.SCHEMA, 'benchmark': 'x', 'command': 'c',
          'machine': {}, 'seconds': 1.0, 'config': {},
          'rows': [{'id': 'a', 'label': 'A'}]}
  harness.check_document(good)
  with pytest.raises(ValueError):
    harness.check_document({**good, 'results': []})
  with pytest.raises(ValueError):
    harness.check_document({**good, 'rows': [{'id': 'a', 'label': 'A'},
                                             {'id': 'a', 'label': 'B'}]})
  with pytest.raises(ValueError):
    harness.check_document({**good, 'rows': [{'id': 'a'}]})


def _quadratic_score(optimum):
  """Score (x - optimum)^2 plus a seed-dependent offset."""

  def score(learner, points, seeds):
    del learner
    return np.asarray([[(p['x'] - optimum) ** 2 + 0.01 * s for s in seeds]
                       for p in points])

  return score


def test_tune_picks_the_best_point_and_flags_edges():
  learner = harness.Learner('q', 'quadratic', build=lambda p: p,
                            grid={'x': [0.0, 1.0, 2.0, 3.0]})
  best, scores = harness.tune(learner, _quadratic_score(1.2), [0, 1])
  assert best == {'x': 1.0}
  assert scores.shape == (4, 2)
  assert harness.at_grid_edge(learner, best) == []
  best, _ = harness.tune(learner, _quadratic_score(7.0), [0, 1])
  assert best == {'x': 3.0}
  assert harness.at_grid_edge(learner, best) == ['x']
  # Two values are a choice, not a range: never an edge.
  choice = harness.Learner('c', 'choice', build=lambda p: p,
                           grid={'x': [0.0, 1.0]})
  assert harness.at_grid_edge(choice, {'x': 1.0}) == []


def test_search_refines_around_the_best_point():
  learner = harness.Learner('q', 'quadratic', build=lambda p: p,
                            grid={'x': harness.log_grid(0.1, 10.0, 5)},
                            refine={'x': {'scale': 'log', 'num': 9}})
  best, edge = harness.search(learner, _quadratic_score(2.0), [0])
  assert edge == []
  assert abs(best['x'] - 2.0) < abs(np.sqrt(10.0) - 2.0)


def test_tune_and_evaluate_scores_the_chosen_point_on_test_seeds():
  learners = [harness.Learner('q', 'quadratic', build=lambda p: p,
                              grid={'x': [0.0, 1.0, 2.0]}),
              harness.Learner('f', 'fixed', build=lambda p: p,
                              fixed={'x': 2.0})]
  rows = harness.tune_and_evaluate(
      learners, _quadratic_score(1.0), tuning_seeds=[0], test_seeds=[1, 2],
      metric='loss', log=lambda message: None)
  assert [row['id'] for row in rows] == ['q', 'f']
  assert rows[0]['hyperparameters'] == {'x': 1.0}
  np.testing.assert_allclose(rows[0]['loss']['values'], [0.01, 0.02])
  np.testing.assert_allclose(rows[1]['loss']['mean'], 1.015)
  assert rows[1]['tuned'] is False



def test_tune_and_evaluate_reuses_choices_and_takes_an_evaluate():
  learners = [harness.Learner('q', 'quadratic', build=lambda p: p,
                              grid={'x': [0.0, 1.0, 2.0]}),
              harness.Learner('r', 'reused', build=lambda p: p, reuse='q',
                              fixed={'y': 5.0})]
  chosen = {}

  def evaluate(learner, point, seeds):
    return {'loss': harness.summary([np.nan if learner.id == 'r' else 0.0
                                     for _ in seeds]),
            'point': dict(point)}

  rows = harness.tune_and_evaluate(
      learners, _quadratic_score(2.0), tuning_seeds=[0], test_seeds=[1, 2],
      metric='loss', log=lambda message: None, evaluate=evaluate,
      chosen=chosen)
  assert chosen == {'q': {'x': 2.0}, 'r': {'y': 5.0, 'x': 2.0}}
  assert rows[1]['reused_from'] == 'q' and rows[1]['tuned'] is False
  assert rows[1]['point'] == {'y': 5.0, 'x': 2.0}
  assert [row['diverged'] for row in rows] == [False, True]
  with pytest.raises(KeyError, match='reuses'):
    harness.tune_and_evaluate(
        [learners[1]], _quadratic_score(2.0), tuning_seeds=[0],
        test_seeds=[1], metric='loss', log=lambda message: None)

SYNTHETIC = {
    'schema': harness.SCHEMA, 'benchmark': 'synthetic', 'command': 'c',
    'machine': {}, 'seconds': 12.3, 'config': {'steps': 1000},
    'rows': [
        {'id': 'd1/sgd', 'label': 'sgd', 'learner': 'sgd', 'setting': 'd1',
         'ratio': {'mean': 1.23456, 'sd': 0.01}, 'warned': True},
        {'id': 'd1/adam', 'label': 'adam', 'learner': 'adam', 'setting': 'd1',
         'ratio': {'mean': 1.5, 'sd': None}, 'warned': False},
        {'id': 'd10/sgd', 'label': 'sgd', 'learner': 'sgd',
         'setting': 'd10', 'ratio': {'mean': 2.0, 'sd': 0.1}},
    ]}


def test_renderer_renders_a_table_from_rows():
  cells = benchmark_tables.table_cells(SYNTHETIC, {
      'where': {'setting': 'd1'},
      'rows': {'d1/adam': 'Adam (tuned)', 'd1/sgd': None, '?d1/gone': 'x'},
      'columns': {'learner': '{label}', 'ratio': '{ratio.mean:.3f}',
                  'pct': '{ratio.mean:*100:.0f}', 'warned': '{warned:yesno}'},
  })
  assert cells == [['Adam (tuned)', '1.500', '150', 'no'],
                   ['sgd', '1.235', '123', 'yes']]


def test_renderer_joins_columns_from_other_rows():
  cells = benchmark_tables.table_cells(SYNTHETIC, {
      'key': 'learner', 'where': {'setting': 'd1'}, 'rows': ['sgd', 'adam'],
      'missing': '–',
      'columns': {'d = 1': '{ratio.mean:.2f}',
                  'd = 10': {'format': '{ratio.mean:.2f}',
                             'where': {'setting': 'd10'}}},
  })
  assert cells == [['1.23', '2.00'], ['1.50', '–']]


def test_renderer_fails_on_a_missing_key():
  with pytest.raises(benchmark_tables.BenchmarkDataError):
    benchmark_tables.table_cells(SYNTHETIC, {
        'columns': {'ratio': '{ratio.median:.3f}'}})
  with pytest.raises(benchmark_tables.BenchmarkDataError):
    benchmark_tables.table_cells(SYNTHETIC, {
        'rows': ['d1/nope'], 'columns': {'x': '{label}'}})
  with pytest.raises(benchmark_tables.BenchmarkDataError):
    benchmark_tables.value_text(SYNTHETIC, 'd1/sgd', '{nope}')


def test_renderer_values_for_prose():
  assert benchmark_tables.value_text(
      SYNTHETIC, 'd10/sgd', '{ratio.mean:.1f} ± {ratio.sd:.1f}') == '2.0 ± 0.1'
  assert benchmark_tables.value_text(SYNTHETIC, 'config', '{steps:,}') == (
      '1,000')
  assert benchmark_tables.value_text(SYNTHETIC, 'document',
                                     '{seconds:.0f}') == '12'
  # A null value is a dash (a learner that diverged), not an error.
  assert benchmark_tables.value_text(SYNTHETIC, 'd1/adam', '{ratio.sd}') == (
      '–')


def test_renderer_says_diverged_where_every_seed_diverged():
  document = {**SYNTHETIC, 'rows': [
      {'id': 'gone', 'ratio': {'mean': None, 'sd': None}, 'diverged_seeds': 8},
      {'id': 'unset', 'ratio': {'mean': None, 'sd': None}}]}
  assert benchmark_tables.value_text(
      document, 'gone', '{ratio.mean:.3f} ± {ratio.sd:.3f}') == 'diverged'
  assert benchmark_tables.value_text(document, 'unset',
                                     '{ratio.mean:.3f}') == '–'


def test_renderer_leaves_out_the_spread_of_one_series():
  document = {**SYNTHETIC, 'rows': [
      {'id': 'one', 'score': {'mean': 1.5, 'sd': 0.0, 'values': [1.5]}},
      {'id': 'two', 'score': {'mean': 1.5, 'sd': 0.5, 'values': [1.0, 2.0]}}]}
  template = '{score.mean:.2f} ± {score.sd:.2f}'
  assert benchmark_tables.value_text(document, 'one', template) == '1.50'
  assert benchmark_tables.value_text(document, 'two', template) == (
      '1.50 ± 0.50')
