r"""Memory and speed of `metajax.evaluate`, whole batch vmapped vs chunked.

  python benchmarks/eval_memory.py --json
  python benchmarks/eval_memory.py --episodes=200 --task_chunks=0,auto,5

The workload is the meta-test evaluation of `metajax/experiments/
fewshot_vision.py`: its ProtoNet learner (`make_learner` with
`Config(algorithm="protonet", ways=60, shots=1, query=5)`: Conv4 with
max-pooling, 64 filters), randomly initialised (accuracy does not matter for
memory and time), scoring 20-way 1-shot episodes with 15 query images per
class on the Omniglot meta-test split of `load_splits` (vinyals split, 28x28x1),
sampled on the device in batches of 50 episodes, as the experiment does.

For every `--task_chunks` value (0: the whole batch vmapped, what `evaluate`
always did before it had `task_chunk`; "auto": one task at a time on the
CPU; an int: that many tasks at a time) a fresh child process (this script
with `--child`) measures:

* the compile time of one batch's scoring program (`jax.jit(...).lower(...)
  .compile()` of the function `evaluate` compiles) and XLA's temporary
  buffer size for it (`memory_analysis()`);
* ms per episode: the median over `--repeats` batches, after one warm-up
  batch, divided by the batch size;
* the wall time of `metajax.evaluate(..., num_tasks=--episodes)` (which
  compiles its own program once, so compile time included) and the mean
  accuracy it returns: the same `key` gives the same episodes, so every
  configuration must report the same mean up to float summation order;
* the peak resident memory (`ru_maxrss`) of the child after loading the data
  and at its end: it includes the Python interpreter, JAX, XLA's compiler
  and the dataset (the whole of Omniglot is read, as the experiment reads
  it). A child past `--timeout_s` is killed and reports what it had measured,
  with the peak RSS it had reached.

The configurations run one after the other, never in parallel, so they do not
compete for memory or cores. `--synthetic` replaces Omniglot by random uint8
images of the meta-test split's shape (1,692 classes of 20 images); memory
and speed depend on shapes only.
"""

import json
import os
import resource
import subprocess
import sys
import time

from absl import app
from absl import flags
import jax
import numpy as np

import metajax
from metajax import algorithms
from metajax.data.vision import episodes
from metajax.evaluation import task_metrics
from metajax.experiments import fewshot_vision

flags.DEFINE_list("task_chunks", ["0", "auto"],
                  "evaluate(task_chunk=...) values to measure: 0 (whole batch "
                  "vmapped), 'auto' or a chunk size.")
flags.DEFINE_integer("episodes", 2000, "Episodes scored by evaluate().")
flags.DEFINE_integer("batch_size", 50, "Episodes per sampled batch.")
flags.DEFINE_integer("ways", 20, "Classes per test episode.")
flags.DEFINE_integer("shots", 1, "Support images per class.")
flags.DEFINE_integer("query", 15, "Query images per class.")
flags.DEFINE_integer("repeats", 5, "Timed batches after the warm-up.")
flags.DEFINE_string("data_dir", "",
                    "Folder holding omniglot/ (the npz arrays); '' for "
                    "$METAJAX_DATA_DIR or the per-user data folder.")
flags.DEFINE_string("cache_dir", "off",
                    "Cache of the 28x28 preprocessed Omniglot arrays; 'off' "
                    "for none (each child then preprocesses).")
flags.DEFINE_bool("synthetic", False,
                  "Random uint8 images of the Omniglot meta-test split's "
                  "shape instead of the real data.")
flags.DEFINE_integer("seed", 0, "Seed of the parameters and episodes.")
flags.DEFINE_float("timeout_s", 7200.0,
                   "Wall-clock limit of one configuration's child process.")
flags.DEFINE_bool("json", False, "Print one JSON object per configuration.")
flags.DEFINE_bool("child", False,
                  "Internal: measure the one configuration given by "
                  "--task_chunks and print it as JSON.")
FLAGS = flags.FLAGS

MIB = 2.0**20
# The vinyals meta-test split: 423 characters in 4 rotations, 20 drawings.
SYNTHETIC_CLASSES, SYNTHETIC_EXAMPLES, SIDE = 1692, 20, 28


def _peak_rss_mib() -> float:
  """This process's peak resident set size so far, in MiB."""
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  # ru_maxrss is in KiB on Linux and in bytes on macOS.
  return peak / (MIB if sys.platform == "darwin" else 1024.0)


def _parse_chunk(value: str):
  return value if value == "auto" else int(value)


def _test_split(config) -> episodes.ClassDataset:
  if FLAGS.synthetic:
    rng = np.random.default_rng(FLAGS.seed)
    images = rng.integers(0, 256, (SYNTHETIC_CLASSES, SYNTHETIC_EXAMPLES,
                                   SIDE, SIDE, 1), dtype=np.uint8)
    return episodes.make_dataset(
        images, [f"class{i}" for i in range(SYNTHETIC_CLASSES)])
  return fewshot_vision.load_splits(config)["test"]


def measure(task_chunk) -> dict:
  """Compiles, times and runs `evaluate` for one `task_chunk`, in-process."""
  config = fewshot_vision.Config(
      algorithm="protonet", ways=60, shots=1, query=5,
      data_dir=FLAGS.data_dir, cache_dir=FLAGS.cache_dir, seed=FLAGS.seed,
      progress=False)
  test = _test_split(config)
  sampler = episodes.episode_sampler(
      test, ways=FLAGS.ways, shots=FLAGS.shots, query=FLAGS.query,
      batch_size=FLAGS.batch_size, split="test")
  del test
  learner = fewshot_vision.make_learner(config, FLAGS.ways)
  key = jax.random.PRNGKey(FLAGS.seed)
  param_key, eval_key, time_key = jax.random.split(key, 3)
  meta_params = learner.init(param_key)
  row = {"backend": jax.default_backend(),
         "resolved_chunk": algorithms.resolve_task_chunk(task_chunk),
         "peak_rss_loaded_mib": _peak_rss_mib()}

  # The program `evaluate` compiles for one batch: sample, then score.
  scores = task_metrics(learner, algorithms.accuracy, task_chunk=task_chunk)
  jitted = jax.jit(lambda mp, k, s: scores(mp, s(k)))
  t0 = time.perf_counter()
  compiled = jitted.lower(meta_params, time_key, sampler).compile()
  row["compile_s"] = time.perf_counter() - t0
  stats = compiled.memory_analysis()
  if stats is not None:
    row["xla_temp_mib"] = stats.temp_size_in_bytes / MIB
  keys = jax.random.split(time_key, FLAGS.repeats + 1)
  jax.block_until_ready(compiled(meta_params, keys[0], sampler))  # warm-up
  times = []
  for k in keys[1:]:
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(meta_params, k, sampler))
    times.append(time.perf_counter() - t0)
  row["ms_per_episode"] = 1000 * float(np.median(times)) / FLAGS.batch_size
  row["peak_rss_timed_mib"] = _peak_rss_mib()
  del compiled
  print(json.dumps(row), flush=True)  # what a killed child still reports

  t0 = time.perf_counter()
  accuracy = metajax.evaluate(learner, meta_params, sampler,
                              algorithms.accuracy, key=eval_key,
                              num_tasks=FLAGS.episodes, task_chunk=task_chunk)
  row["evaluate_s"] = time.perf_counter() - t0
  row["mean_accuracy"] = float(np.mean(accuracy))
  row["peak_rss_mib"] = _peak_rss_mib()
  return row


def _vm_hwm_mib(pid: int):
  """A running process's peak RSS (Linux VmHWM, what ru_maxrss reports)."""
  try:
    with open(f"/proc/{pid}/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 1024.0  # kB
  except OSError:
    pass
  return None


def run_child(task_chunk: str) -> dict:
  """Measures one configuration in a fresh process of this script.

  The child prints its measurements as it goes (JSON lines), so a child
  killed by the timeout still reports what it has, with the peak RSS it had
  reached (read from /proc before killing it).
  """
  row = {"task_chunk": task_chunk, "episodes": FLAGS.episodes,
         "batch_size": FLAGS.batch_size, "ways": FLAGS.ways,
         "shots": FLAGS.shots, "query": FLAGS.query,
         "data": "synthetic" if FLAGS.synthetic else "omniglot"}
  command = [sys.executable, os.path.abspath(__file__), "--child",
             f"--task_chunks={task_chunk}"] + [
                 f"--{name}={FLAGS[name].value}" for name in (
                     "episodes", "batch_size", "ways", "shots", "query",
                     "repeats", "data_dir", "cache_dir", "synthetic", "seed")]
  t0 = time.perf_counter()
  child = subprocess.Popen(command, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
  timed_out = False
  try:
    stdout, stderr = child.communicate(timeout=FLAGS.timeout_s)
  except subprocess.TimeoutExpired:
    timed_out = True
    peak = _vm_hwm_mib(child.pid)
    child.kill()
    stdout, stderr = child.communicate()
  row["child_wall_s"] = time.perf_counter() - t0
  for line in stdout.strip().splitlines():
    if line.startswith("{"):
      row.update(json.loads(line))
  if timed_out:
    if peak is not None:
      row["peak_rss_mib"] = peak
    return dict(row, status="timeout",
                error=f"not done within --timeout_s {FLAGS.timeout_s:g}")
  if child.returncode != 0:
    # SIGKILL (exit code -9) is what the kernel's out-of-memory killer sends.
    tail = stderr.strip().splitlines()[-1:] or [""]
    return dict(row, status="oom" if child.returncode == -9 else "failed",
                error=f"exit code {child.returncode}: {tail[0][:300]}")
  return dict(row, status="ok")


def _cell(row, key, fmt):
  return fmt.format(row[key]) if key in row else "-"


def print_table(rows) -> None:
  header = ("task_chunk", "peak RSS MiB", "RSS after data MiB", "XLA temp MiB",
            "compile s", "ms / episode", "evaluate s", "mean acc", "status")
  lines = [header] + [(
      r["task_chunk"], _cell(r, "peak_rss_mib", "{:.0f}"),
      _cell(r, "peak_rss_loaded_mib", "{:.0f}"),
      _cell(r, "xla_temp_mib", "{:.0f}"), _cell(r, "compile_s", "{:.1f}"),
      _cell(r, "ms_per_episode", "{:.1f}"), _cell(r, "evaluate_s", "{:.1f}"),
      _cell(r, "mean_accuracy", "{:.5f}"), r["status"]) for r in rows]
  widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
  for line in lines:
    print("  ".join(c.rjust(w) for c, w in zip(line, widths)))


def main(argv):
  del argv
  for value in FLAGS.task_chunks:
    try:
      algorithms.resolve_task_chunk(_parse_chunk(value))
    except ValueError as err:
      raise app.UsageError(f"--task_chunks: {err}") from None
  if FLAGS.child:
    if len(FLAGS.task_chunks) != 1:
      raise app.UsageError("--child measures one --task_chunks value.")
    print(json.dumps(measure(_parse_chunk(FLAGS.task_chunks[0]))),
          flush=True)
    return
  t0 = time.perf_counter()
  rows = []
  for value in FLAGS.task_chunks:
    row = run_child(value)
    rows.append(row)
    if FLAGS.json:
      print(json.dumps(row), flush=True)
    else:
      print(f"task_chunk {value}: {row['status']}", flush=True)
  print(f"ProtoNet Conv4, {FLAGS.ways}-way {FLAGS.shots}-shot "
        f"{FLAGS.query}-query, {FLAGS.episodes} episodes in batches of "
        f"{FLAGS.batch_size}, {rows[0].get('data')}, "
        f"{rows[0].get('backend', '?')}:")
  print_table(rows)
  print(f"total wall time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
  app.run(main)
