r"""Where the test suite's time goes to XLA compiling: a pytest plugin and
its report.

  PYTHONPATH=benchmarks METAJAX_COMPILE_PROFILE=/tmp/profile \
      pytest -n auto --dist loadfile -p compile_profile --durations=0 \
      > /tmp/profile/suite.log
  python benchmarks/compile_profile.py /tmp/profile

The plugin listens to jax's compile events (tracing to a jaxpr, lowering to
MLIR, the backend compile, and the persistent cache's lookups) and adds each
event's seconds to a row keyed by the test that was running and by the
innermost frame of this repository on the stack when it fired, so a
program compiled by `metajax/training.py` for `tests/test_training.py` is
told apart from one compiled by an eager operation of a test. Each pytest
process (each xdist worker) writes its rows to `rows_<worker>.jsonl` in
`$METAJAX_COMPILE_PROFILE` at the end of its session. Programs compiled in a
test's subprocesses are not seen.

The report sums the rows by event and by repository frame, and, given the
`--durations=0` log of the same run (`suite.log` in the folder), sets the
compile seconds beside the seconds the tests took.
"""

import collections
import json
import os
import re
import sys
import traceback

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_ENV = "METAJAX_COMPILE_PROFILE"
_COMPILE_EVENTS = ("jaxpr_trace_duration", "jaxpr_to_mlir_module_duration",
                   "backend_compile_duration", "cache_retrieval_time_sec")

_running = {"test": None}
_rows = collections.defaultdict(lambda: [0, 0.0])


def _repository_frame() -> str:
  """`path:line:function` of the innermost frame in this repository."""
  for frame in reversed(traceback.extract_stack()):
    path = frame.filename
    if (path.startswith(ROOT) and os.sep + "site-packages" + os.sep not in path
        and not path.endswith("compile_profile.py")):
      return f"{path[len(ROOT):]}:{frame.lineno}:{frame.name}"
  return "(outside the repository)"


def _on_duration(event: str, seconds: float, **unused_metadata) -> None:
  name = event.rsplit("/", 1)[-1]
  if name in _COMPILE_EVENTS:
    row = _rows[(_running["test"], name, _repository_frame())]
    row[0] += 1
    row[1] += seconds


def pytest_configure(config):
  del config
  if not os.environ.get(_ENV):
    raise pytest.UsageError(f"compile_profile: set {_ENV} to an output folder")
  os.makedirs(os.environ[_ENV], exist_ok=True)
  from jax._src import monitoring  # pylint: disable=g-import-not-at-top
  monitoring.register_event_duration_secs_listener(_on_duration)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
  del nextitem
  _running["test"] = item.nodeid
  yield
  _running["test"] = None


def pytest_sessionfinish(session):
  del session
  worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
  path = os.path.join(os.environ[_ENV], f"rows_{worker}.jsonl")
  with open(path, "w", encoding="utf-8") as f:
    for (test, event, frame), (count, seconds) in _rows.items():
      f.write(json.dumps([test, event, frame, count, seconds]) + "\n")


def _test_seconds(log_path: str) -> float:
  """The seconds of every phase in a `--durations=0` log, summed."""
  pattern = re.compile(r"([\d.]+)s (call|setup|teardown)\s+\S+")
  with open(log_path, encoding="utf-8") as f:
    return sum(float(m.group(1)) for m in map(pattern.match, f) if m)


def report(folder: str, top: int = 30) -> None:
  rows = []
  for name in sorted(os.listdir(folder)):
    if name.startswith("rows_") and name.endswith(".jsonl"):
      with open(os.path.join(folder, name), encoding="utf-8") as f:
        rows += [json.loads(line) for line in f]
  if not rows:
    sys.exit(f"no rows_*.jsonl in {folder}: was the run made with "
             f"-p compile_profile and {_ENV}={folder}?")
  by_event = collections.Counter()
  programs = collections.Counter()
  by_frame = collections.Counter()
  for _, event, frame, count, seconds in rows:
    by_event[event] += seconds
    programs[event] += count
    if event != "cache_retrieval_time_sec":
      by_frame[frame] += seconds
  compiling = sum(s for e, s in by_event.items()
                  if e != "cache_retrieval_time_sec")
  for event, seconds in by_event.most_common():
    print(f"{event:32s} {seconds:9.1f} s  {programs[event]:6d} times")
  print(f"{'compiling, in all':32s} {compiling:9.1f} s  "
        f"{programs['backend_compile_duration']:6d} programs")
  log = os.path.join(folder, "suite.log")
  if os.path.exists(log):
    tests = _test_seconds(log)
    print(f"{'the tests, summed':32s} {tests:9.1f} s  "
          f"(compiling: {compiling / tests:.0%})")
  print(f"\nthe {top} repository frames that compiled longest:")
  for frame, seconds in by_frame.most_common(top):
    print(f"{seconds:9.1f} s  {frame}")


if __name__ == "__main__":
  if len(sys.argv) != 2:
    sys.exit(__doc__)
  report(sys.argv[1])
