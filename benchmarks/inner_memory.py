r"""Memory of long inner loops: exact second-order MAML with and without remat.

  python benchmarks/inner_memory.py --json

The workload: MAML's Omniglot model, the library's `Conv4` (4 x [3x3 conv, 64
filters, stride 2, batch norm, ReLU], mean-pool, linear head), 28x28x1 inputs,
5-way 5-shot with 15 query per class, inner lr 0.4. For every inner-step count
in `--inner_steps` and every setting in `--remat`, the script measures the
exact second-order meta-gradient of a meta-batch of tasks, the learner's own
`meta_grad` (`jax.value_and_grad` of the mean `maml_loss` over the vmapped
tasks), jitted:

* XLA's compiled memory analysis (`jitted.lower(...).compile()
  .memory_analysis()`): temporary, argument and output bytes. It depends only
  on the program, so it is the same on every run;
* the peak resident memory (`ru_maxrss`) of a fresh child process that
  compiles and runs only that configuration, once after compiling and once at
  its end, as measured: it includes the Python interpreter, JAX and XLA's
  compiler;
* the median time per meta-gradient of `--repeats` calls after one warm-up.

Every configuration runs in its own child process (this script with
`--child`), so one configuration's memory never counts towards another's. A
child that runs past `--timeout_s`, dies, or whose compiled program would need
more than `--max_memory_gib` is reported as such and the others go on. The
script prints a table (or, with `--json`, one JSON object per configuration
first) and plots peak memory against inner steps to `--plot`. Random images
stand in for Omniglot: memory and speed depend on shapes only.
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
import jax.numpy as jnp
import numpy as np

import metajax
from metajax import algorithms
from metajax.algorithms.base import cross_entropy
from metajax.models import Conv4

flags.DEFINE_list("inner_steps", ["10", "25", "50", "100"],
                  "Inner-step counts to measure.")
flags.DEFINE_list("remat", ["off", "on"],
                  "Remat settings to measure, each 'off' or 'on'.")
flags.DEFINE_integer("meta_batch_size", 4, "Tasks per meta-gradient.")
flags.DEFINE_integer("width", 64, "Conv4 filters per layer.")
flags.DEFINE_integer("repeats", 3, "Timed meta-gradients after the warm-up.")
flags.DEFINE_float("timeout_s", 300.0,
                   "Wall-clock limit of one configuration's child process.")
flags.DEFINE_float("max_memory_gib", 16.0,
                   "A child does not run a compiled program whose argument, "
                   "output and temporary buffers need more than this.")
flags.DEFINE_bool("json", False, "Print one JSON object per configuration.")
flags.DEFINE_string("plot", "docs/images/inner_memory.png",
                    "Where to write the plot; empty for none.")
flags.DEFINE_bool("child", False,
                  "Internal: measure the one configuration given by "
                  "--inner_steps and --remat and print it as JSON.")
FLAGS = flags.FLAGS

WAYS, SHOTS, QUERY, SIZE, INNER_LR = 5, 5, 15, 28, 0.4
MIB = 2.0**20


def _peak_rss_mib() -> float:
  """This process's peak resident set size so far, in MiB."""
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  # ru_maxrss is in KiB on Linux and in bytes on macOS.
  return peak / (MIB if sys.platform == "darwin" else 1024.0)


def _random_tasks(key, n_tasks):
  """Omniglot-shaped tasks: images `[n_tasks, ways * n, 28, 28, 1]`."""
  k_support, k_query = jax.random.split(key)
  labels = lambda n: jnp.broadcast_to(jnp.repeat(jnp.arange(WAYS), n),
                                      (n_tasks, WAYS * n))
  images = lambda k, n: jax.random.uniform(
      k, (n_tasks, WAYS * n, SIZE, SIZE, 1))
  return metajax.Task((images(k_support, SHOTS), labels(SHOTS)),
                      (images(k_query, QUERY), labels(QUERY)))


def measure(steps: int, remat: bool) -> dict:
  """Compiles, inspects and times one configuration in this process.

  Returns:
    A JSON-able dict: "status" ("ok", or "skipped" when the compiled program
    needs more than --max_memory_gib), compile time, XLA's buffer sizes in
    MiB, peak RSS after compiling and at the end, ms per meta-gradient, the
    meta-loss and whether the gradient is finite.
  """
  model = Conv4(num_outputs=WAYS, width=FLAGS.width)
  learner = algorithms.maml(
      lambda k: model.init(k, jnp.zeros((1, SIZE, SIZE, 1))), model.apply,
      cross_entropy, steps=steps, lr=INNER_LR, remat=remat)
  meta_params = learner.init(jax.random.PRNGKey(0))
  tasks = _random_tasks(jax.random.PRNGKey(1), FLAGS.meta_batch_size)
  key = jax.random.PRNGKey(2)
  t0 = time.perf_counter()
  compiled = jax.jit(learner.meta_grad).lower(meta_params, tasks, key).compile()
  row = {"backend": jax.default_backend(),
         "compile_s": time.perf_counter() - t0}
  stats = compiled.memory_analysis()
  if stats is not None:
    row.update(temp_mib=stats.temp_size_in_bytes / MIB,
               argument_mib=stats.argument_size_in_bytes / MIB,
               output_mib=stats.output_size_in_bytes / MIB)
  row["peak_rss_compiled_mib"] = _peak_rss_mib()
  needed = (stats.temp_size_in_bytes + stats.argument_size_in_bytes +
            stats.output_size_in_bytes) / 2.0**30 if stats else 0.0
  if needed > FLAGS.max_memory_gib:
    return dict(row, status="skipped",
                error=f"needs {needed:.1f} GiB > --max_memory_gib "
                      f"{FLAGS.max_memory_gib}")
  jax.block_until_ready(compiled(meta_params, tasks, key))  # warm-up
  times = []
  for _ in range(FLAGS.repeats):
    t0 = time.perf_counter()
    grads, metrics = jax.block_until_ready(compiled(meta_params, tasks, key))
    times.append(time.perf_counter() - t0)
  finite = all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
  return dict(row, status="ok", ms_per_meta_grad=1000 * float(np.median(times)),
              loss=float(metrics["loss"]), finite=finite,
              peak_rss_mib=_peak_rss_mib())


def run_child(steps: int, remat: str) -> dict:
  """Measures one configuration in a fresh process of this script."""
  row = {"inner_steps": steps, "remat": remat,
         "meta_batch_size": FLAGS.meta_batch_size, "width": FLAGS.width}
  command = [sys.executable, os.path.abspath(__file__), "--child",
             f"--inner_steps={steps}", f"--remat={remat}",
             f"--meta_batch_size={FLAGS.meta_batch_size}",
             f"--width={FLAGS.width}", f"--repeats={FLAGS.repeats}",
             f"--max_memory_gib={FLAGS.max_memory_gib}"]
  t0 = time.perf_counter()
  try:
    done = subprocess.run(command, capture_output=True, text=True,
                          timeout=FLAGS.timeout_s)
  except subprocess.TimeoutExpired:
    return dict(row, status="timeout",
                error=f"no result within --timeout_s {FLAGS.timeout_s:g}")
  row["child_wall_s"] = time.perf_counter() - t0
  if done.returncode != 0:
    # SIGKILL (exit code -9) is what the kernel's out-of-memory killer sends;
    # XLA itself reports a failed allocation as RESOURCE_EXHAUSTED.
    oom = done.returncode == -9 or "RESOURCE_EXHAUSTED" in done.stderr
    tail = done.stderr.strip().splitlines()[-1:] or [""]
    return dict(row, status="oom" if oom else "failed",
                error=f"exit code {done.returncode}: {tail[0][:200]}")
  return dict(row, **json.loads(done.stdout.strip().splitlines()[-1]))


def _cell(row, key, fmt):
  return fmt.format(row[key]) if key in row else "-"


def print_table(rows) -> None:
  header = ("steps", "remat", "peak RSS MiB", "RSS after compile MiB",
            "XLA temp MiB", "ms / meta-grad", "status")
  lines = [header] + [(
      str(r["inner_steps"]), r["remat"], _cell(r, "peak_rss_mib", "{:.0f}"),
      _cell(r, "peak_rss_compiled_mib", "{:.0f}"),
      _cell(r, "temp_mib", "{:.1f}"), _cell(r, "ms_per_meta_grad", "{:.0f}"),
      r["status"]) for r in rows]
  widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
  for line in lines:
    print("  ".join(c.rjust(w) for c, w in zip(line, widths)))


def plot(rows, path: str) -> None:
  """Peak RSS and XLA temporary memory against inner steps, remat off/on."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  panels = (("peak_rss_mib", "peak resident memory of the process (MiB)"),
            ("temp_mib", "XLA temporary buffers (MiB)"))
  for ax, (key, label) in zip(axes, panels):
    for remat in FLAGS.remat:
      points = [(r["inner_steps"], r[key]) for r in rows
                if r["remat"] == remat and key in r]
      if points:
        ax.plot(*zip(*points), "o-", label=f"remat {remat}")
    ax.set_xlabel("inner steps")
    ax.set_ylabel(label)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend()
  fig.suptitle(
      f"Second-order MAML meta-gradient, Conv4 ({FLAGS.width} filters), "
      f"5-way 5-shot 28x28, meta-batch {FLAGS.meta_batch_size}, "
      f"{rows[0].get('backend', '')}", fontsize=10)
  fig.tight_layout()
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv):
  del argv
  for remat in FLAGS.remat:
    if remat not in ("off", "on"):
      raise app.UsageError(f"--remat takes 'off' and 'on', got {remat!r}.")
  steps_list = [int(s) for s in FLAGS.inner_steps]
  if FLAGS.child:
    if len(steps_list) != 1 or len(FLAGS.remat) != 1:
      raise app.UsageError("--child measures one --inner_steps and --remat.")
    print(json.dumps(measure(steps_list[0], FLAGS.remat[0] == "on")))
    return
  t0 = time.perf_counter()
  rows = []
  for steps in steps_list:
    for remat in FLAGS.remat:
      row = run_child(steps, remat)
      rows.append(row)
      if FLAGS.json:
        print(json.dumps(row), flush=True)
      else:
        print(f"steps {steps:4d} remat {remat:3s}: {row['status']}",
              flush=True)
  print_table(rows)
  if FLAGS.plot:
    plot(rows, FLAGS.plot)
    print(f"plot written to {FLAGS.plot}")
  print(f"total wall time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
  app.run(main)
