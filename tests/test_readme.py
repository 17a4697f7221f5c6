"""The README's Python example runs as written."""

import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
  with open(os.path.join(ROOT, "README.md")) as f:
    blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
  assert blocks, "README.md has no python example"
  monkeypatch.chdir(tmp_path)  # the example writes its workdir here
  for block in blocks:
    exec(compile(block, "README.md", "exec"), {"__name__": "readme"})
  out = capsys.readouterr().out
  assert "'n': 600" in out
  assert os.path.isdir(tmp_path / "run" / "checkpoints")
