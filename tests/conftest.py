"""Test configuration: makes tests/helpers.py importable as ``helpers``.

Under CI (``CI`` set, as ``.ci/run`` is run) hypothesis draws the same
examples on every run, so a CI result does not depend on luck;
locally it explores new examples each run.
"""

import os
import pathlib
import sys

import hypothesis

sys.path.insert(0, str(pathlib.Path(__file__).parent))

hypothesis.settings.register_profile(
    'ci', derandomize=True, database=None, print_blob=True)
if os.environ.get('CI'):
  hypothesis.settings.load_profile('ci')
