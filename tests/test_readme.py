"""The README's Python snippets run as written."""

from __future__ import annotations

import pathlib
import re

import pytest

_README = pathlib.Path(__file__).parent.parent / 'README.md'
_BLOCKS = re.findall(r'```python\n(.*?)```', _README.read_text(), re.S)


def test_readme_has_snippets():
  assert len(_BLOCKS) >= 3


# The Orbax snippet continues a user's training loop (params, opt_state and
# a checkpoint path of their own); tests/test_ecosystem.py runs it for real.
@pytest.mark.parametrize(
    'block', [b for b in _BLOCKS if 'StandardCheckpointer' not in b])
def test_snippet_runs(block):
  exec(compile(block, str(_README), 'exec'), {})


def test_results_block_is_generated_from_the_results_files():
  """The headline numbers come from benchmarks/results/*.json:
  ``python -m benchmarks.readme`` rewrites the block."""
  from benchmarks import readme  # pylint: disable=import-outside-toplevel

  text = _README.read_text()
  assert readme.BEGIN in text and readme.END in text
  assert readme.rewritten(text) == text, (
      'README results are stale: run python -m benchmarks.readme')
