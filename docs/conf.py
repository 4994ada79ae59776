"""Sphinx configuration for the multiscale_optax documentation.

Build from the repository root, warnings as errors::

  sphinx-build -W -b html docs docs/_build/html

The API reference is generated from ``multiscale_optax.__all__``
(``_ext/api_reference.py``), benchmark tables from
``benchmarks/results/*.json`` (``_ext/benchmark_tables.py``), and the gallery
executes every notebook in ``notebooks/`` (``_ext/gallery.py``).
"""

from __future__ import annotations

import importlib.util
import pathlib
import re
import sys

from docutils import nodes
from sphinx import addnodes
from sphinx.ext import intersphinx
from sphinx.transforms.post_transforms import SphinxPostTransform

DOCS_DIR = pathlib.Path(__file__).resolve().parent
REPO_ROOT = DOCS_DIR.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(DOCS_DIR / '_ext'))

import optax as _optax  # noqa: E402

import multiscale_optax  # noqa: E402

# -- Project -----------------------------------------------------------------

project = 'multiscale_optax'
author = 'multiscale_optax contributors'
copyright = '2026, multiscale_optax contributors'
release = multiscale_optax.__version__
version = release

# -- General -----------------------------------------------------------------

extensions = [
    'sphinx.ext.autodoc',
    'sphinx.ext.autosummary',
    'sphinx.ext.intersphinx',
    'sphinx.ext.mathjax',
    'sphinx.ext.napoleon',
    'sphinx.ext.viewcode',
    'myst_nb',
    'api_reference',
    'benchmark_tables',
    'gallery',
]

templates_path = ['_templates']
exclude_patterns = ['_build', '_inventories', 'Thumbs.db', '.DS_Store',
                    '**.ipynb_checkpoints']
source_suffix = {'.rst': 'restructuredtext', '.md': 'myst-nb',
                 '.ipynb': 'myst-nb'}

# -- autodoc / autosummary ---------------------------------------------------

autosummary_generate = True
autosummary_ignore_module_all = False
autodoc_typehints = 'description'
autodoc_typehints_description_target = 'documented_params'
autodoc_member_order = 'bysource'
autodoc_preserve_defaults = True
# Show the aliases the signatures are written with, not their expansions
# (jax's ArrayLike is an 8-member union; optax's ScalarOrSchedule a union with
# a Callable). The package's modules use `from __future__ import annotations`,
# so autodoc sees the annotations as written (api_reference.py makes an alias
# inside a union show its name too). ArrayLike and DTypeLike are jax.typing's.
autodoc_type_aliases = {
    'ArrayLike': 'ArrayLike',
    'npt.ArrayLike': 'numpy.typing.ArrayLike',
    'optax.ScalarOrSchedule': 'optax.ScalarOrSchedule',
    'optax.Params': 'optax.Params',
    'optax.Updates': 'optax.Updates',
    'optax.OptState': 'optax.OptState',
    'optax.Schedule': 'optax.Schedule',
    'DTypeLike': 'DTypeLike',
}
autodoc_typehints_format = 'short'
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
add_module_names = False
# The page contents list a class's members as `count`, not
# `BayesianMultiscaleState.count` (long names were cut off there).
toc_object_entries_show_parents = 'hide'

# -- Links to optax and jax --------------------------------------------------

# The inventories are read from the repository, never downloaded, so that the
# build stays offline: `_inventories/generate.py` wrote them from the names
# that optax's and jax's docs list and the installed packages define (see its
# docstring; rerun it after upgrading either). optax.ScalarOrSchedule has no
# page in optax's docs: it links to its definition in optax's source.
_INVENTORIES = DOCS_DIR / '_inventories'
intersphinx_mapping = {
    'optax': ('https://optax.readthedocs.io/en/latest/',
              str(_INVENTORIES / 'optax.inv')),
    'jax': ('https://docs.jax.dev/en/latest/', str(_INVENTORIES / 'jax.inv')),
    'optax_source': (
        f'https://github.com/google-deepmind/optax/blob/v{_optax.__version__}/',
        str(_INVENTORIES / 'optax_source.inv')),
}
# Type hints as autodoc writes them, and the names they stand for.
_TYPE_TARGETS = {
    'ArrayLike': 'jax.typing.ArrayLike',
    'DTypeLike': 'jax.typing.DTypeLike',
    'jax.jaxlib._jax.Array': 'jax.Array',
    'jaxlib._jax.Array': 'jax.Array',
    'optax._src.base.GradientTransformation': 'optax.GradientTransformation',
    'optax._src.base.GradientTransformationExtraArgs':
        'optax.GradientTransformationExtraArgs',
}
# Inline code naming an optax or jax object (``optax.adam``,
# ``optax.scale_by_adam()``, ``jnp.linalg.eigh``) links to its page.
_CODE_NAME = re.compile(r'(optax|jax|jnp)(\.[A-Za-z_][A-Za-z0-9_]*)+(\(\))?')

# -- MyST / myst-nb ----------------------------------------------------------

myst_enable_extensions = ['dollarmath', 'amsmath', 'colon_fence', 'deflist']
myst_heading_anchors = 3
# The gallery runs each notebook once per build, fresh, and fails the build
# on any error or on a cell that runs longer than the timeout.
nb_execution_mode = 'force'
nb_execution_raise_on_error = True
nb_execution_timeout = 300
nb_merge_streams = True

# -- Maths -------------------------------------------------------------------

# MathJax ships with the pages, so that they render maths offline and a build
# never loads a script from a CDN: the `docs` and `test` extras install
# sphinx-mathjax-offline, a PyPI package holding MathJax 3.2.2, and its
# `static/mathjax/` is copied into `_static/mathjax/`.
_MATHJAX_PACKAGE = importlib.util.find_spec('sphinx-mathjax-offline')
if _MATHJAX_PACKAGE is None or _MATHJAX_PACKAGE.origin is None:
  raise ImportError(
      "MathJax for the docs is missing: pip install -e '.[docs]' "
      '(it installs sphinx-mathjax-offline)')
MATHJAX_STATIC = pathlib.Path(_MATHJAX_PACKAGE.origin).parent / 'static'
mathjax_path = 'mathjax/tex-chtml.js'

# -- HTML --------------------------------------------------------------------

html_theme = 'sphinx_book_theme'
html_title = f'multiscale_optax {release}'
html_static_path = ['_static', str(MATHJAX_STATIC)]
html_css_files = ['custom.css']
# Line-break opportunities inside long identifiers (see the script).
html_js_files = [('wrap_names.js', {'defer': 'defer'})]
# The pydata theme reads its colour mode from here; left unset, every page
# logs "Got invalid theme mode" before falling back to 'auto'.
html_context = {'default_mode': 'auto'}
html_theme_options = {
    'show_toc_level': 2,
    'navigation_with_keys': False,
    'home_page_in_toc': True,
}
html_last_updated_fmt = None


def _skip_namedtuple_fields(app, what, name, obj, skip, options):
  """Leaves NamedTuple fields to the class docstring's ``Attributes:``."""
  del app, name, options
  if what == 'class' and type(obj).__name__ == '_tuplegetter':
    return True
  return skip


def _retarget_type_hints(app, env, node, contnode):
  """Points a type hint written as an alias (``ArrayLike``) or by its
  defining module (``optax._src.base.…``) at the public name, which the
  inventories hold; intersphinx (connected after this) then resolves it."""
  del app, env, contnode
  if node.get('refdomain') == 'py':
    target = _TYPE_TARGETS.get(node.get('reftarget'))
    if target:
      node['reftarget'] = target


class _LinkCodeNames(SphinxPostTransform):
  """Makes inline code that is exactly an optax or jax name a link."""

  default_priority = 5  # before the references are resolved (10)

  def run(self, **kwargs):
    inventory = intersphinx.InventoryAdapter(self.env).main_inventory
    known = set()
    for kind in ('py:function', 'py:class', 'py:type', 'py:module',
                 'py:method', 'py:attribute', 'py:data', 'py:exception'):
      known.update(inventory.get(kind, {}))
    for literal in list(self.document.findall(nodes.literal)):
      text = literal.astext()
      if not _CODE_NAME.fullmatch(text) or isinstance(
          literal.parent, (nodes.reference, addnodes.pending_xref,
                           nodes.title, addnodes.desc_name)):
        continue
      name = text.removesuffix('()')
      if name.startswith('jnp.'):
        name = 'jax.numpy.' + name[len('jnp.'):]
      if name not in known:
        continue
      reference = addnodes.pending_xref(
          '', refdomain='py', reftype='obj', reftarget=name,
          refexplicit=True, refwarn=False)
      literal.replace_self(reference)
      reference += literal


_OPENING = re.compile(r'[(\[{‘“]+$')
_CLOSING = re.compile(r'^[)\]},.;:!?’”]+')


class _KeepMathWithPunctuation(SphinxPostTransform):
  """Groups inline maths with the brackets and punctuation touching it
  (``($b_1 = 0$)``) in a ``span.math-nowrap``, so that a line never breaks
  between them: in a narrow table cell, a lone ")" used to start a line."""

  default_priority = 800

  def run(self, **kwargs):
    for math in list(self.document.findall(nodes.math)):
      parent = math.parent
      index = parent.index(math)
      before = parent[index - 1] if index > 0 else None
      after = parent[index + 1] if index + 1 < len(parent) else None
      lead = isinstance(before, nodes.Text) and _OPENING.search(before)
      trail = isinstance(after, nodes.Text) and _CLOSING.search(after)
      if not (lead or trail):
        continue
      group = nodes.inline(classes=['math-nowrap'])
      if lead:
        rest = str(before)[:lead.start()]
        if rest:
          parent.replace(before, nodes.Text(rest))
        else:
          parent.remove(before)
        group += nodes.Text(lead.group())
      parent.replace(math, group)
      group += math
      if trail:
        rest = str(after)[trail.end():]
        if rest:
          parent.replace(after, nodes.Text(rest))
        else:
          parent.remove(after)
        group += nodes.Text(trail.group())


def setup(app):
  app.connect('autodoc-skip-member', _skip_namedtuple_fields)
  app.connect('missing-reference', _retarget_type_hints, priority=100)
  app.add_post_transform(_LinkCodeNames)
  app.add_post_transform(_KeepMathWithPunctuation)
