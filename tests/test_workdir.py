"""One run per workdir."""

import json
import os
import signal
import subprocess
import sys

import pytest

from metajax import workdir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _holder(path):
  """A real second process that holds `path` until it is killed."""
  code = ("import sys, time; from metajax import workdir\n"
          f"with workdir.hold({str(path)!r}):\n"
          "  print('held', flush=True); time.sleep(600)\n")
  proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT,
                          stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == "held"
  return proc


def test_a_second_run_is_refused_naming_the_workdir_and_the_pid(tmp_path):
  proc = _holder(tmp_path)
  try:
    with pytest.raises(workdir.WorkdirBusyError) as info:
      with workdir.hold(str(tmp_path)):
        pass
    assert str(tmp_path) in str(info.value)
    assert f"PID {proc.pid}" in str(info.value)
  finally:
    proc.kill()
    proc.wait()


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path):
  proc = _holder(tmp_path)
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  with workdir.hold(str(tmp_path)):
    with open(tmp_path / workdir.LOCK_NAME) as f:
      assert json.load(f)["pid"] == os.getpid()


def test_hold_is_reentrant_within_a_process(tmp_path):
  with workdir.hold(str(tmp_path)):
    with workdir.hold(str(tmp_path)):
      pass
    # Still held by the outer block: another process is refused.
    code = ("from metajax import workdir\n"
            f"with workdir.hold({str(tmp_path)!r}): pass\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode != 0 and "in use by another run" in result.stderr
  # Released after the outer block.
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT,
                          capture_output=True, text=True)
  assert result.returncode == 0, result.stderr
