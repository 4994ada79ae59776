"""Executes every notebook in ``notebooks/`` and checks how they are stored.

Each notebook runs top to bottom in a fresh kernel started with the same
interpreter as pytest (``sys.executable``), so CI tests the environment it
installed even when that environment's ``bin`` is not on ``PATH``. Figures go
to a temporary directory named by ``MSO_FIGURE_DIR``, leaving the committed
PNGs in ``notebooks/figures/`` untouched.
"""

from __future__ import annotations

import json
import pathlib
import sys
import time

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parent.parent / 'notebooks'
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob('*.ipynb'))
# Notebooks this test must find: a glob that silently matched nothing would
# make the parametrized test below vacuous.
REQUIRED_NOTEBOOKS = (
    'fast_weights.ipynb',
    'momentum_as_fast_weights.ipynb',
    'quickstart.ipynb',
)
CELL_TIMEOUT_S = 120
KERNEL_NAME = 'multiscale-optax-test'

# Jupyter's own backend: figures are sent to the notebook as PNG outputs,
# and nothing opens a window (no display is needed).
INLINE_BACKEND = 'module://matplotlib_inline.backend_inline'

# Runs first in every notebook (never stored in it): fails the notebook when
# the kernel is not the test's interpreter or would open a GUI backend.
_PROBE_SOURCE = """\
import sys as _sys
import matplotlib as _matplotlib
assert _sys.executable == {executable!r}, (_sys.executable, {executable!r})
assert _matplotlib.get_backend().lower() == {backend!r}, (
    _matplotlib.get_backend())
del _sys, _matplotlib
"""


def _kernel_manager(spec_dir: pathlib.Path, figure_dir: pathlib.Path):
  """A kernel manager whose kernel runs ``sys.executable`` as Jupyter would.

  The kernel uses Jupyter's inline matplotlib backend (headless) and
  inherits this process's environment, so it gets the JAX backend a user
  would get (the GPU on a GPU machine, unless ``JAX_PLATFORMS`` says
  otherwise).
  """
  kernel_dir = spec_dir / 'kernels' / KERNEL_NAME
  kernel_dir.mkdir(parents=True)
  spec = {
      'argv': [
          sys.executable, '-m', 'ipykernel_launcher', '-f',
          '{connection_file}',
      ],
      'display_name': 'multiscale_optax tests',
      'language': 'python',
      'env': {
          'MPLBACKEND': INLINE_BACKEND,
          # This test process may already hold most of a GPU's memory.
          'XLA_PYTHON_CLIENT_PREALLOCATE': 'false',
          'MSO_FIGURE_DIR': str(figure_dir),
          'PYDEVD_DISABLE_FILE_VALIDATION': '1',
      },
  }
  (kernel_dir / 'kernel.json').write_text(json.dumps(spec))
  spec_manager = KernelSpecManager(kernel_dirs=[str(spec_dir / 'kernels')])
  return KernelManager(
      kernel_name=KERNEL_NAME, kernel_spec_manager=spec_manager)


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
def test_notebook_runs(path, tmp_path):
  figure_dir = tmp_path / 'figures'
  figure_dir.mkdir()
  notebook = nbformat.read(path, as_version=4)
  notebook.cells.insert(0, nbformat.v4.new_code_cell(
      _PROBE_SOURCE.format(
          executable=sys.executable, backend=INLINE_BACKEND)))
  started = time.time()
  client = NotebookClient(
      notebook,
      km=_kernel_manager(tmp_path / 'spec', figure_dir),
      timeout=CELL_TIMEOUT_S,
      allow_errors=False,
      resources={'metadata': {'path': str(NOTEBOOK_DIR)}},
  )
  client.execute()
  # Every notebook saves its key figure(s): into MSO_FIGURE_DIR when it reads
  # the variable, else into notebooks/figures/.
  written = list(figure_dir.glob('*.png')) + [
      figure for figure in (NOTEBOOK_DIR / 'figures').glob('*.png')
      if figure.stat().st_mtime >= started - 1.0
  ]
  assert written, f'{path.name} saved no PNG figure'
  # ... and shows it inline, as a user opening it in Jupyter sees it.
  shown = [
      output for cell in notebook.cells if cell.cell_type == 'code'
      for output in cell.get('outputs', [])
      if 'image/png' in output.get('data', {})
  ]
  assert shown, f'{path.name} displayed no figure inline'
