r"""Tables and numbers rendered from ``benchmarks/results/*.json``.

A page never retypes a measured number: it names the results file and what
to show, and this extension formats it at build time. Every results file has
the one schema of ``benchmarks/harness.py``: ``config``, ``machine`` and a
list of flat ``rows``, each with a unique ``id`` and a plain ``label``.

The ``benchmark-table`` directive shows one row of the file per table row::

  ```{benchmark-table} online_1f.json
  :caption: text
  where:              # optional: keep rows whose fields equal all of these
    setting: main_d1_r1_m5
  rows:               # optional: id -> label shown (selects and orders;
    kalman: exact Kalman filter   # a list keeps the rows' own labels);
                                  # "?id": left out if there is no such row
  columns:            # header -> Python format template over the row
    learner: "{label}"
    ratio: "{ratio.mean:.3f} ± {ratio.sd:.3f}"
    accuracy: "{accuracy.mean:*100:.1f}"
  missing: "–"        # optional: text for absent fields (default: error)
  ```

A template's fields are dotted paths into the row (``{ratio.mean}``);
``{label}`` is the label ``rows:`` gives, else the row's own. Besides
Python's format specs there are ``*N:spec`` (scale by N first), ``len`` (a
list's length) and ``yesno`` (a boolean as yes/no). A ``null`` value shows as
``–``, and a cell whose every value is ``null`` is one ``–``.

Tables that set rows against columns from different rows (one column per
setting, per stream, per size) name the field that joins them with ``key:``
and give such a column its own ``where``; ``rows:`` then lists key values::

  key: learner
  where: {setting: main_d1_r1_m5}
  columns:
    learner: "{label}"
    d = 10: {format: "{ratio.mean:.3f}", where: {setting: main_d10_r1_m5}}

A column's ``where`` replaces the table's for the fields it names; its cell
comes from the one row with the table row's key that matches it.

The ``bench`` role puts one value into prose: a file, a row id and a
template, ``{bench}`online_1f.json main_d1_r1_m5/sgd {ratio.mean:.3f}```.
The row ids ``config`` and ``machine`` address those blocks, and
``document`` the file's top level (``{seconds}``, ``{command}``).

A field the file lacks fails the build (:class:`BenchmarkDataError`), so a
page cannot keep showing a number its benchmark no longer writes.
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

_ABSENT = object()
_SCALED = re.compile(r'^\*([^:]+):(.*)$')
_BLOCKS = ('config', 'machine', 'document')


class BenchmarkDataError(ValueError):
  """A file, row or field the page names is not in the results."""


def load(path: pathlib.Path) -> dict[str, Any]:
  if not path.is_file():
    raise BenchmarkDataError(f'benchmark results file not found: {path}')
  data = json.loads(path.read_text(encoding='utf-8'))
  if not isinstance(data, dict) or not isinstance(data.get('rows'), list):
    raise BenchmarkDataError(f'{path.name} is not in the results schema')
  return data


def lookup(record: Any, path: str) -> Any:
  """The value at dotted ``path`` in ``record``; ``_ABSENT`` if none."""
  value = record
  for part in path.split('.'):
    if (part == 'sd' and isinstance(value, dict)
        and len(value.get('values', [None, None])) < 2):
      return None  # one seed or one series: the spread is undefined
    if isinstance(value, dict) and part in value:
      value = value[part]
    elif isinstance(value, list) and re.fullmatch(r'-?\d+', part):
      index = int(part)
      if not -len(value) <= index < len(value):
        return _ABSENT
      value = value[index]
    else:
      return _ABSENT
  return value


def _equal(actual: Any, expected: Any) -> bool:
  if isinstance(actual, bool) or isinstance(expected, bool):
    return actual is expected or str(actual) == str(expected)
  if isinstance(actual, (int, float)) and isinstance(expected, (int, float)):
    return float(actual) == float(expected)
  return str(actual) == str(expected)


def matches(row: dict[str, Any], where: dict[str, Any]) -> bool:
  return all(_equal(lookup(row, field), value)
             for field, value in where.items())


class _RowFormatter(string.Formatter):
  """Formats a template over one row's fields."""

  def __init__(self, row: dict[str, Any]):
    super().__init__()
    self.row = row
    self.absent: list[str] = []
    self.values: list[Any] = []

  def get_field(self, field_name: str, args: Any, kwargs: Any) -> Any:
    del args, kwargs
    value = lookup(self.row, field_name)
    if value is _ABSENT:
      self.absent.append(field_name)
    else:
      self.values.append(value)
    return value, field_name

  def format_field(self, value: Any, format_spec: str) -> str:
    if value is _ABSENT:
      return ''
    scaled = _SCALED.match(format_spec)
    if scaled and value is not None:
      value = value * float(scaled.group(1))
    if scaled:
      format_spec = scaled.group(2)
    if value is None:
      return '–'
    if format_spec == 'len':
      return str(len(value))
    if format_spec == 'yesno':
      return 'yes' if value else 'no'
    if value in ('inf', '-inf', 'nan') and format_spec:
      value = float(value)  # how results files write non-finite numbers
    return format(value, format_spec)


def render(row: dict[str, Any], template: str) -> tuple[str, list[str]]:
  """``template`` formatted over ``row``, and the fields it lacks."""
  formatter = _RowFormatter(row)
  try:
    text = formatter.format(template)
  except (TypeError, ValueError, KeyError, IndexError) as error:
    raise BenchmarkDataError(
        f'cannot format {template!r} for row {row.get("id")!r}: {error}'
    ) from error
  if formatter.values and all(v is None for v in formatter.values):
    # A learner that diverged on every seed has no mean: say so.
    text = 'diverged' if row.get('diverged_seeds') else '–'
  # An undefined spread is left out rather than printed as a number.
  text = text.replace(' ± –', '')
  return text, formatter.absent


def _results_dir(app: Sphinx) -> pathlib.Path:
  return (pathlib.Path(app.srcdir) / app.config.benchmark_results_dir
          ).resolve()


class BenchmarkTable(SphinxDirective):
  """A table whose cells are formatted from a results file's rows."""

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

  def _run(self) -> list[nodes.Node]:
    path = (_results_dir(self.env.app) / self.arguments[0]).resolve()
    data = load(path)
    self.env.note_dependency(str(path))
    spec = yaml.safe_load('\n'.join(self.content)) or {}
    if not isinstance(spec, dict) or 'columns' not in spec:
      raise BenchmarkDataError('the body must be YAML with a "columns" key')
    unknown = set(spec) - {'where', 'key', 'rows', 'columns', 'missing'}
    if unknown:
      raise BenchmarkDataError(f'unknown keys {sorted(unknown)}')
    cells = table_cells(data, spec)
    relative = path.relative_to(_results_dir(self.env.app).parent.parent)
    return [self._table(list(spec['columns']), cells, relative)]

  def _inline(self, text: str) -> list[nodes.Node]:
    parsed, messages = self.state.inline_text(text, self.lineno)
    return [nodes.paragraph('', '', *parsed), *messages]

  def _table(self, headers, cells, relative_path) -> nodes.table:
    table = nodes.table(classes=['benchmark-table'])
    caption = self.options.get('caption')
    title_nodes = self._inline(caption)[0].children if caption else []
    title = nodes.title('', '', *title_nodes)
    title += nodes.Text(' (' if caption else '')
    title += nodes.literal('', str(relative_path))
    title += nodes.Text(')' if caption else '')
    table += title
    group = nodes.tgroup(cols=len(headers))
    table += group
    for _ in headers:
      group += nodes.colspec(colwidth=1)
    head = nodes.thead()
    group += head
    header_row = nodes.row()
    for header in headers:
      header_row += nodes.entry('', *self._inline(str(header)))
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


def table_cells(data: dict[str, Any], spec: dict[str, Any]) -> list[list[str]]:
  """The cell texts of a ``benchmark-table`` body ``spec`` over ``data``."""
  key = str(spec.get('key', 'id'))
  where = dict(spec.get('where') or {})
  missing = spec.get('missing')
  columns = []
  for header, column in spec['columns'].items():
    if isinstance(column, dict):
      columns.append((str(header), str(column['format']),
                      {**where, **(column.get('where') or {})}))
    else:
      columns.append((str(header), str(column), where))
  selected = [row for row in data['rows'] if matches(row, where)]
  if spec.get('rows') is None:
    wanted = [(str(lookup(row, key)), None) for row in selected]
  elif isinstance(spec['rows'], list):
    wanted = [(str(k), None) for k in spec['rows']]
  else:
    wanted = [(str(k), None if v is None else str(v))
              for k, v in spec['rows'].items()]
  cells, seen = [], [False] * len(columns)
  for wanted_key, label in wanted:
    optional = wanted_key.startswith('?')
    wanted_key = wanted_key.removeprefix('?')
    base = _one(data, key, wanted_key, where)
    if base is None:
      if optional:
        continue
      if missing is None:
        raise BenchmarkDataError(f'no row with {key} {wanted_key!r} where '
                                 f'{where}')
    row_cells = []
    for index, (header, template, column_where) in enumerate(columns):
      row = base if column_where == where else _one(
          data, key, wanted_key, column_where)
      absent = ['(no such row)']
      text = ''
      if row is not None or label is not None:
        shown = {**(row or {}), **({} if label is None else {'label': label})}
        text, absent = render(shown, template)
      if absent:
        if missing is None:
          raise BenchmarkDataError(
              f'row {wanted_key!r}, column {header!r}: no {absent[0]!r} '
              '(set "missing" if some cells are meant to be empty)')
        text = str(missing)
      else:
        seen[index] = True
      row_cells.append(text)
    cells.append(row_cells)
  for (header, _, _), found in zip(columns, seen, strict=True):
    if cells and not found:
      raise BenchmarkDataError(f'column {header!r} has no values at all')
  return cells


def _one(data: dict[str, Any], key: str, value: str,
         where: dict[str, Any]) -> dict[str, Any] | None:
  found = [row for row in data['rows']
           if str(lookup(row, key)) == value and matches(row, where)]
  if len(found) > 1:
    raise BenchmarkDataError(f'{len(found)} rows with {key} {value!r} where '
                             f'{where}: add to "where"')
  return found[0] if found else None


def value_text(data: dict[str, Any], row_id: str, template: str) -> str:
  """The ``bench`` role's text: ``template`` over one row or block."""
  if row_id in _BLOCKS:
    record = data if row_id == 'document' else data.get(row_id) or {}
  else:
    record = _one(data, 'id', row_id, {})
    if record is None:
      raise BenchmarkDataError(f'no row {row_id!r}')
  text, absent = render(record, template)
  if absent:
    raise BenchmarkDataError(f'row {row_id!r} has no {absent[0]!r}')
  return text


class BenchmarkValue(SphinxRole):
  """One value from a results file: ``FILE ROW TEMPLATE``."""

  def run(self) -> tuple[list[nodes.Node], list[nodes.system_message]]:
    name, row_id, template = [*self.text.strip().split(' ', 2), '', ''][:3]
    try:
      path = (_results_dir(self.env.app) / name).resolve()
      text = value_text(load(path), row_id, template.strip())
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
  return {'version': '2.0', 'parallel_read_safe': True,
          'parallel_write_safe': True}
