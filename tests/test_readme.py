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
