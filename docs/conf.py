"""Sphinx configuration of the metajax documentation site.

Build it from the repository root:

  python -m sphinx -W --keep-going -b html docs docs/_build/html

The API pages are made by autodoc from the library's docstrings (Google
style, read by napoleon); the other pages are Markdown, read by myst_parser.
"""

import os
import re
import sys

# The package is imported from this checkout, installed or not.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# Importing metajax must not take a GPU or TPU away from anything else.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

project = "metajax"
author = "the metajax authors"
copyright = "the metajax authors"  # pylint: disable=redefined-builtin
release = version = "0.1.0"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.autosummary",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"

# fewshot.md and students.md are shown inside the result pages of their
# families (vision.md, student_results.md), which include them; examples/
# holds scripts, not pages.
exclude_patterns = ["_build", "fewshot.md", "students.md", "regression.md",
                    "examples"]

# Markdown: headings up to level 3 get anchors, so pages can link to them.
myst_heading_anchors = 3

# Docstrings write code as `name` (single backquotes, Markdown style); show
# it as code rather than as reStructuredText's default italic.
default_role = "literal"

# autodoc: document what a module defines, in source order, with the type
# hints in the description rather than in long signatures.
autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
# Values such as `SinusoidFamily()` or `DEFAULT_CACHE_DIR` are shown as
# written in the source, not as their repr at import time.
autodoc_preserve_defaults = True

# napoleon: the library's docstrings are Google style only.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True
napoleon_use_rtype = False
napoleon_attr_annotations = True

# A reference to a name the site does not document (jax.Array, optax types,
# numpy) stays plain text instead of failing the build.
nitpicky = False

html_theme = "alabaster"
html_title = "metajax"
html_static_path = []
html_theme_options = {
    "description": "Functional meta-learning for JAX",
    "fixed_sidebar": True,
    # Wide enough for code lines of 88 characters.
    "page_width": "1180px",
    "sidebar_width": "240px",
}


# Two habits of the library's docstrings that reStructuredText reads
# otherwise, fixed as the docstrings are read (the source stays as it is):
#
# * code shown as an indented block after a line that ends with a colon and
#   a blank line (Markdown style); reStructuredText wants "::" to make it a
#   literal block, and reads it as a quotation otherwise, or fails on its
#   indentation;
# * a plural written `Name`s: the closing backquote must be followed by a
#   space or punctuation, so it becomes `Name`\ s (an escaped space, which
#   renders as nothing).
_NAPOLEON_SECTIONS = {
    "args", "arguments", "attention", "attributes", "caution", "danger",
    "error", "example", "examples", "hint", "important", "keyword args",
    "keyword arguments", "methods", "note", "notes", "other parameters",
    "parameters", "receive", "receives", "return", "returns", "raise",
    "raises", "references", "see also", "tip", "todo", "warning", "warnings",
    "warn", "warns", "yield", "yields"}
_CODE = re.compile(r"``[^`]+``|`[^`]+`")


def _literal_blocks(lines):
  for i, line in enumerate(lines[:-2]):
    if (line.endswith(":") and not line.endswith("::")
        and line[:1].strip()
        and line[:-1].strip().lower() not in _NAPOLEON_SECTIONS
        and not lines[i + 1].strip()
        and lines[i + 2][:1] in (" ", "\t") and lines[i + 2].strip()):
      lines[i] = line + ":"


def _skip_member(app, what, name, obj, skip, options):
  """Leaves out the "Alias for field number N" entries of NamedTuple fields.

  The fields are described in the class's own Attributes section.
  """
  del app, what, name, options
  if (getattr(obj, "__doc__", None) or "").startswith("Alias for field number"):
    return True
  return skip


def _fix_docstring(app, what, name, obj, options, lines):
  del app, what, name, obj, options
  _literal_blocks(lines)
  # Backquotes pair up in order through the whole docstring (a span may
  # cross a line end).
  text = "\n".join(lines)
  text = _CODE.sub(
      lambda m: m.group(0) + ("\\ " if text[m.end():m.end() + 1].isalnum()
                              else ""), text)
  lines[:] = text.split("\n")


def setup(app):
  # Before napoleon (priority 500) turns Google sections into fields.
  app.connect("autodoc-process-docstring", _fix_docstring, priority=400)
  app.connect("autodoc-skip-member", _skip_member)
