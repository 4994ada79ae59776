r"""The one harness every benchmark runs on: registry, tuning, results, plots.

A benchmark is a module ``benchmarks/<name>.py`` run as
``python -m benchmarks.<name>``. It declares its learners as
:class:`Learner` entries (a name, a builder from hyperparameters, a grid),
supplies one scoring function, and lets :func:`tune_and_evaluate` do the
protocol every comparison here follows:

1. every point of a learner's grid is scored on the *tuning* seeds;
2. the point with the best mean score is kept (ties: the first), and flagged
   when it sits at the edge of a range of three or more values; a learner
   with ``refine`` then searches a finer grid around it the same way;
3. that point alone is scored on the separate *test* seeds, and the row
   reports the mean, the standard deviation and every seed's value.

Every results file has the same top-level keys (:data:`TOP_LEVEL_KEYS`):

.. code-block:: text

  schema     "multiscale_optax.benchmarks/1"
  benchmark  the module's name (online_1f, step_speed, ...)
  command    the command line that wrote the file
  machine    one block: platform, processor, cores, load, devices, versions
             (and "other": what a benchmark adds, or what an old file kept)
  seconds    the wall time of the run
  config     the benchmark's settings (whatever it needs to be rerun)
  rows       a list of flat records, one per measured thing, each with
             "id" (unique in the file) and "label" (the plain name shown)

A row's other fields are numbers, strings, booleans, ``null``, lists or one
level of nested records (``{"mae": {"mean": ..., "sd": ..., "values":
[...]}}``). The docs extension ``docs/_ext/benchmark_tables.py`` renders
rows with Python format templates over these fields (``{mae.mean:.3f}``);
nothing else in a file is addressed by the docs.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import json
import math
import os
import pathlib
import platform
import re
import sys
import time
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import numpy as np

SCHEMA = 'multiscale_optax.benchmarks/1'
TOP_LEVEL_KEYS = ('schema', 'benchmark', 'command', 'machine', 'seconds',
                  'config', 'rows')
RESULTS = pathlib.Path(__file__).resolve().parent / 'results'


# --------------------------------------------------------------------------
# The registry: learners, grids, tuning and evaluation.
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Learner:
  """One entry of a benchmark's registry.

  Attributes:
    id: the row id in the results (stable; tests and docs select by it).
    label: the plain name tables and figures show.
    build: hyperparameters (one grid point, as a dict) -> whatever the
      benchmark's scoring function runs (an optax transformation, a step
      function, ...).
    grid: hyperparameter name -> the values to try; empty: nothing tuned.
    fixed: hyperparameters passed to ``build`` at every grid point.
    note: one sentence on what the learner is, stored with its row.
    meta: anything else to store with its row (a belief, a prior).
    refine: hyperparameter name -> how to search a finer grid between the
      neighbours of the best coarse value, as keyword arguments of
      :func:`refine_values` (``{'scale': 'log'}``); the other
      hyperparameters keep their best value. Empty: one grid only.
    reuse: the id of a learner tuned earlier (in the same
      :func:`tune_and_evaluate` call, or in the ``chosen`` record it was
      given) whose chosen point this one takes instead of tuning its own.
  """

  id: str
  label: str
  build: Callable[[dict[str, Any]], Any]
  grid: Mapping[str, Sequence[Any]] = dataclasses.field(default_factory=dict)
  fixed: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  note: str = ''
  meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  refine: Mapping[str, Mapping[str, Any]] = dataclasses.field(
      default_factory=dict)
  reuse: str | None = None

  def points(self) -> list[dict[str, Any]]:
    """Every grid point, each merged with ``fixed`` (one point if no grid)."""
    names = list(self.grid)
    return [{**self.fixed, **dict(zip(names, values, strict=True))}
            for values in itertools.product(*(self.grid[n] for n in names))]


# score(learner, points, seeds) -> array (len(points), len(seeds)): one
# scalar per grid point and seed. A benchmark may vmap over the points.
Score = Callable[[Learner, list[dict[str, Any]], Sequence[int]], np.ndarray]
# evaluate(learner, point, seeds) -> the row's measured fields: what a
# benchmark reports about the chosen point on the test seeds when one
# summary of its score is not enough (several metrics, learned values).
Evaluate = Callable[[Learner, dict[str, Any], Sequence[int]],
                    Mapping[str, Any]]


# Tuning seeds start here, so they never meet the test seeds 0, 1, ...
TUNING_SEED_START = 1000


def seed_lists(args: Any) -> tuple[list[int], list[int]]:
  """``(tuning seeds, test seeds)`` for ``args.tuning_seeds`` and
  ``args.test_seeds`` counts: ``1000, 1001, ...`` and ``0, 1, ...``."""
  return (list(range(TUNING_SEED_START,
                     TUNING_SEED_START + args.tuning_seeds)),
          list(range(args.test_seeds)))


def slug(text: str) -> str:
  """A row id from a name: lower case, runs of other characters -> ``_``."""
  return re.sub(r'[^a-z0-9]+', '_', str(text).lower()).strip('_')


def log_grid(low: float, high: float, points: int) -> list[float]:
  """``points`` log-spaced values from ``low`` to ``high``, as floats."""
  return [float(v) for v in np.geomspace(low, high, points)]


def refine_values(values: Sequence[Any], best: Any, *, scale: str = 'log',
                  num: int = 21, stride: int = 1,
                  bounds: tuple[float, float] | None = None) -> list[Any]:
  """A finer grid between the neighbours of ``best`` among ``values``.

  ``scale``: ``'log'`` (log-spaced), ``'log1m'`` (log-spaced in
  ``1 - value``, for forgetting factors), ``'int'`` (rounded, unique) or
  ``'linear'`` (``best`` ± the grid's smallest spacing, clipped to
  ``bounds``). ``stride`` keeps every ``stride``-th value.
  """
  grid = np.unique(np.asarray(values))
  if scale == 'linear':
    spacing = np.min(np.diff(grid))
    low, high = bounds if bounds is not None else (-np.inf, np.inf)
    finer = np.linspace(max(low, best - spacing), min(high, best + spacing),
                        num)
  else:
    index = int(np.argmin(np.abs(grid - np.asarray(best))))
    low = grid[max(index - 1, 0)]
    high = grid[min(index + 1, len(grid) - 1)]
    if scale == 'int':
      finer = np.unique(np.round(np.linspace(low, high, num))).astype(
          grid.dtype)
    elif scale == 'log1m':
      finer = 1.0 - np.geomspace(1.0 - low, 1.0 - high, num)
    elif scale == 'log':
      finer = np.geomspace(low, high, num)
    else:
      raise ValueError(f'unknown refine scale {scale!r}')
  return finer[::stride].tolist()


def refined(learner: Learner, best: Mapping[str, Any]) -> Learner:
  """``learner`` with the finer grid its ``refine`` asks for around
  ``best`` (hyperparameters it does not refine stay at ``best``)."""
  grid = {name: (refine_values(learner.grid[name], best[name], **options)
                 if name in learner.refine else [best[name]])
          for name, options in {n: learner.refine.get(n, {})
                                for n in learner.grid}.items()}
  return dataclasses.replace(learner, grid=grid, refine={})


def at_grid_edge(learner: Learner, best: Mapping[str, Any]) -> list[str]:
  """Names of hyperparameters tuned to an end of a range of >= 3 values."""
  edge = []
  for name, values in learner.grid.items():
    values = list(values)
    if len(set(map(repr, values))) < 3:
      continue
    numeric = [v for v in values if isinstance(v, (int, float))]
    if len(numeric) == len(values) and best[name] in (min(numeric),
                                                      max(numeric)):
      edge.append(name)
  return edge


def tune(learner: Learner, score: Score, seeds: Sequence[int], *,
         lower_is_better: bool = True) -> tuple[dict[str, Any], np.ndarray]:
  """The grid point with the best mean score over ``seeds``.

  Returns:
    The best point (``fixed`` included) and the scores, shape
    ``(points, seeds)``. Non-finite means never win; a learner whose every
    point is non-finite keeps its first point.
  """
  points = learner.points()
  scores = np.asarray(score(learner, points, seeds), dtype=float)
  if scores.shape != (len(points), len(seeds)):
    raise ValueError(f'score returned shape {scores.shape}, expected '
                     f'{(len(points), len(seeds))}')
  means = scores.mean(axis=1)
  means = np.where(np.isfinite(means), means, np.inf if lower_is_better
                   else -np.inf)
  best = int(np.argmin(means) if lower_is_better else np.argmax(means))
  return points[best], scores


def search(learner: Learner, score: Score, seeds: Sequence[int], *,
           lower_is_better: bool = True) -> tuple[dict[str, Any], list[str]]:
  """:func:`tune` on the grid, then on the finer grid of ``refine``.

  Returns:
    The best point and the hyperparameters whose coarse optimum sits at the
    edge of their range (:func:`at_grid_edge`).
  """
  best, _ = tune(learner, score, seeds, lower_is_better=lower_is_better)
  edge = at_grid_edge(learner, best)
  if learner.refine:
    best, _ = tune(refined(learner, best), score, seeds,
                   lower_is_better=lower_is_better)
  return best, edge


def summary(values: Sequence[float] | np.ndarray) -> dict[str, Any]:
  """``{"mean", "sd", "values"}`` of per-seed values (sd: ddof 1, or 0)."""
  values = np.asarray(values, dtype=float).ravel()
  sd = float(np.std(values, ddof=1)) if values.size > 1 else 0.0
  return {'mean': _finite_or_none(np.mean(values)),
          'sd': _finite_or_none(sd),
          'values': [_finite_or_none(v) for v in values]}


def choose(learner: Learner, score: Score, seeds: Sequence[int], *,
           chosen: Mapping[str, Mapping[str, Any]],
           lower_is_better: bool = True) -> dict[str, Any]:
  """The point a learner runs with, and how it was chosen.

  Returns:
    ``hyperparameters`` (the point, ``fixed`` included), ``tuned`` (whether
    a grid was searched), ``at_grid_edge`` (:func:`at_grid_edge`) and, for a
    learner with ``reuse``, ``reused_from``: the id whose point
    (``chosen[reuse]``) it takes.
  """
  if learner.reuse is not None:
    if learner.reuse not in chosen:
      raise KeyError(f'{learner.id} reuses {learner.reuse!r}, which has not '
                     'been tuned yet')
    return {'hyperparameters': {**learner.fixed, **chosen[learner.reuse]},
            'tuned': False, 'at_grid_edge': [],
            'reused_from': learner.reuse}
  if not learner.grid:
    return {'hyperparameters': dict(learner.fixed), 'tuned': False,
            'at_grid_edge': []}
  best, edge = search(learner, score, seeds, lower_is_better=lower_is_better)
  return {'hyperparameters': best, 'tuned': True, 'at_grid_edge': edge}


def diverged(fields: Mapping[str, Any], metric: str) -> bool:
  """Whether a row's ``metric`` summary has a non-finite (``None``) value:
  the learner diverged on at least one seed."""
  summary_ = fields.get(metric)
  if not isinstance(summary_, Mapping):
    return False
  values = summary_.get('values', [summary_.get('mean')])
  return any(value is None for value in values)


def tune_and_evaluate(
    learners: Sequence[Learner], score: Score, *, tuning_seeds: Sequence[int],
    test_seeds: Sequence[int], metric: str, lower_is_better: bool = True,
    log: Callable[[str], None] = print, evaluate: Evaluate | None = None,
    chosen: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
  """Tune each learner on ``tuning_seeds``, score it on ``test_seeds``.

  Args:
    learners: the registry, run in order (a learner with ``reuse`` after
      the one it reuses).
    score: scores grid points on seeds (:data:`Score`).
    tuning_seeds: the seeds the grids are searched on.
    test_seeds: the separate seeds every reported number comes from.
    metric: the name of the reported summary of ``score`` on the test seeds.
    lower_is_better: the direction of ``score``.
    log: where one line per learner goes.
    evaluate: the row's measured fields for the chosen point
      (:data:`Evaluate`); default ``{metric: summary(score on the test
      seeds)}``.
    chosen: id -> chosen point, read by learners with ``reuse`` and
      updated with every learner's choice (share it across calls to reuse
      a choice made on another stream).

  Returns:
    One row per learner: ``id``, ``label``, ``note``, the fields of
    :func:`choose`, the measured fields, ``diverged`` (:func:`diverged`),
    ``seconds`` and the learner's ``meta``.
  """
  chosen = {} if chosen is None else chosen
  rows = []
  for learner in learners:
    start = time.perf_counter()
    choice = choose(learner, score, tuning_seeds, chosen=chosen,
                    lower_is_better=lower_is_better)
    best = choice['hyperparameters']
    chosen[learner.id] = best
    if evaluate is None:
      values = np.asarray(score(learner, [best], test_seeds), dtype=float)[0]
      fields: Mapping[str, Any] = {metric: summary(values)}
    else:
      fields = evaluate(learner, best, test_seeds)
    seconds = time.perf_counter() - start
    rows.append(jsonable({'id': learner.id, 'label': learner.label,
                          'note': learner.note, **choice, **fields,
                          'diverged': diverged(jsonable(fields), metric),
                          'seconds': round(seconds, 2),
                          **dict(learner.meta)}))
    mean = rows[-1].get(metric, {})
    log(f'  {learner.label}: {metric} '
        f'{mean.get("mean") if isinstance(mean, Mapping) else mean} '
        f'({seconds:.1f} s)')
  return rows


# --------------------------------------------------------------------------
# Results files.
# --------------------------------------------------------------------------


def machine(other: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """The machine block every results file carries; ``other``: anything
  else a benchmark records about it (a library's version)."""
  import jax  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  try:
    load = [round(v, 2) for v in os.getloadavg()]
  except OSError:
    load = None
  return {'platform': platform.platform(), 'processor': platform.machine(),
          'cpu_count': os.cpu_count(), 'load_average': load,
          'devices': [str(d) for d in jax.devices()],
          'python': platform.python_version(), 'jax': jax.__version__,
          'optax': optax.__version__, 'numpy': np.__version__,
          'date': datetime.datetime.now(datetime.UTC).isoformat(
              timespec='seconds'),
          'other': dict(other) if other else None}


def jsonable(value: Any) -> Any:
  """``value`` with numpy/JAX scalars and arrays turned into JSON types."""
  if isinstance(value, Mapping):
    return {str(k): jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [jsonable(v) for v in value]
  if hasattr(value, 'tolist') and not isinstance(value, (str, bytes)):
    return jsonable(value.tolist())
  if isinstance(value, float):
    return _finite_or_none(value)
  return value


def _finite_or_none(value: Any) -> float | None:
  value = float(value)
  return value if math.isfinite(value) else None


def results_document(name: str, *, config: Mapping[str, Any],
                     rows: Sequence[Mapping[str, Any]], seconds: float,
                     command: str | None = None,
                     machine_other: Mapping[str, Any] | None = None,
                     ) -> dict[str, Any]:
  """A results file's contents in the one schema (checked)."""
  document = {'schema': SCHEMA, 'benchmark': name,
              'command': command if command is not None else command_line(),
              'machine': machine(machine_other), 'seconds': round(float(seconds), 1),
              'config': jsonable(dict(config)),
              'rows': [jsonable(dict(row)) for row in rows]}
  check_document(document)
  return document


def check_document(document: Mapping[str, Any]) -> None:
  """Raise ``ValueError`` unless ``document`` follows the schema."""
  keys = tuple(document)
  if sorted(keys) != sorted(TOP_LEVEL_KEYS):
    raise ValueError(f'results keys {keys}, expected {TOP_LEVEL_KEYS}')
  if document['schema'] != SCHEMA:
    raise ValueError(f'schema {document["schema"]!r}, expected {SCHEMA!r}')
  ids = [row.get('id') for row in document['rows']]
  if any(not isinstance(i, str) for i in ids) or len(set(ids)) != len(ids):
    raise ValueError('every row needs a unique string "id"')
  if any(not isinstance(row.get('label'), str) for row in document['rows']):
    raise ValueError('every row needs a string "label"')


def write_results(stem: str, document: Mapping[str, Any]) -> pathlib.Path:
  """Write ``benchmarks/results/<stem>.json`` (checked); return its path."""
  check_document(document)
  path = RESULTS / f'{stem}.json'
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(document, indent=1, allow_nan=False) + '\n',
                  encoding='utf-8')
  return path


def load_results(stem: str) -> dict[str, Any]:
  """Read and check ``benchmarks/results/<stem>.json``."""
  document = json.loads((RESULTS / f'{stem}.json').read_text('utf-8'))
  check_document(document)
  return document


def row(document: Mapping[str, Any], row_id: str) -> dict[str, Any]:
  """The row of ``document`` with id ``row_id`` (``KeyError`` if none)."""
  for candidate in document['rows']:
    if candidate['id'] == row_id:
      return candidate
  raise KeyError(f'no row {row_id!r} in {document["benchmark"]}')


def command_line() -> str:
  """How this process was started, as ``python -m benchmarks.<name> ...``."""
  main = sys.modules.get('__main__')
  spec = getattr(main, '__spec__', None)
  program = (f'python -m {spec.name}' if spec is not None and spec.name
             else f'python {sys.argv[0]}')
  return ' '.join([program, *sys.argv[1:]])


# --------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------


def parser(description: str | None, *, full_help: str | None = None,
           ) -> argparse.ArgumentParser:
  """The arguments every benchmark shares.

  ``--full`` (the longer run, when the benchmark has one), ``--out`` (the
  results stem, default the benchmark's own) and ``--plot-only`` (redraw
  the figure from the saved JSON without running anything).
  """
  result = argparse.ArgumentParser(
      description=(description or '').strip().splitlines()[0] or None,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  if full_help is not None:
    result.add_argument('--full', action='store_true', help=full_help)
  result.add_argument('--out', default=None,
                      help='results stem under benchmarks/results/')
  result.add_argument('--plot-only', action='store_true',
                      help='redraw the figure from the saved JSON')
  return result


# --------------------------------------------------------------------------
# Figures.
# --------------------------------------------------------------------------

# Eight colours that stay apart for colour-blind readers (Okabe & Ito), and
# line styles to combine with them: len(COLORS) * len(LINESTYLES) distinct
# styles before any repeats.
COLORS = ('#000000', '#E69F00', '#56B4E9', '#009E73', '#D55E00', '#0072B2',
          '#CC79A7', '#F0E442')
LINESTYLES = ('-', '--', ':', '-.')
MARKERS = ('o', 's', '^', 'D', 'v', 'P', 'X', '*')


def styles(count: int) -> list[dict[str, Any]]:
  """``count`` distinct line styles (colour, dash, marker), none repeated."""
  if count > len(COLORS) * len(LINESTYLES):
    raise ValueError(f'{count} lines is more than one figure can tell apart')
  return [{'color': COLORS[i % len(COLORS)],
           'linestyle': LINESTYLES[i // len(COLORS)],
           'marker': MARKERS[(i // len(COLORS)) % len(MARKERS)]}
          for i in range(count)]


def figure(rows: int = 1, columns: int = 1, *, width: float = 6.4,
           panel_height: float = 3.2) -> tuple[Any, Any]:
  """A matplotlib figure whose text stays readable at page width."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  plt.rcParams.update({'font.size': 10, 'axes.titlesize': 10,
                       'legend.fontsize': 8, 'axes.spines.top': False,
                       'axes.spines.right': False})
  return plt.subplots(rows, columns, squeeze=False,
                      figsize=(width, panel_height * rows),
                      constrained_layout=True)


def save_figure(fig: Any, stem: str) -> pathlib.Path:
  """Save ``fig`` as ``benchmarks/results/<stem>.png`` and close it."""
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  path = RESULTS / f'{stem}.png'
  fig.savefig(path, dpi=150)
  plt.close(fig)
  return path


def running_mean(values: np.ndarray, window: int) -> np.ndarray:
  """Trailing mean over ``window`` steps along the last axis (shorter at
  the start)."""
  values = np.asarray(values, dtype=float)
  cumulative = np.cumsum(values, axis=-1)
  shifted = np.concatenate(
      [np.zeros((*values.shape[:-1], window)), cumulative[..., :-window]],
      axis=-1)[..., :values.shape[-1]]
  counts = np.minimum(np.arange(1, values.shape[-1] + 1), window)
  return (cumulative - shifted) / counts
