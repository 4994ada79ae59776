"""Writes the intersphinx inventories that ``docs/conf.py`` reads offline.

The docs build has no network, so it cannot download optax's and jax's
``objects.inv``. These files stand in for them. They were generated, not
downloaded: for every name that optax's and jax's own documentation lists in
an ``autosummary`` block (read from their Sphinx sources), and that the
*installed* ``optax`` / ``jax`` modules define, one entry pointing at the page
that block generates, in each project's URL scheme:

- optax: ``https://optax.readthedocs.io/en/latest/api/generated/<name>.html``
  (``docs/api/*.rst``, ``:toctree: generated/``);
- jax: ``https://docs.jax.dev/en/latest/_autosummary/<name>.html``
  (``docs/jax*.rst``, ``:toctree: _autosummary``), and a module's own page,
  ``jax.lax.html#module-jax.lax``.

``optax.ScalarOrSchedule`` has no page in optax's docs; ``optax_source.inv``
points it (and the other type aliases of ``optax/_src/base.py``) at their
definition in optax's source, at the installed version's tag.

Rerun after upgrading optax or jax, with their docs sources checked out (the
two inventories of 2026-12-06 came from optax 2edbcbe2 and jax cec06d11, with
optax 0.2.8 and jax 0.10.2 installed)::

  python docs/_inventories/generate.py --optax-docs OPTAX/docs \\
      --jax-docs JAX/docs
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import pathlib
import re
import typing
import zlib

import jax
import optax

HERE = pathlib.Path(__file__).resolve().parent

_DIRECTIVE = re.compile(r'^\.\.\s+(currentmodule|automodule|module)::\s*(\S+)')
_AUTOSUMMARY = re.compile(r'^(\s*)\.\.\s+autosummary::')
_OPTION = re.compile(r'^\s*:(\w+):\s*(.*)$')


def documented_names(rst: pathlib.Path) -> list[tuple[str, str]]:
  """(current module, name) for each entry of the file's autosummary blocks
  that generate pages."""
  entries = []
  module = None
  lines = rst.read_text(encoding='utf-8').splitlines()
  index = 0
  while index < len(lines):
    line = lines[index]
    directive = _DIRECTIVE.match(line)
    if directive:
      module = directive.group(2)
    block = _AUTOSUMMARY.match(line)
    index += 1
    if not block:
      continue
    indent = len(block.group(1))
    toctree = False
    names = []
    while index < len(lines):
      text = lines[index]
      if text.strip() and len(text) - len(text.lstrip()) <= indent:
        break
      option = _OPTION.match(text)
      if option:
        toctree = toctree or option.group(1) == 'toctree'
      elif text.strip() and not text.strip().startswith('..'):
        names.append(text.strip())
      index += 1
    if toctree and module:
      entries.extend((module, name) for name in names)
  return entries


def resolve(path: str) -> object | None:
  """The installed object a dotted name names, or None."""
  parts = path.split('.')
  for split in range(len(parts), 0, -1):
    try:
      obj = importlib.import_module('.'.join(parts[:split]))
    except ImportError:
      continue
    try:
      for attribute in parts[split:]:
        obj = getattr(obj, attribute)
    except AttributeError:
      return None
    return obj
  return None


def role(obj: object, member: bool) -> str:
  """The Python-domain object type an entry is registered as."""
  if inspect.ismodule(obj):
    return 'py:module'
  if inspect.isclass(obj):
    return 'py:exception' if issubclass(obj, BaseException) else 'py:class'
  if typing.get_origin(obj) is not None or isinstance(
      obj, (typing.TypeVar, type(typing.Union[int, str]))):  # noqa: UP007 (the old alias type)
    return 'py:type'  # a type alias such as optax.Schedule
  if callable(obj):
    return 'py:method' if member else 'py:function'
  if member:
    return 'py:attribute'
  return 'py:data'


def write(path: pathlib.Path, project: str, version: str,
          entries: dict[tuple[str, str], str]) -> None:
  header = ('# Sphinx inventory version 2\n'
            f'# Project: {project}\n'
            f'# Version: {version}\n'
            '# The remainder of this file is compressed using zlib.\n')
  body = ''.join(f'{name} {kind} 1 {uri} -\n'
                 for (name, kind), uri in sorted(entries.items()))
  path.write_bytes(header.encode() + zlib.compress(body.encode(), 9))
  print(f'{path.name}: {len(entries)} entries')


def entries_for(sources: list[pathlib.Path], page: str, top: str,
                namespaces: tuple[str, ...]) -> dict[tuple[str, str], str]:
  """Inventory entries for the documented names that the installed package
  defines; ``page`` formats a full name into its page's path.

  A public name of one of ``namespaces`` that is the same object as a
  documented name (``optax.inject_hyperparams`` is
  ``optax.schedules.inject_hyperparams``) gets an entry for that page too.
  """
  entries = {}
  documented = {}
  for rst in sources:
    for module, name in documented_names(rst):
      full = f'{module}.{name}' if not name.startswith(f'{top}.') else name
      obj = resolve(full)
      if obj is None:
        continue
      member = inspect.isclass(resolve(full.rsplit('.', 1)[0]))
      entries[(full, role(obj, member))] = page.format(full) + '#$'
      if callable(obj) or inspect.ismodule(obj):
        documented.setdefault(id(obj), (full, role(obj, member)))
  names = {name for name, _ in entries}
  for namespace in namespaces:
    module = importlib.import_module(namespace)
    for attribute in getattr(module, '__all__', None) or dir(module):
      if attribute.startswith('_'):
        continue
      alias = f'{namespace}.{attribute}'
      found = documented.get(id(getattr(module, attribute, None)))
      if found and alias not in names:
        full, kind = found
        entries[(alias, kind)] = f'{page.format(full)}#{full}'
  return entries


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--optax-docs', type=pathlib.Path, required=True)
  parser.add_argument('--jax-docs', type=pathlib.Path, required=True)
  args = parser.parse_args()

  optax_entries = entries_for(
      sorted((args.optax_docs / 'api').glob('*.rst')),
      'api/generated/{}.html', 'optax', ('optax', 'optax.tree'))
  # optax.Schedule is documented as optax.schedules.Schedule; optax's own
  # pages name it optax.Schedule as well.
  for alias, documented in (('optax.Schedule', 'optax.schedules.Schedule'),):
    optax_entries[(alias, 'py:type')] = (
        f'api/generated/{documented}.html#{documented}')
  write(HERE / 'optax.inv', 'optax', optax.__version__, optax_entries)

  jax_sources = sorted(args.jax_docs.glob('jax*.rst'))
  jax_entries = entries_for(
      jax_sources, '_autosummary/{}.html', 'jax',
      ('jax', 'jax.numpy', 'jax.lax', 'jax.random', 'jax.tree',
       'jax.tree_util', 'jax.nn'))
  for rst in jax_sources:
    module = rst.stem
    if resolve(module) is not None and re.search(
        rf'^\.\.\s+automodule::\s*{re.escape(module)}\s*$',
        rst.read_text(encoding='utf-8'), re.M):
      jax_entries[(module, 'py:module')] = f'{module}.html#module-$'
  write(HERE / 'jax.inv', 'jax', jax.__version__, jax_entries)

  # Type aliases that optax's docs do not document: their definition.
  base = inspect.getsourcelines(importlib.import_module('optax._src.base'))[0]
  source_entries = {}
  for alias in ('ScalarOrSchedule',):
    line = next(number for number, text in enumerate(base, 1)
                if text.startswith(f'{alias} ='))
    source_entries[(f'optax.{alias}', 'py:type')] = (
        f'optax/_src/base.py#L{line}')
  write(HERE / 'optax_source.inv', 'optax (source)', optax.__version__,
        source_entries)


if __name__ == '__main__':
  main()
