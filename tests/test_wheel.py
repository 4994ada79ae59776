"""The wheel builds, holds the package and nothing else, and works installed.

``python -m build --wheel`` makes the wheel from a copy of the source tree;
the wheel is installed into a fresh virtual environment, and the README's
quick start runs there, from a directory outside the repository, on the
installed package. A packaging check, like the mypy checks: it is in the
``typing`` tier (docs/development.md).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import site
import subprocess
import sys
import textwrap
import zipfile

import pytest

import multiscale_optax

_REPOSITORY = pathlib.Path(__file__).resolve().parent.parent
_PACKAGE = 'multiscale_optax'
_NOT_SHIPPED = ('tests/', 'benchmarks/', 'docs/', 'notebooks/')
_TIMEOUT_S = 300

# What a build or a run leaves in a source tree: not copied to the build.
_IGNORED = shutil.ignore_patterns(
    '.git', '.venv', 'venv', '.tox', '.nox', 'build', 'dist', '*.egg-info',
    '__pycache__', '_build', '.hypothesis', '.mypy_cache', '.ruff_cache',
    '.pytest_cache', '.ipynb_checkpoints')


def _quick_start() -> str:
  """The first Python block under the README's "## Quick start"."""
  readme = (_REPOSITORY / 'README.md').read_text(encoding='utf-8')
  section = readme.split('\n## Quick start\n', 1)
  assert len(section) == 2, 'README.md has no "## Quick start" section'
  block = re.search(r'```python\n(.*?)```', section[1], re.S)
  assert block, 'the Quick start section of README.md has no python block'
  return block.group(1)


def _run(command: list[str], cwd: pathlib.Path) -> str:
  environment = dict(os.environ)
  # Nothing but the installed package may put multiscale_optax on the path.
  environment.pop('PYTHONPATH', None)
  environment['PIP_DISABLE_PIP_VERSION_CHECK'] = '1'
  result = subprocess.run(command, cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=_TIMEOUT_S,
                          stdin=subprocess.DEVNULL, check=False)
  assert result.returncode == 0, (
      f'{" ".join(command)} failed ({result.returncode}):\n'
      f'{result.stdout[-4000:]}\n{result.stderr[-4000:]}')
  return result.stdout


@pytest.mark.typing
def test_wheel_installs_and_runs_the_quick_start(tmp_path):
  # Build from a copy, so that the build's own build/ and *.egg-info
  # directories are not written into the repository.
  source = tmp_path / 'source'
  shutil.copytree(_REPOSITORY, source, ignore=_IGNORED)
  # --no-isolation builds with the setuptools installed here (the test extra
  # requires the version [build-system] asks for): no download, no network.
  dist = tmp_path / 'dist'
  _run([sys.executable, '-m', 'build', '--wheel', '--no-isolation',
        '--outdir', str(dist), str(source)], cwd=tmp_path)
  wheels = list(dist.glob('*.whl'))
  expected = f'{_PACKAGE}-{multiscale_optax.__version__}-py3-none-any.whl'
  assert [wheel.name for wheel in wheels] == [expected]
  wheel = wheels[0]

  # The wheel holds every module of the package, its py.typed marker and its
  # metadata, and nothing from the rest of the repository.
  with zipfile.ZipFile(wheel) as archive:
    names = set(archive.namelist())
  modules = {
      path.relative_to(_REPOSITORY).as_posix()
      for path in (_REPOSITORY / _PACKAGE).rglob('*.py')}
  assert modules <= names, sorted(modules - names)
  assert f'{_PACKAGE}/py.typed' in names
  dist_info = f'{_PACKAGE}-{multiscale_optax.__version__}.dist-info/'
  stray = sorted(name for name in names
                 if not name.startswith((f'{_PACKAGE}/', dist_info)))
  assert not stray, stray
  assert not [name for name in names if name.startswith(_NOT_SHIPPED)]
  assert not [name for name in names if name.endswith('.pyc')]

  # A fresh environment outside the source tree. --system-site-packages and
  # the .pth file below let it import jax, jaxlib, optax, chex and numpy
  # from the environment that runs this test, so nothing is downloaded; the
  # .pth adds those directories as plain paths, so the .pth files in them
  # (an editable install of this repository among them) are not run.
  environment = tmp_path / 'venv'
  _run([sys.executable, '-m', 'venv', '--system-site-packages',
        str(environment)], cwd=tmp_path)
  python = environment / 'bin' / 'python'
  new_site = _run([str(python), '-c',
                   'import sysconfig; print(sysconfig.get_path("purelib"))'],
                  cwd=tmp_path).strip()
  (pathlib.Path(new_site) / '_test_environment.pth').write_text(
      ''.join(f'{path}\n' for path in site.getsitepackages()))
  # --ignore-installed: a multiscale_optax seen through the .pth is neither
  # taken as already installed nor uninstalled.
  _run([str(python), '-m', 'pip', 'install', '-q', '--no-deps', '--no-index',
        '--ignore-installed', str(wheel)], cwd=tmp_path)

  # The quick start, as a user runs it, from a directory that is neither
  # the repository nor the environment.
  work = tmp_path / 'work'
  work.mkdir()
  script = work / 'quick_start.py'
  script.write_text(_quick_start() + textwrap.dedent('''
      import json, pathlib, multiscale_optax
      package = pathlib.Path(multiscale_optax.__file__).resolve().parent
      print(json.dumps({'package': str(package),
                        'py_typed': (package / 'py.typed').is_file(),
                        'finite': bool(jnp.isfinite(params['w']).all())}))
  '''))
  report = json.loads(_run([str(python), str(script)],
                           cwd=work).strip().splitlines()[-1])
  package = pathlib.Path(report['package'])
  assert package.is_relative_to(environment.resolve()), package
  assert not package.is_relative_to(_REPOSITORY), package
  assert report['py_typed']
  assert report['finite']
