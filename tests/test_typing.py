"""The package is typed: mypy (configured in pyproject.toml) runs clean.

It checks ``multiscale_optax/`` itself and a user's script that calls the
public API as the README and the docs do (NumPy arrays as hyperparameter
vectors, a dtype for the state, optax schedules), so that the annotations
accept what the functions accept; and a script of misuses, each of which
mypy must report, so that the annotations are not ``Any`` in disguise.
"""

from __future__ import annotations

import importlib.metadata
import pathlib
import re
import subprocess
import sys
import textwrap
import tomllib

import pytest

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

    # The converters take anything NumPy reads; the modes of a chain are a
    # spec as much as a MultiscaleSpec is.
    modes: mso.BennaFusiModes = mso.benna_fusi_modes(
        *mso.benna_fusi_defaults(2), leak=np.float32(0.0))
    chain_subweights = mso.state_to_subweights(modes, [params, params])
    restored = mso.subweights_to_state(spec, params, [None, params])
    fitted: np.ndarray = mso.fit_learning_rates(
        jnp.array([0.5, 0.9]), mso.power_law_kernel(20, 0.5))
    dynamics = mso.from_linear_dynamics(
        [[1.0, -0.09], [0.0, 0.9]], np.array([-0.1, 1.0]), (1.0, 0.0))
    kernel: jax.Array = mso.memory_kernel(
        np.array([0.1, 0.2]), dynamics.decays, 5)
    environment = mso.OneOverFEnvironment.from_timescales(
        jnp.array([1.0, 8.0]))

    # The observation helpers take the model as the user typed it, and
    # return gradients of the params' own type.
    def apply_fn(weights: dict[str, jax.Array],
                 inputs: jax.Array) -> jax.Array:
      return inputs @ weights['w']

    bayes = mso.bayesian_multiscale(
        np.array([0.9, 0.99]), jnp.array([0.1, 0.01]), np.float32(1.0),
        state_dtype='float32')
    weights = {'w': jnp.zeros(3)}
    info, grads, extra = mso.gaussian_observation(
        apply_fn, weights, jnp.ones(3), np.float32(1.0), 0.5)
    gradient: jax.Array = grads['w']
    bayes_state = bayes.init(weights)
    _, bayes_state = bayes.update(grads, bayes_state, weights, **extra)
    belief = mso.get_bayesian_subweights(weights, bayes_state)
''')

# Each line marked `# expect: CODE` must be reported with that error code,
# and nothing else may be.
_MISUSE_SCRIPT = textwrap.dedent('''
    import jax
    import jax.numpy as jnp

    import multiscale_optax as mso


    def apply_fn(weights: dict[str, jax.Array],
                 inputs: jax.Array) -> jax.Array:
      return inputs @ weights['w']


    mso.multiscale([0.1], [1.0], state_dtype=3.5)  # expect: arg-type
    mso.multiscale('0.1', [1.0])  # expect: arg-type
    mso.kalman_learning_rates([0.5], [0.1], None)  # expect: call-overload
    state = mso.multiscale([0.1], [1.0]).init(jnp.zeros(2))
    assert isinstance(state, mso.MultiscaleState)
    count: str = state.count  # expect: assignment
    # (mypy reports a bad argument on the argument's own line.)
    mso.gaussian_observation(
        apply_fn, [jnp.zeros(3)], jnp.ones(3), 1.0, 0.5)  # expect: arg-type
    environment = mso.OneOverFEnvironment((0.5,), (0.1,))
    mso.sample_environment(
        environment, jax.random.key(0), 10, dtype=1)  # expect: arg-type
    rates: jax.Array = mso.fit_learning_rates(  # expect: assignment
        [0.5], [1.0, 0.5])
    spec = mso.from_momentum(0.1, 0.9)
    mso.state_to_subweights(spec, 1)  # expect: arg-type
''')


@pytest.fixture(scope='module')
def mypy_cache(tmp_path_factory):
  # Shared, so that the second run reuses the analysis of the package.
  return tmp_path_factory.mktemp('mypy_cache')


def _mypy(*paths, cache):
  return subprocess.run(
      [sys.executable, '-m', 'mypy', '--cache-dir', str(cache), *paths],
      cwd=_REPOSITORY, capture_output=True, text=True, timeout=600,
      check=False)


@pytest.mark.typing
def test_mypy_is_clean_on_the_package_and_on_user_code(tmp_path, mypy_cache):
  script = tmp_path / 'user_script.py'
  script.write_text(_USER_SCRIPT)
  result = _mypy('multiscale_optax', str(script), cache=mypy_cache)
  assert result.returncode == 0, result.stdout + result.stderr
  assert 'Success: no issues found' in result.stdout, result.stdout


@pytest.mark.typing
def test_mypy_reports_every_misuse(tmp_path, mypy_cache):
  script = tmp_path / 'misuse.py'
  script.write_text(_MISUSE_SCRIPT)
  result = _mypy(str(script), cache=mypy_cache)
  expected = {
      (number, match.group(1))
      for number, line in enumerate(_MISUSE_SCRIPT.splitlines(), start=1)
      if (match := re.search(r'# expect: ([a-z-]+)', line))}
  reported = {
      (int(match.group(1)), match.group(2))
      for match in re.finditer(
          r'^[^\n]*misuse\.py:(\d+): error: .*\[([a-z-]+)\]$',
          result.stdout, flags=re.MULTILINE)}
  assert len(expected) == 8
  assert reported == expected, result.stdout + result.stderr


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
