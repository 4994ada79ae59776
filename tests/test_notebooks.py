"""Checks how the notebooks in ``notebooks/`` are stored.

The notebooks are executed once per CI run, by the documentation build that
``tests/test_docs.py`` runs: myst-nb executes each one top to bottom in a
fresh kernel running the test's interpreter, fails the build on any error,
and the test checks that every notebook's page shows a figure. Figures go to
the build directory (``MSO_FIGURE_DIR``), leaving the committed PNGs in
``notebooks/figures/`` untouched.
"""

from __future__ import annotations

import pathlib

import nbformat
import pytest

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parent.parent / 'notebooks'
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob('*.ipynb'))
# Notebooks this test must find: a glob that silently matched nothing would
# make the parametrized tests below vacuous.
REQUIRED_NOTEBOOKS = (
    'fast_weights.ipynb',
    'momentum_as_fast_weights.ipynb',
    'quickstart.ipynb',
)


def test_required_notebooks_exist():
  names = {path.name for path in NOTEBOOKS}
  missing = [name for name in REQUIRED_NOTEBOOKS if name not in names]
  assert not missing, f'missing notebooks: {missing}'


@pytest.mark.parametrize('path', NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_is_stored_without_outputs(path):
  notebook = nbformat.read(path, as_version=4)
  nbformat.validate(notebook)
  dirty = [
      index for index, cell in enumerate(notebook.cells)
      if cell.cell_type == 'code'
      and (cell.get('outputs') or cell.get('execution_count') is not None)
  ]
  assert not dirty, (
      f'{path.name}: cells {dirty} have outputs or execution counts; clear '
      'them before committing: `python notebooks/strip_outputs.py`.')


@pytest.mark.parametrize('path', NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_has_a_gallery_title(path):
  # docs/_ext/gallery.py lists each notebook under its first "# " heading.
  notebook = nbformat.read(path, as_version=4)
  first = next(cell for cell in notebook.cells if cell.cell_type == 'markdown')
  assert first.source.lstrip().startswith('# '), (
      f'{path.name} must open with a markdown cell "# Title"')
