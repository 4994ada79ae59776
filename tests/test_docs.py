"""Builds the documentation site and checks what a reader relies on.

One Sphinx build (``sphinx-build -W``, warnings as errors, notebooks
executed) into a temporary directory, then checks on its HTML: every name in
``multiscale_optax.__all__`` has an API page with its anchor, every internal
link and image resolves, every gallery notebook shows a figure, math is
marked up for MathJax, and the benchmark tables show the numbers of their
JSON files. The Python snippets on the pages run as written.
"""

from __future__ import annotations

import html.parser
import json
import pathlib
import re
import subprocess
import sys
import urllib.parse

import pytest
import sphinx  # noqa: F401  (the docs are part of `.[test]`: fail, never skip)

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


@pytest.fixture(scope='module')
def site(tmp_path_factory) -> pathlib.Path:
  """The built HTML site (built once for this module)."""
  root = tmp_path_factory.mktemp('docs')
  out = root / 'html'
  command = [sys.executable, '-m', 'sphinx', '-W', '--keep-going', '-q',
             '-b', 'html', '-d', str(root / 'doctrees'), str(DOCS), str(out)]
  result = subprocess.run(command, capture_output=True, text=True,
                          timeout=BUILD_TIMEOUT_S, cwd=REPO, check=False)
  warnings = [line for line in result.stderr.splitlines()
              if 'WARNING' in line or 'ERROR' in line]
  assert result.returncode == 0, (
      f'sphinx-build failed ({result.returncode}):\n' + '\n'.join(
          warnings or result.stderr.splitlines()[-40:]))
  return out


@pytest.fixture(scope='module')
def pages(site) -> dict[pathlib.Path, _Page]:
  parsed = {}
  for path in site.rglob('*.html'):
    if {'_static', '_sources'} & set(path.relative_to(site).parts):
      continue
    page = _Page()
    page.feed(path.read_text(encoding='utf-8'))
    parsed[path] = page
  return parsed


def test_every_public_name_has_an_api_page(site, pages):
  api = pages[site / 'api.html']
  api_targets = {urllib.parse.urlsplit(link).path for link in api.links}
  missing_pages, missing_anchors, unlisted = [], [], []
  for name in multiscale_optax.__all__:
    page_name = f'_autosummary/multiscale_optax.{name}.html'
    path = site / page_name
    if path not in pages:
      missing_pages.append(name)
      continue
    if f'multiscale_optax.{name}' not in pages[path].ids:
      missing_anchors.append(name)
    if page_name not in api_targets:
      unlisted.append(name)
  assert not missing_pages, f'no API page for {missing_pages}'
  assert not missing_anchors, f'API pages without an anchor: {missing_anchors}'
  assert not unlisted, f'not linked from api.html: {unlisted}'


def test_internal_links_and_images_resolve(site, pages):
  broken = []
  for path, page in pages.items():
    for link in page.links + page.images:
      parts = urllib.parse.urlsplit(link)
      if parts.scheme or parts.netloc or link.startswith('mailto:'):
        continue
      target = (path.parent / urllib.parse.unquote(parts.path)).resolve() if (
          parts.path) else path
      if not target.exists():
        broken.append(f'{path.relative_to(site)}: {link} (no file)')
      elif parts.fragment and target.suffix == '.html':
        target_page = pages.get(target)
        if target_page is None or parts.fragment not in target_page.ids:
          broken.append(f'{path.relative_to(site)}: {link} (no anchor)')
  assert not broken, 'broken internal references:\n' + '\n'.join(broken)


def test_every_notebook_is_in_the_gallery_with_a_figure(site, pages):
  notebooks = sorted((REPO / 'notebooks').glob('*.ipynb'))
  assert notebooks
  gallery_index = pages[site / 'gallery' / 'index.html']
  without_figure = []
  for notebook in notebooks:
    page = site / 'gallery' / f'{notebook.stem}.html'
    assert page in pages, f'{notebook.name} is not in the gallery'
    assert f'{notebook.stem}.html' in gallery_index.links
    # Executed outputs are copied to _images/ (committed PNGs are not).
    outputs = [src for src in pages[page].images if '_images/' in src]
    if not outputs:
      without_figure.append(notebook.name)
  assert not without_figure, f'no figure output on the page: {without_figure}'


def test_math_is_marked_up_for_mathjax(site, pages):
  text = (site / '_autosummary' / 'multiscale_optax.multiscale.html'
          ).read_text(encoding='utf-8')
  assert 'mathjax' in text.lower()
  assert re.search(r'class="math[^"]*">\\\[', text), 'no display math'
  assert re.search(r'class="math[^"]*">\\\(', text), 'no inline math'


def test_benchmark_tables_show_their_json(site, pages):
  speed = (site / 'speed.html').read_text(encoding='utf-8')
  assert speed.count('benchmark-table') >= 4
  cpu = json.loads((RESULTS / 'step_speed.json').read_text())
  optimizers = next(r for r in cpu['results']
                    if r['size'] == 50000000)['optimizers']
  for name in ('sgd_momentum_0.9', 'multiscale_k1', 'multiscale_k8'):
    assert f"{optimizers[name]['median_ms']:.2f}" in speed, name
  gpu = json.loads((RESULTS / 'step_speed_h200.json').read_text())
  assert 'NVIDIA H200' in gpu['provenance'] and 'not re-measured' in (
      gpu['provenance'])
  for entry in gpu['optimizers'].values():
    assert f"{entry['ratio_to_momentum']:.3f}" in speed


_SNIPPETS = [
    (path.name, block) for path in sorted(DOCS.glob('*.md'))
    for block in re.findall(r'```python\n(.*?)```', path.read_text(), re.S)]


def test_pages_have_snippets():
  assert len(_SNIPPETS) >= 4


@pytest.mark.parametrize('page,block', _SNIPPETS,
                         ids=[f'{p}-{i}' for i, (p, _) in enumerate(_SNIPPETS)])
def test_snippet_runs(page, block):
  exec(compile(block, page, 'exec'), {})


_DATA = {'results': [{'size': 10, 'rows': {'a b': {'x': 0.25}}},
                     {'size': 20, 'rows': {'a b': {'x': None}}}],
         'names': ['first', 'second']}


@pytest.mark.parametrize('template,expected', [
    ('{/results/[size=10]/rows/a b/x:.2f}', '0.25'),
    ('{/results/0/rows/a b/x:*100:.0f} %', '25 %'),
    ('{/results/[size=20]/rows/a b/x:.2f}', '–'),
    ('{/names:len}', '2'),
    ('{/names/-1}', 'second'),
])
def test_benchmark_paths(template, expected):
  text, missing = benchmark_tables.render(_DATA, template)
  assert (text, missing) == (expected, [])


def test_benchmark_paths_report_missing_and_ambiguous_values():
  _, missing = benchmark_tables.render(_DATA, '{/results/[size=30]/rows}')
  assert missing == ['/results/[size=30]/rows']
  _, missing = benchmark_tables.render(_DATA, '{/results/0/rows/b/x}')
  assert missing == ['/results/0/rows/b/x']
  with pytest.raises(benchmark_tables.BenchmarkDataError, match='matches 2'):
    benchmark_tables.render({'r': [{'a': 1}, {'a': 1}]}, '{/r/[a=1]}')
