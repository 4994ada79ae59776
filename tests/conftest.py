"""Test configuration: makes tests/helpers.py importable as ``helpers``.

Under CI (``CI`` set, as ``.ci/run`` is run) hypothesis draws the same
examples on every run, so a CI result does not depend on luck;
locally it explores new examples each run.

Test tiers (``docs/development.md``): a test marked with one of
``SLOW_TIERS`` also gets the ``slow_tier`` marker, so that
``pytest -m "not slow_tier"`` runs the fast tier alone.
"""

import os
import pathlib
import sys

import hypothesis
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))

hypothesis.settings.register_profile(
    'ci', derandomize=True, database=None, print_blob=True)
if os.environ.get('CI'):
  hypothesis.settings.load_profile('ci')

SLOW_TIERS = ('docs', 'notebooks', 'multiprocess', 'typing')


def pytest_collection_modifyitems(config, items):
  del config
  for item in items:
    if any(item.get_closest_marker(tier) for tier in SLOW_TIERS):
      item.add_marker(pytest.mark.slow_tier)
