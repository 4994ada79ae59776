"""The package is typed: mypy (configured in pyproject.toml) runs clean.

It checks ``multiscale_optax/`` itself and a user's script that calls the
public API as the README and the docs do (NumPy arrays as hyperparameter
vectors, a dtype for the state, optax schedules), so that the annotations
accept what the functions accept.
"""

from __future__ import annotations

import importlib.metadata
import pathlib
import re
import subprocess
import sys
import textwrap

import tomllib

import multiscale_optax as mso

_REPOSITORY = pathlib.Path(__file__).parent.parent

_USER_SCRIPT = textwrap.dedent('''
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    import multiscale_optax as mso

    timescales = mso.log_spaced_timescales(1.0, 1e4, 5)
    optimizer = optax.chain(
        optax.scale_by_adam(),
        mso.multiscale(1e-3 * timescales ** -0.5,
                       mso.decays_from_timescales(timescales)))
    schedule = optax.cosine_decay_schedule(1.0, 100)
    variants: list[optax.GradientTransformationExtraArgs] = [
        mso.multiscale([0.1, 0.05], [1.0, 0.9], state_dtype=jnp.bfloat16),
        mso.multiscale(jnp.array([0.1, 0.05]), np.array([1.0, 0.9]),
                       learning_rate=schedule),
        mso.fast_weights(0.1, 0.5, 0.9, state_dtype='bfloat16'),
        mso.benna_fusi(*mso.benna_fusi_defaults(4), state_dtype=np.float32),
    ]
    params: optax.Params = {'w': jnp.zeros(3)}
    state = optimizer.init(params)
    updates, state = jax.jit(optimizer.update)({'w': jnp.ones(3)}, state,
                                               params)
    params = optax.apply_updates(params, updates)
    subweights: mso.MultiscaleSubweights = mso.get_subweights(params, state)
    spec: mso.MultiscaleSpec = mso.from_momentum(0.1, 0.9)
    decays: np.ndarray = mso.decays_from_timescales(np.array([1.0, 10.0]))
    rates: jax.Array = mso.kalman_learning_rates(
        np.array([0.5, 0.9]), np.array([0.1, 0.01]), 1.0)
    environment = mso.OneOverFEnvironment((0.5, 0.9), (0.1, 0.01))
    sample = mso.sample_environment(
        environment, jax.random.key(0), 10, dtype=jnp.float32)
''')


def test_mypy_is_clean_on_the_package_and_on_user_code(tmp_path):
  script = tmp_path / 'user_script.py'
  script.write_text(_USER_SCRIPT)
  result = subprocess.run(
      [sys.executable, '-m', 'mypy', '--cache-dir', str(tmp_path / 'cache'),
       'multiscale_optax', str(script)],
      cwd=_REPOSITORY, capture_output=True, text=True, timeout=600,
      check=False)
  assert result.returncode == 0, result.stdout + result.stderr
  assert 'Success: no issues found' in result.stdout, result.stdout


def test_user_script_runs():
  # The script type-checks only if it is also correct at run time.
  namespace: dict[str, object] = {}
  exec(compile(_USER_SCRIPT, 'user_script.py', 'exec'), namespace)
  assert isinstance(namespace['subweights'], mso.MultiscaleSubweights)


def test_package_ships_py_typed_and_single_sources_its_version():
  assert (_REPOSITORY / 'multiscale_optax' / 'py.typed').is_file()
  project = tomllib.loads((_REPOSITORY / 'pyproject.toml').read_text())
  setuptools = project['tool']['setuptools']
  assert 'py.typed' in setuptools['package-data']['multiscale_optax']
  assert 'version' in project['project']['dynamic']
  assert setuptools['dynamic']['version'] == {
      'attr': 'multiscale_optax.__version__'}
  # PEP 440 release segment (what a registry page and the docs show).
  assert re.fullmatch(r'\d+\.\d+\.\d+([ab]|rc)?\d*', mso.__version__)
  assert (_REPOSITORY / 'LICENSE').read_text().lstrip().startswith(
      'Apache License')
  assert project['project']['license'] == 'Apache-2.0'


def test_installed_metadata_matches_the_package():
  # In CI the package is installed (`pip install -e '.[test]'`), so its
  # metadata comes from the same pyproject.toml as this checkout.
  assert importlib.metadata.version('multiscale_optax') == mso.__version__
