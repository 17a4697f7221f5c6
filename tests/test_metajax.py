"""The top-level package: a light import that stands apart from experiments."""

import ast
import os
import subprocess
import sys

import metajax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBRARY = os.path.join(ROOT, "metajax")


def _imports(path):
  """Names of the modules a source file imports (absolute imports only)."""
  with open(path) as f:
    tree = ast.parse(f.read(), path)
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      yield node.module


def _library_files():
  for folder, dirs, files in os.walk(LIBRARY):
    dirs[:] = [d for d in dirs if d not in ("experiments", "__pycache__")]
    for name in files:
      if name.endswith(".py"):
        yield os.path.join(folder, name)


def test_the_library_never_imports_absl_or_the_experiments():
  offenders = [
      (os.path.relpath(path, ROOT), module)
      for path in _library_files() for module in _imports(path)
      if module.split(".")[0] == "absl"
      or module.startswith("metajax.experiments")]
  assert not offenders


def test_import_metajax_loads_no_loader_experiment_or_heavy_backend():
  code = ("import sys, metajax; print('\\n'.join(sorted(sys.modules)))")
  loaded = set(subprocess.run([sys.executable, "-c", code], check=True,
                              capture_output=True, text=True,
                              cwd=ROOT).stdout.split())
  assert "metajax.training" in loaded  # the probe itself works
  for heavy in ("metajax.experiments", "metajax.data.vision", "orbax",
                "tensorflow", "tensorflow_datasets", "PIL", "matplotlib",
                "torch"):
    assert not {m for m in loaded if m == heavy or
                m.startswith(heavy + ".")}, heavy


def test_the_public_names_are_reexported():
  for name in ("MetaLearner", "Task", "TrainState", "adapt", "maml_loss",
               "train", "evaluate", "mean_ci", "restore_state",
               "restore_best", "restore_params", "read_metrics",
               "implicit_solution", "InnerAux"):
    assert hasattr(metajax, name), name
  assert metajax.train is metajax.training.train
  assert isinstance(metajax.__version__, str)
