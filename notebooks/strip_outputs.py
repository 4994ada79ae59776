"""Clears outputs and execution counts of notebooks in place.

Usage: ``python notebooks/strip_outputs.py [NOTEBOOK ...]`` (default: every
``*.ipynb`` next to this script). ``tests/test_notebooks.py`` fails on
notebooks stored with outputs, so that diffs stay readable.
"""

from __future__ import annotations

import pathlib
import sys

import nbformat


def strip(path: pathlib.Path) -> bool:
  """Clears the outputs of one notebook; returns whether it changed."""
  notebook = nbformat.read(path, as_version=4)
  changed = False
  for cell in notebook.cells:
    if cell.cell_type != 'code':
      continue
    if cell.get('outputs') or cell.get('execution_count') is not None:
      cell.outputs = []
      cell.execution_count = None
      changed = True
  if changed:
    nbformat.write(notebook, path)
  return changed


def main(argv: list[str]) -> None:
  paths = [pathlib.Path(arg) for arg in argv] or sorted(
      pathlib.Path(__file__).resolve().parent.glob('*.ipynb'))
  for path in paths:
    print(f'{"stripped" if strip(path) else "clean   "} {path}')


if __name__ == '__main__':
  main(sys.argv[1:])
