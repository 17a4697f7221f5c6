"""The documentation site builds without a warning, and its code runs.

The site is built with Sphinx from docs/ (see docs/conf.py for the command).
Every ```python block of its Markdown pages and every `code-block:: python`
of its reStructuredText pages runs here, each in a fresh namespace and a
fresh working directory. A block that is not meant to run must be marked
`text`, not `python`.
"""

import glob
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")

# Markdown fences (```python and MyST's ```{code-block} python), and
# reStructuredText's code-block / code / sourcecode directives.
_MD_BLOCK = re.compile(
    r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*"
    r"(?:python|py|\{code-block\}[ \t]+python|\{code\}[ \t]+python)[ \t]*\n"
    r"(?P<body>.*?)^(?P=indent)(?P=fence)[ \t]*$", re.M | re.S)
_RST_DIRECTIVE = re.compile(
    r"^(?P<indent>[ \t]*)\.\. (?:code-block|code|sourcecode)::[ \t]*"
    r"(?:python|py)[ \t]*\n", re.M)


def _pages():
  """Every page source under docs/, built or not (build output aside)."""
  build = os.path.join(DOCS, "_build") + os.sep
  paths = glob.glob(os.path.join(DOCS, "**", "*.md"), recursive=True)
  paths += glob.glob(os.path.join(DOCS, "**", "*.rst"), recursive=True)
  return sorted(p for p in paths if not p.startswith(build))


def _dedent(lines):
  width = min((len(l) - len(l.lstrip()) for l in lines if l.strip()),
              default=0)
  return "\n".join(l[width:] for l in lines).strip("\n") + "\n"


def _rst_blocks(text):
  """Bodies of python code directives: their options, then indented lines."""
  blocks = []
  for m in _RST_DIRECTIVE.finditer(text):
    indent = len(m.group("indent").expandtabs())
    lines = text[m.end():].split("\n")
    body, started = [], False
    for line in lines:
      depth = len(line) - len(line.lstrip())
      if line.strip() and depth <= indent:
        break
      if not started and line.strip().startswith(":"):
        continue  # a directive option such as :caption:
      if line.strip():
        started = True
      if started:
        body.append(line)
    while body and not body[-1].strip():
      body.pop()
    blocks.append((text[:m.start()].count("\n") + 2, _dedent(body)))
  return blocks


def _md_blocks(text):
  blocks = []
  for m in _MD_BLOCK.finditer(text):
    lines = m.group("body").split("\n")
    # MyST directive options (":caption: ...") at the top of the block.
    while lines and re.match(r"^[ \t]*:[\w-]+:", lines[0]):
      lines.pop(0)
    blocks.append((text[:m.start()].count("\n") + 2, _dedent(lines)))
  return blocks


def python_snippets():
  """(page, first line, code) for every python block of every page."""
  snippets = []
  for path in _pages():
    with open(path, encoding="utf-8") as f:
      text = f.read()
    blocks = _rst_blocks(text) if path.endswith(".rst") else _md_blocks(text)
    rel = os.path.relpath(path, ROOT)
    snippets += [(rel, line, code) for line, code in blocks]
  return snippets


def test_snippet_extraction_finds_both_syntaxes():
  md = ("x\n\n```python\nprint(1)\n```\n\n```text\nnot(run\n```\n\n"
        "```{code-block} python\n:caption: c\nprint(2)\n```\n")
  assert [c for _, c in _md_blocks(md)] == ["print(1)\n", "print(2)\n"]
  rst = (".. code-block:: python\n   :caption: c\n\n   a = 1\n\n   print(a)\n"
         "\nafter\n\n.. code-block:: text\n\n   no(run\n")
  assert [c for _, c in _rst_blocks(rst)] == ["a = 1\n\nprint(a)\n"]


def test_pages_have_snippets():
  pages = {page for page, _, _ in python_snippets()}
  for page in ("quickstart.md", "own_model.md", "design.md"):
    assert os.path.join("docs", page) in pages


@pytest.mark.parametrize(
    "page,line,code", python_snippets(),
    ids=[f"{p}:{l}" for p, l, _ in python_snippets()])
def test_snippets_run(page, line, code, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # snippets write their workdirs here
  namespace = {"__name__": "__main__"}
  exec(compile(code, f"{page}:{line}", "exec"), namespace)  # pylint: disable=exec-used


@pytest.mark.slow
def test_site_builds(tmp_path):
  """The build of the README's command, into a temporary folder."""
  result = subprocess.run(
      [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b",
       "html", "-d", str(tmp_path / "doctrees"), DOCS, str(tmp_path / "html")],
      cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
  assert result.returncode == 0, result.stdout + result.stderr
  for page in ("index", "quickstart", "own_model", "design", "sinusoid",
               "regression_results", "vision", "student_results",
               "adaptive_testing", "benchmarks", "scale",
               "api/index", "api/metajax"):
    assert (tmp_path / "html" / f"{page}.html").is_file(), page


def _table_and_command_lines(text):
  """Lines of Markdown tables and of bash blocks: the numbers and commands."""
  lines = []
  in_bash = False
  for line in text.split("\n"):
    if line.startswith("```"):
      in_bash = line.strip() == "```bash"
      continue
    if in_bash or line.startswith("|"):
      lines.append(line)
  return lines


@pytest.mark.parametrize("page", ["sinusoid.md", "regression_results.md",
                                  "vision.md", "student_results.md",
                                  "adaptive_testing.md", "benchmarks.md",
                                  "robust.md", "continual.md"])
def test_results_are_the_readmes(page):
  """Every result table row and command of a results page is in README.md.

  The results pages copy their numbers from the README, beside the commands
  that produced them; when the README changes, this names what to update.
  """
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    readme = f.read()
  with open(os.path.join(DOCS, page), encoding="utf-8") as f:
    text = f.read()
  stale = [l for l in _table_and_command_lines(text)
           if l.strip() and l not in readme]
  assert not stale, f"docs/{page} lines not in README.md:\n" + "\n".join(stale)


def test_every_module_has_an_api_page():
  """Each library module (the experiments' bodies aside) has a page."""
  pages = ""
  for path in glob.glob(os.path.join(DOCS, "api", "*.rst")):
    with open(path, encoding="utf-8") as f:
      pages += f.read()
  documented = set(re.findall(r"^\.\. automodule:: (\S+)", pages, re.M))
  modules = set()
  for path in glob.glob(os.path.join(ROOT, "metajax", "**", "*.py"),
                        recursive=True):
    name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
    name = name[:-len(".__init__")] if name.endswith(".__init__") else name
    if not name.startswith("metajax.experiments"):
      modules.add(name)
  assert modules - documented == set(), "modules without an API page"
