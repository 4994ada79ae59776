r"""Tables and numbers generated from ``benchmarks/results/*.json``.

A page never retypes a measured number: it names the JSON file the benchmark
wrote and the values to show, and this extension reads them at build time.

The ``benchmark-table`` directive takes a file (relative to
``benchmarks/results/``) and a YAML body::

  ```{benchmark-table} step_speed.json
  :caption: Step time on a 2-core CPU
  base: results/[size=50000000]/optimizers/*
  rows:                       # row id -> label (Markdown); omit for all keys
    sgd: "`optax.sgd`"
    ?sgd_nesterov: Nesterov   # "?": optional, left out while it has no values
  columns:                    # header -> cell template
    optimizer: "{@label}"
    median ms: "{median_ms:.2f}"
    GB/s: "{achieved_GBps:.1f} ({fraction_of_axpy_bandwidth:.0%})"
  missing: "–"                # text for absent values (default: error)
  labels:                     # shown instead of a value's text (optional)
    True: "yes"
    "tau=1e+00": "$\\tau = 1$"
  ```

A cell template is a Python format string whose fields are paths into the
JSON: ``/``-separated keys, list indices (``0`` or ``[0]``) and list selectors
(``[size=50000000,input_dim=10]``, exactly one match). A path starting with
``/`` is absolute; otherwise it follows ``base``. ``*`` in a path stands for
the row id; ``{@label}`` and ``{@id}`` are the row's label and id. Values can
be scaled with a ``*N:`` prefix to the format spec (``{accuracy:*100:.1f}``),
``{values:len}`` is a list's length, and ``null`` shows as ``–``; a cell all
of whose values are ``null`` (``{mean} ± {sd}``) is a single ``–``. ``labels``
maps a formatted value (a raw key such as ``slow(1)``, or ``True``) to the
text shown for it.

The ``bench`` role puts one number into prose:
``{bench}`step_speed.json {/results/[size=50000000]/axpy_GBps:.1f}```.
"""

from __future__ import annotations

import json
import pathlib
import re
import string
from typing import Any
from typing import ClassVar

import yaml
from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective
from sphinx.util.docutils import SphinxRole

_MISSING = object()
_SELECTOR = re.compile(r'^\[(.*)\]$')
_SCALED_SPEC = re.compile(r'^\*([^:]+):(.*)$')


class BenchmarkDataError(ValueError):
  """A path or template does not match the benchmark JSON."""


def _results_dir(app: Sphinx) -> pathlib.Path:
  return (pathlib.Path(app.srcdir) / app.config.benchmark_results_dir).resolve()


def _load(app: Sphinx, name: str) -> tuple[pathlib.Path, Any]:
  path = (_results_dir(app) / name).resolve()
  if not path.is_file():
    raise BenchmarkDataError(f'benchmark results file not found: {path}')
  with path.open(encoding='utf-8') as file:
    return path, json.load(file)


def _matches(item: Any, condition: str) -> bool:
  key, _, expected = condition.partition('=')
  if not isinstance(item, dict) or key.strip() not in item:
    return False
  actual = item[key.strip()]
  expected = expected.strip()
  if isinstance(actual, (int, float)) and not isinstance(actual, bool):
    try:
      return float(expected) == float(actual)
    except ValueError:
      return False
  return str(actual) == expected


def resolve(data: Any, path: str) -> Any:
  """The value at ``path`` in ``data``; ``_MISSING`` where a key is absent."""
  value = data
  for part in [p for p in path.split('/') if p]:
    selector = _SELECTOR.match(part)
    if isinstance(value, list) and (selector or re.fullmatch(r'-?\d+', part)):
      inner = selector.group(1) if selector else part
      if re.fullmatch(r'-?\d+', inner):
        index = int(inner)
        if not -len(value) <= index < len(value):
          return _MISSING
        value = value[index]
        continue
      conditions = [c for c in inner.split(',') if c.strip()]
      found = [item for item in value
               if all(_matches(item, c) for c in conditions)]
      if len(found) > 1:
        raise BenchmarkDataError(
            f'selector {part!r} in {path!r} matches {len(found)} entries')
      if not found:
        return _MISSING
      value = found[0]
    elif isinstance(value, dict) and part in value:
      value = value[part]
    else:
      return _MISSING
  return value


class _PathFormatter(string.Formatter):
  """Formats a template whose fields are JSON paths."""

  def __init__(self, data: Any, base: str, row_id: str, label: str,
               labels: dict[str, str] | None = None):
    super().__init__()
    self.data, self.base, self.row_id, self.label = data, base, row_id, label
    self.labels = labels or {}
    self.missing: list[str] = []
    self.found: list[str] = []
    self.values: list[Any] = []

  def get_field(self, field_name: str, args: Any, kwargs: Any) -> Any:
    del args, kwargs
    if field_name == '@label':
      return self.label, field_name
    if field_name == '@id':
      return self.row_id, field_name
    path = field_name if field_name.startswith('/') else (
        f'{self.base}/{field_name}' if self.base else field_name)
    path = path.replace('*', self.row_id)
    value = resolve(self.data, path)
    (self.missing if value is _MISSING else self.found).append(path)
    if value is not _MISSING:
      self.values.append(value)
    return value, field_name

  def format_field(self, value: Any, format_spec: str) -> str:
    if value is _MISSING:
      return ''
    scaled = _SCALED_SPEC.match(format_spec)
    if scaled:
      value = value * float(scaled.group(1))
      format_spec = scaled.group(2)
    if value is None:
      return '–'
    if format_spec == 'len':
      return str(len(value))
    text = format(value, format_spec)
    return self.labels.get(text, text)


def _render(data: Any, template: str, base: str, row_id: str, label: str,
            labels: dict[str, str] | None = None,
            ) -> tuple[str, list[str], list[str]]:
  formatter = _PathFormatter(data, base, row_id, label, labels)
  try:
    text = formatter.format(template)
  except (TypeError, ValueError, KeyError) as error:
    raise BenchmarkDataError(
        f'cannot format {template!r} for row {row_id!r}: {error}') from error
  # "{mean} ± {sd}" with both null reads "– ± –": one dash says it.
  if formatter.values and all(value is None for value in formatter.values):
    text = '–'
  return text, formatter.missing, formatter.found


def render(data: Any, template: str, *, base: str = '', row_id: str = '',
           label: str = '', labels: dict[str, str] | None = None,
           ) -> tuple[str, list[str]]:
  """The formatted template and the paths it found missing."""
  text, missing, _ = _render(data, template, base, row_id, label, labels)
  return text, missing


class BenchmarkTable(SphinxDirective):
  """A table whose cells are read from a benchmark results JSON file."""

  required_arguments = 1
  has_content = True
  option_spec: ClassVar[dict[str, Any]] = {
      'caption': directives.unchanged, 'name': directives.unchanged}

  def run(self) -> list[nodes.Node]:
    try:
      return self._run()
    except (BenchmarkDataError, yaml.YAMLError) as error:
      raise self.error(f'benchmark-table {self.arguments[0]}: {error}') from (
          error)

  def _spec(self) -> dict[str, Any]:
    spec = yaml.safe_load('\n'.join(self.content)) or {}
    if not isinstance(spec, dict) or 'columns' not in spec:
      raise BenchmarkDataError('the body must be YAML with a "columns" key')
    unknown = set(spec) - {'base', 'rows', 'columns', 'missing', 'labels'}
    if unknown:
      raise BenchmarkDataError(f'unknown keys {sorted(unknown)}')
    return spec

  def _rows(self, data: Any, spec: dict[str, Any]) -> list[tuple[str, str]]:
    rows = spec.get('rows')
    if isinstance(rows, dict):
      return [(str(key), str(label)) for key, label in rows.items()]
    if isinstance(rows, list):
      return [(str(key), str(key)) for key in rows]
    base = str(spec.get('base', ''))
    if '*' not in base:
      raise BenchmarkDataError('without "rows", "base" must contain "*"')
    parent = resolve(data, base.split('*', 1)[0])
    if isinstance(parent, dict):
      return [(str(key), str(key)) for key in parent]
    if isinstance(parent, list):
      return [(str(index), str(index)) for index in range(len(parent))]
    raise BenchmarkDataError(f'no mapping or list at {base!r}')

  def _run(self) -> list[nodes.Node]:
    path, data = _load(self.env.app, self.arguments[0])
    self.env.note_dependency(str(path))
    spec = self._spec()
    base = str(spec.get('base', ''))
    columns = [(str(header), str(template))
               for header, template in spec['columns'].items()]
    missing_text = spec.get('missing')
    labels = {str(key): str(text)
              for key, text in (spec.get('labels') or {}).items()}
    rows = []
    cells: list[list[str]] = []
    missing_cells: list[tuple[int, int, list[str]]] = []
    for row_id, label in self._rows(data, spec):
      optional = row_id.startswith('?')
      row_id = row_id.removeprefix('?')
      rendered = [_render(data, template, base, row_id, label, labels)
                  for _, template in columns]
      # An optional row appears once its benchmark has written any value.
      if optional and not any(found for _, _, found in rendered):
        continue
      row_cells = []
      for column_index, (text, missing, _) in enumerate(rendered):
        if missing:
          missing_cells.append((len(rows), column_index, missing))
          text = '' if missing_text is None else str(missing_text)
        row_cells.append(text)
      rows.append((row_id, label))
      cells.append(row_cells)
    self._check_missing(rows, columns, missing_cells, missing_text)
    relative = path.relative_to(_results_dir(self.env.app).parent.parent)
    return [self._table(columns, cells, relative)]

  @staticmethod
  def _check_missing(rows, columns, missing_cells, missing_text) -> None:
    if not missing_cells:
      return
    if missing_text is None:
      _, _, paths = missing_cells[0]
      raise BenchmarkDataError(
          f'{len(missing_cells)} cells have no value, e.g. {paths[0]!r} '
          '(set "missing" if some cells are meant to be empty)')
    # A whole row or column absent means stale keys, not a gap in the data.
    for row_index, (row_id, _) in enumerate(rows):
      if sum(1 for r, _, _ in missing_cells if r == row_index) == len(columns):
        raise BenchmarkDataError(f'row {row_id!r} has no values at all')
    for column_index, (header, _) in enumerate(columns):
      if sum(1 for _, c, _ in missing_cells if c == column_index) == len(rows):
        raise BenchmarkDataError(f'column {header!r} has no values at all')

  def _inline(self, text: str) -> list[nodes.Node]:
    parsed, messages = self.state.inline_text(text, self.lineno)
    return [nodes.paragraph('', '', *parsed), *messages]

  def _table(self, columns, cells, relative_path) -> nodes.table:
    table = nodes.table(classes=['benchmark-table'])
    caption = self.options.get('caption')
    title_nodes = self._inline(caption)[0].children if caption else []
    title = nodes.title('', '', *title_nodes)
    title += nodes.Text(' (' if caption else '')
    title += nodes.literal('', str(relative_path))
    title += nodes.Text(')' if caption else '')
    table += title
    group = nodes.tgroup(cols=len(columns))
    table += group
    for _ in columns:
      group += nodes.colspec(colwidth=1)
    head = nodes.thead()
    group += head
    header_row = nodes.row()
    for header, _ in columns:
      header_row += nodes.entry('', *self._inline(header))
    head += header_row
    body = nodes.tbody()
    group += body
    for row_cells in cells:
      row = nodes.row()
      for text in row_cells:
        row += nodes.entry('', *self._inline(text))
      body += row
    if 'name' in self.options:
      self.add_name(table)
    return table


class BenchmarkValue(SphinxRole):
  """One number from a benchmark JSON file: ``FILE TEMPLATE``."""

  def run(self) -> tuple[list[nodes.Node], list[nodes.system_message]]:
    name, _, template = self.text.strip().partition(' ')
    try:
      path, data = _load(self.env.app, name)
      text, missing = render(data, template.strip())
      if missing:
        raise BenchmarkDataError(f'no value at {missing[0]!r}')
    except BenchmarkDataError as error:
      message = self.inliner.reporter.error(
          f'bench {self.text!r}: {error}', line=self.lineno)
      return [nodes.problematic(self.rawtext, self.rawtext)], [message]
    self.env.note_dependency(str(path))
    return [nodes.Text(text)], []


def setup(app: Sphinx) -> dict[str, object]:
  app.add_config_value('benchmark_results_dir', '../benchmarks/results', 'env')
  app.add_directive('benchmark-table', BenchmarkTable)
  app.add_role('bench', BenchmarkValue())
  return {'version': '1.0', 'parallel_read_safe': True,
          'parallel_write_safe': True}
