"""Builds the documentation site and checks what a reader relies on.

One Sphinx build (``sphinx-build -W``, warnings as errors, notebooks
executed) into a temporary directory, then checks on its HTML: every name in
``multiscale_optax.__all__`` has an API page with its anchor, every internal
link and image resolves, every gallery notebook shows a figure, maths is
marked up for MathJax, MathJax is served with the site (no page loads an
external script) and, where a Chromium is installed, typesets the maths
offline, and the benchmark tables show the numbers of their JSON files. The Python snippets on the pages run as written.
"""

from __future__ import annotations

import html.parser
import json
import pathlib
import re
import shutil
import subprocess
import sys
import urllib.parse

import pytest
import sphinx  # noqa: F401  (the docs are part of `.[test]`: fail, never skip)
import yaml

import multiscale_optax

REPO = pathlib.Path(__file__).resolve().parent.parent
DOCS = REPO / 'docs'
RESULTS = REPO / 'benchmarks' / 'results'
BUILD_TIMEOUT_S = 900

sys.path.insert(0, str(DOCS / '_ext'))
import benchmark_tables  # noqa: E402


class _Page(html.parser.HTMLParser):
  """The ids, links and image sources of one HTML page."""

  def __init__(self):
    super().__init__()
    self.ids: set[str] = set()
    self.links: list[str] = []
    self.images: list[str] = []
    self.classes: list[str] = []

  def handle_starttag(self, tag, attrs):
    attributes = dict(attrs)
    for key in ('id', 'name'):
      if attributes.get(key):
        self.ids.add(attributes[key])
    if attributes.get('class'):
      self.classes.append(attributes['class'])
    if tag == 'a' and attributes.get('href'):
      self.links.append(attributes['href'])
    if tag == 'img' and attributes.get('src'):
      self.images.append(attributes['src'])


def _build(out: pathlib.Path, doctrees: pathlib.Path) -> None:
  command = [sys.executable, '-m', 'sphinx', '-W', '--keep-going', '-q',
             '-b', 'html', '-d', str(doctrees), str(DOCS), str(out)]
  result = subprocess.run(command, capture_output=True, text=True,
                          timeout=BUILD_TIMEOUT_S, cwd=REPO, check=False)
  warnings = [line for line in result.stderr.splitlines()
              if 'WARNING' in line or 'ERROR' in line]
  assert result.returncode == 0, (
      f'sphinx-build failed ({result.returncode}):\n' + '\n'.join(
          warnings or result.stderr.splitlines()[-40:]))


def _parse(site: pathlib.Path) -> dict[pathlib.Path, _Page]:
  parsed = {}
  for path in site.rglob('*.html'):
    if {'_static', '_sources'} & set(path.relative_to(site).parts):
      continue
    page = _Page()
    page.feed(path.read_text(encoding='utf-8'))
    parsed[path] = page
  return parsed


def _api_problems(site, pages) -> list[str]:
  """Every public name has a page with its anchor, linked from api.html."""
  api = pages[site / 'api.html']
  api_targets = {urllib.parse.urlsplit(link).path for link in api.links}
  problems = []
  for name in multiscale_optax.__all__:
    page_name = f'_autosummary/multiscale_optax.{name}.html'
    path = site / page_name
    if path not in pages:
      problems.append(f'no API page for {name}')
      continue
    if f'multiscale_optax.{name}' not in pages[path].ids:
      problems.append(f'{page_name} has no anchor multiscale_optax.{name}')
    if page_name not in api_targets:
      problems.append(f'{page_name} is not linked from api.html')
  return problems


def _link_problems(site, pages) -> list[str]:
  """Every relative href (with its #anchor) and image source resolves."""
  problems = []
  for path, page in pages.items():
    for link in page.links + page.images:
      parts = urllib.parse.urlsplit(link)
      if parts.scheme or parts.netloc:
        continue
      target = (path.parent / urllib.parse.unquote(parts.path)).resolve() if (
          parts.path) else path
      where = f'{path.relative_to(site)}: {link}'
      if not target.exists():
        problems.append(f'{where} (no such file)')
      elif parts.fragment and target.suffix == '.html':
        target_page = pages.get(target)
        if target_page is None or parts.fragment not in target_page.ids:
          problems.append(f'{where} (no such anchor)')
  return problems


def _gallery_problems(site, pages) -> list[str]:
  """Every notebook has a gallery page showing an executed figure."""
  notebooks = sorted((REPO / 'notebooks').glob('*.ipynb'))
  if not notebooks:
    return ['no notebooks found']
  index = pages[site / 'gallery' / 'index.html']
  problems = []
  for notebook in notebooks:
    page = site / 'gallery' / f'{notebook.stem}.html'
    if page not in pages:
      problems.append(f'{notebook.name} has no gallery page')
      continue
    if f'{notebook.stem}.html' not in index.links:
      problems.append(f'{notebook.name} is not listed in gallery/index.html')
    # Executed outputs are written to _images/ as the notebook runs.
    if not any('_images/' in src for src in pages[page].images):
      problems.append(f'{notebook.name}: no figure output on its page')
  return problems


_SCRIPT_SOURCE = re.compile(r'<script[^>]*\bsrc="([^"]+)"', re.I)


def _math_problems(site, pages) -> list[str]:
  """Maths is marked up, and MathJax is served with the pages, not a CDN."""
  text = (site / '_autosummary' / 'multiscale_optax.multiscale.html'
          ).read_text(encoding='utf-8')
  problems = []
  if not re.search(r'class="math[^"]*">\s*\\\[', text):
    problems.append('no display math on the multiscale page')
  if not re.search(r'class="math[^"]*">\\\(', text):
    problems.append('no inline math on the multiscale page')
  mathjax = [source for source in _SCRIPT_SOURCE.findall(text)
             if 'mathjax' in source.lower()]
  if not mathjax:
    problems.append('the API pages load no MathJax')
  for path in pages:
    for source in _SCRIPT_SOURCE.findall(path.read_text(encoding='utf-8')):
      parts = urllib.parse.urlsplit(source)
      if parts.scheme or parts.netloc:
        problems.append(f'{path.relative_to(site)} loads an external script: '
                        f'{source}')
  page = site / '_autosummary' / 'multiscale_optax.multiscale.html'
  for source in mathjax:
    script = (page.parent / urllib.parse.urlsplit(source).path).resolve()
    if not script.is_file() or 'MathJax' not in script.read_text(
        encoding='utf-8', errors='replace'):
      problems.append(f'{source}: not a MathJax script shipped with the site')
  fonts = site / '_static' / 'mathjax' / 'output' / 'chtml' / 'fonts'
  if not any(fonts.rglob('*.woff')):
    problems.append('MathJax fonts are not shipped with the site')
  return problems


def _chromium() -> str | None:
  return next((found for name in ('chromium', 'chromium-browser',
                                  'google-chrome') if (found := shutil.which(
                                      name))), None)


def _rendered_math_problems(site) -> list[str]:
  """In a browser, offline, MathJax typesets the page's maths."""
  browser = _chromium()
  if browser is None:
    return []  # The static checks above still ran; no browser to render.
  page = site / '_autosummary' / 'multiscale_optax.multiscale.html'
  result = subprocess.run(
      [browser, '--headless', '--no-sandbox', '--disable-gpu',
       # No network: a script from a CDN would fail to load.
       '--proxy-server=127.0.0.1:9', '--proxy-bypass-list=<-loopback>',
       '--virtual-time-budget=15000', '--dump-dom', page.as_uri()],
      capture_output=True, text=True, timeout=120, check=False)
  containers = result.stdout.count('<mjx-container')
  if containers < 2:
    return [f'MathJax typeset {containers} formulas on {page.name} offline '
            f'(browser exit {result.returncode})']
  return []


def _table_problems(site) -> list[str]:
  """The speed page shows the numbers of its JSON files."""
  speed = (site / 'speed.html').read_text(encoding='utf-8')
  problems = []
  if speed.count('benchmark-table') < 4:
    problems.append('speed.html has fewer than 4 benchmark tables')
  cpu = json.loads((RESULTS / 'step_speed.json').read_text())
  rows = {row['id']: row for row in cpu['rows']}
  for name in ('sgd_momentum_0.9', 'multiscale_k1', 'multiscale_k8'):
    if f"{rows[f'n10000000/{name}']['median_ms']:.2f}" not in speed:
      problems.append(f'CPU median of {name} not on speed.html')
  gpu = json.loads((RESULTS / 'step_speed_h200.json').read_text())
  provenance = gpu['config']['provenance']
  if not ('NVIDIA H200' in provenance and 'not re-measured' in provenance):
    problems.append('step_speed_h200.json does not state its provenance')
  for row in gpu['rows']:
    if ('ratio_to_momentum' in row
        and f"{row['ratio_to_momentum']:.3f}" not in speed):
      problems.append(f"H200 ratio of {row['id']} not on speed.html")
  return problems


@pytest.mark.docs
@pytest.mark.notebooks
def test_site_builds_and_its_pages_hold_together(tmp_path):
  # One build for all checks: a module fixture would build once per
  # pytest-xdist worker, concurrently, into the same docs/ source tree.
  site = tmp_path / 'html'
  _build(site, tmp_path / 'doctrees')
  pages = _parse(site)
  problems = (_api_problems(site, pages) + _link_problems(site, pages)
              + _gallery_problems(site, pages) + _math_problems(site, pages)
              + _rendered_math_problems(site) + _table_problems(site))
  assert not problems, '\n'.join(problems)


# Pages whose code blocks are not meant to run as they stand, and why.
EXCERPT_PAGES = {
    # Excerpts of tests/_multiprocess_worker.py, which
    # tests/test_multiprocess.py runs in two processes.
    'scaling_out.md': 'excerpts of a tested script',
    # Its second and third blocks use a model, inputs and labels of the
    # reader's own (apply_fn's params, x, y, label).
    'bayesian_multiscale.md': 'fragments with the reader\'s own model',
}
_PAGES = [path for path in sorted(DOCS.glob('*.md'))
          if path.name not in EXCERPT_PAGES]


def _snippets(page: pathlib.Path) -> list[str]:
  return re.findall(r'```python\n(.*?)```', page.read_text(), re.S)


def test_pages_have_snippets():
  assert sum(len(_snippets(page)) for page in _PAGES) >= 4


# A page reads top to bottom: its snippets run in order, in one namespace.
@pytest.mark.parametrize('page', _PAGES, ids=lambda page: page.name)
def test_page_snippets_run(page):
  namespace: dict[str, object] = {}
  for index, block in enumerate(_snippets(page)):
    exec(compile(block, f'{page.name}[{index}]', 'exec'), namespace)


# The renderer's own tests are in
# tests/benchmarks/test_benchmarks_harness.py; here, that every results file
# the pages name renders.
def test_every_table_and_value_on_the_pages_renders():
  count = 0
  for page in sorted(DOCS.glob('*.md')):
    text = page.read_text()
    for name, body in re.findall(
        r'```\{benchmark-table\} (\S+)\n(.*?)\n```', text, re.S):
      spec = yaml.safe_load('\n'.join(
          line for line in body.split('\n') if not line.startswith(':')))
      data = benchmark_tables.load(RESULTS / name)
      assert benchmark_tables.table_cells(data, spec), (page.name, name)
      count += 1
    for role in re.findall(r'\{bench\}`([^`]*)`', text):
      name, row_id, template = role.split(' ', 2)
      benchmark_tables.value_text(benchmark_tables.load(RESULTS / name),
                                  row_id, template)
      count += 1
  assert count >= 80


def test_link_check_finds_missing_files_and_anchors(tmp_path):
  (tmp_path / 'sub').mkdir()
  (tmp_path / 'a.html').write_text(
      '<a href="sub/b.html#here">ok</a> <a href="sub/b.html#gone">anchor</a>'
      '<a href="c.html">file</a> <a href="#top">self</a>'
      '<a href="https://example.org/x.html">external</a>'
      '<img src="sub/missing.png"><p id="top"></p>')
  (tmp_path / 'sub' / 'b.html').write_text('<h1 id="here">B</h1>')
  problems = _link_problems(tmp_path, _parse(tmp_path))
  assert sorted(problems) == [
      'a.html: c.html (no such file)',
      'a.html: sub/b.html#gone (no such anchor)',
      'a.html: sub/missing.png (no such file)',
  ]


# --- Measured numbers are rendered, never typed ---------------------------

RESULTS_PAGES = ('online_benchmarks.md', 'bayes_optimal.md',
                 'bayesian_multiscale.md', 'river_datasets.md',
                 'plasticity.md', 'speed.md', 'numerics.md',
                 'observations.md')

# What is not prose: blanked out (newlines kept, so line numbers hold).
_FENCE = re.compile(r'^\s*(`{3,}|~{3,}|:{3,})')
_NOT_PROSE = [re.compile(pattern, re.S) for pattern in (
    r'<!--.*?-->',                      # comments
    r'\$\$.*?\$\$',                     # display maths
    r'\$[^$\n](?:[^$]|\n(?!\s*\n))*?\$',  # inline maths, within a paragraph
    r'\{[\w:.-]+\}`[^`]*`',             # roles: {bench}, {doc}, {term}, ...
    r'``.*?``|`[^`]*`',                 # inline code
    r'!?\[[^\]]*\]\([^)]*\)',           # links and images
    r'<https?://[^>]*>|https?://\S+',   # bare links
)]

# A measurement-like number: a decimal with two or more significant digits
# (0.277, 1.05, 91.6; not 0.5 or 0.001), a percentage, or a ratio (3×, 2x).
# Dotted versions (river 0.26.1) and sizes (8×8) are not numbers of this kind.
_NUMBER = re.compile(
    r'(?<![\w.])(?:'
    r'(?P<percent>\d+(?:\.\d+)?\s?%)'
    r'|(?P<ratio>\d+(?:\.\d+)?(?:\s?[–-]\s?\d+(?:\.\d+)?)?\s?(?:×|x\b)'
    r'(?!\s?\d))'
    r'|(?P<decimal>\d+\.\d+)(?![\w.]*\d)'  # not a version (0.26.1)
    r')')

# Numbers in prose that are not measurements, each pattern with its reason:
# a pattern matches the number with the words that say what it is; every
# other hit is a claim about a measurement.
_TARGET_THRESHOLD = (
    r'\b(?:[Tt]argets?|[Gg]oals?)\b(?:'
    # ... then, later in the sentence, a comparison,
    r'(?:[^.;]|\.(?=\d))*?(?:\b(?:within|at most|at least|no more than'
    r'|at or below|at or above)|[≤≥])'
    # ... or right after it ("goal 1.015", "the targets were 1.005").
    r'|(?:\s+(?:of|was|were|is|are))?\s*\(?'
    r')\s*\d+(?:\.\d+)?\s?[%×]?')
MEASUREMENT_LIKE_ALLOWED = {
    # "first 10%", "last 20% of the steps": the window a metric averages
    # over (plasticity's first/last 10% of the tasks, the rotation RMSE's
    # last 20%), part of the metric's definition.
    r'\b(?:first|last)\s+\d+\s?%|\b\d+\s?% of the tasks': 'metric window',
    # A target stated as a threshold: a sentence that names a target or goal,
    # then the threshold ("Target: rank 10 within 2% of ...", "the goal (at
    # most 1.5 times Adam's)", "the goal of 0.24", "the targets were
    # 1.005"). Whether it is met is a measurement, rendered beside it.
    _TARGET_THRESHOLD: 'target threshold',
}


def _prose(text: str) -> str:
  """``text`` with everything but prose replaced by spaces."""
  def blank(match: re.Match) -> str:
    return re.sub(r'[^\n]', ' ', match.group(0))

  lines, fence = text.split('\n'), None
  for index, line in enumerate(lines):
    found = _FENCE.match(line)
    if fence is None and found:
      fence = found.group(1)
    elif fence is None:
      continue
    elif (found and found.group(1)[0] == fence[0]
          and len(found.group(1)) >= len(fence) and not line[
              found.end():].strip()):
      fence = None
    lines[index] = ''
  text = '\n'.join(lines)
  for pattern in _NOT_PROSE:
    text = pattern.sub(blank, text)
  return text


def _significant_digits(decimal: str) -> int:
  return len(decimal.replace('.', '').lstrip('0'))


def typed_measurements(text: str) -> list[tuple[int, str]]:
  """(line number, number) of each measurement-like number in the prose."""
  prose = _prose(text)
  allowed = [match.span() for pattern in MEASUREMENT_LIKE_ALLOWED
             for match in re.finditer(pattern, prose)]
  found = []
  for match in _NUMBER.finditer(prose):
    if match.group('decimal') and _significant_digits(
        match.group('decimal')) < 2:
      continue
    if any(start <= match.start() and match.end() <= end
           for start, end in allowed):
      continue
    found.append((prose.count('\n', 0, match.start()) + 1,
                  match.group(0).strip()))
  return found


def test_measured_claims_are_rendered_not_typed():
  """No results page types a measured number into its prose.

  A measured number reaches a page only through the `bench` role or a
  `benchmark-table` block (docs/_ext/benchmark_tables.py), so that it
  follows the JSON when a benchmark is rerun. The rule, kept simple: in
  prose (outside code blocks, fenced directives such as tables and figures,
  maths, roles, inline code and links), no decimal with two or more
  significant digits (0.277, 1.05, 91.6), no percentage and no ratio
  written as a number followed by × or x. Numbers that are not measurements
  (a metric's name, a target stated as a threshold) are allowed only by the
  patterns in MEASUREMENT_LIKE_ALLOWED, each with its reason; say a
  measurement in words (near chance, several points) or render it.
  """
  problems = []
  for name in RESULTS_PAGES:
    lines = (DOCS / name).read_text(encoding='utf-8').split('\n')
    for number, value in typed_measurements('\n'.join(lines)):
      problems.append(f'docs/{name}:{number}: {value!r} in: '
                      f'{lines[number - 1].strip()}')
  assert not problems, ('measured numbers typed by hand (render them with '
                        '{bench}, or state them without digits):\n'
                        + '\n'.join(problems))


def test_claim_checker_sees_prose_only():
  page = '\n'.join([
      'Adam reached 91.6 % and was 2× slower, 0.277 in all.',
      '{bench}`x.json row {a:.3f}` and `0.25` and $0.25$ and',
      '[1.05](https://example.org/1.05) river 0.26.1, an 8×8 image, δ = 0.1',
      '```{benchmark-table} x.json',
      'columns: {a: "0.99"}',
      '```',
      'first 10% and 3.5x, maths $x =',
      '1.25$ over two lines.',
      '$$',
      'x = 1.25',
      '$$',
      'The goal (at most 1.5 times Adam\'s) is missed: 2.31 times. Within 2%.',
      'The targets were 1.005 and the last',
      '10% of the tasks.',
  ])
  assert typed_measurements(page) == [
      (1, '91.6 %'), (1, '2×'), (1, '0.277'), (7, '3.5x'), (12, '2.31'),
      (12, '2%')]
