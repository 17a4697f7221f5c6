r"""A test's time without the suite's XLA compilation cache, with an empty
one and with a full one.

  python benchmarks/test_compilation_cache.py

`tests/conftest.py` gives the whole test run one persistent compilation
cache (README, "Install and test"). This times `--test` (default: the
adaptive-testing end-to-end test, which trains, evaluates and reruns) in
three pytest processes one after the other: with the cache off
(`METAJAX_TEST_XLA_CACHE=`), with an empty cache folder, and with the folder
the second run filled. The first two are what a test costs in a fresh CI run
when no earlier test compiled its programs; the second also shows what its
own rerun gains.
"""

import os
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

flags.DEFINE_string(
    "test", "tests/test_experiments_adaptive_testing.py::"
    "test_runs_tests_every_selector_and_reruns_to_the_same_results",
    "The pytest node id to time.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  with tempfile.TemporaryDirectory() as folder:
    for way, cache in [("off", ""), ("empty", folder), ("full", folder)]:
      start = time.perf_counter()
      subprocess.run([sys.executable, "-m", "pytest", "-q", "-p",
                      "no:cacheprovider", FLAGS.test], cwd=root, check=True,
                     stdout=subprocess.DEVNULL,
                     env=dict(os.environ, METAJAX_TEST_XLA_CACHE=cache))
      print(f"{way}: {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
  app.run(main)
