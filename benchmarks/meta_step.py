r"""Time per meta-step: metajax against PyTorch, on the same inputs, side by side.

  pip install -e ".[bench]"
  python benchmarks/meta_step.py             # table, ratios, PNG
  python benchmarks/meta_step.py --json      # one JSON object per line
  python benchmarks/meta_step.py --framework=torch-func --inner_steps=5

Frameworks: `metajax` (the library's `make_train_step`, the path the
experiments use), `torch-loop` (a learn2learn-style per-task loop) and
`torch-func` (`torch.func` with `vmap` over tasks). Workloads are defined in
`workloads.py`: second-order MAML on Omniglot-shaped conv4 (1 and 5 inner
steps), ProtoNets episodes and the student-performance MAML step.

Every configuration runs in its own child process, one after the other, so
that each one's peak memory is its own and the two frameworks' thread pools
never compete. Each child builds the step, runs it once (metajax: compiles
it first, timed apart), then times `--repeats` more steps; the median is
reported. With `--rounds=R` the whole set runs R times in turn and each
configuration reports the median of its R medians, with the per-round
ratios. The meta-losses of the first two steps must agree across frameworks
(`loss_matches_metajax`): the first checks the inner loop, the second the
meta-gradient and the Adam step. Model FLOPs are those of the matrix products
in the metajax step's jaxpr, every loop counted by its trip count; FLOP/s are
divided by the same framework's fp32 matrix-product peak.
"""

import json
import os
import platform
import resource
import subprocess
import sys

from absl import app
from absl import flags

FRAMEWORKS = ("metajax", "torch-loop", "torch-func")
WORKLOADS = ("maml", "protonet", "student")

flags.DEFINE_list("framework", list(FRAMEWORKS), "Frameworks to time.")
flags.DEFINE_list("workload", list(WORKLOADS), "Workloads to time.")
flags.DEFINE_list("inner_steps", ["1", "5"],
                  "Inner steps of the MAML workload (the student workload "
                  "always takes 5, ProtoNets none).")
flags.DEFINE_integer("repeats", 5, "Timed meta-steps after the first (>= 1).")
flags.DEFINE_integer("rounds", 1,
                     "Times to run the whole set of configurations, one "
                     "round after the other (>= 1); each configuration "
                     "reports the median over rounds, so a slow spell on a "
                     "shared machine hits every framework alike.")
flags.DEFINE_integer("meta_batch_size", 32, "Tasks (episodes) per meta-step.")
flags.DEFINE_string("task_chunk", "experiment",
                    "metajax's tasks per pass of the meta-gradient: "
                    "'experiment' (the experiment's default: 'auto' for the "
                    "vision workloads, the whole batch for student), 'auto', "
                    "or an int (0: the whole batch vmapped).")
flags.DEFINE_bool("json", False, "Print one JSON object per line.")
flags.DEFINE_string("plot", "", "Write a PNG bar chart here ('' for none).")
flags.DEFINE_bool("child", False, "Internal: run one configuration.")
FLAGS = flags.FLAGS


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor()


def _child(framework: str, workload: str, inner_steps: int) -> dict:
  """Runs one configuration in this process; its result row."""
  import numpy as np
  if framework == "metajax":
    import jax
    import jax_workloads
    chunk = FLAGS.task_chunk
    out = jax_workloads.run(
        workload, inner_steps, FLAGS.meta_batch_size, FLAGS.repeats,
        chunk if chunk in ("experiment", "auto") else int(chunk))
    out["matmul_peak_gflops"] = jax_workloads.matmul_gflops()
    out["versions"] = {"jax": jax.__version__}
  else:
    import torch
    import torch_workloads
    out = torch_workloads.run(workload, framework.split("-")[1], inner_steps,
                              FLAGS.meta_batch_size, FLAGS.repeats)
    out["matmul_peak_gflops"] = torch_workloads.matmul_gflops()
    out["versions"] = {"torch": torch.__version__}
  times = out.pop("times_s")
  out.update(framework=framework, workload=workload, inner_steps=inner_steps,
             ms_per_step=1000 * float(np.median(times)),
             ms_min=1000 * min(times), ms_max=1000 * max(times),
             peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
             / 1024)
  return out


def _configurations():
  for workload in FLAGS.workload:
    if workload not in WORKLOADS:
      raise ValueError(f"--workload: unknown {workload!r}; known: "
                       f"{', '.join(WORKLOADS)}.")
    steps = {"maml": [int(s) for s in FLAGS.inner_steps], "protonet": [0],
             "student": [5]}[workload]
    for s in steps:
      for framework in FLAGS.framework:
        if framework not in FRAMEWORKS:
          raise ValueError(f"--framework: unknown {framework!r}; known: "
                           f"{', '.join(FRAMEWORKS)}.")
        yield framework, workload, s


def _run_child(framework, workload, inner_steps) -> dict:
  cmd = [sys.executable, os.path.abspath(__file__), "--child",
         f"--framework={framework}", f"--workload={workload}",
         f"--inner_steps={inner_steps}", f"--repeats={FLAGS.repeats}",
         f"--meta_batch_size={FLAGS.meta_batch_size}",
         f"--task_chunk={FLAGS.task_chunk}"]
  proc = subprocess.run(cmd, capture_output=True, text=True)
  rows = [l for l in proc.stdout.splitlines() if l.startswith("{")]
  if proc.returncode or not rows:
    tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
    return {"framework": framework, "workload": workload,
            "inner_steps": inner_steps,
            "error": f"exit {proc.returncode}: {tail}"}
  return json.loads(rows[-1])


def _merge_rounds(rounds):
  """One row per configuration from `rounds`, lists of rows in one order."""
  import numpy as np
  merged = []
  for same in zip(*rounds):
    good = [r for r in same if "error" not in r]
    if len(good) < len(same):
      merged.append(next(r for r in same if "error" in r))
      continue
    row = dict(good[0])
    row["ms_per_step_rounds"] = [r["ms_per_step"] for r in good]
    row["ms_per_step"] = float(np.median(row["ms_per_step_rounds"]))
    row["ms_min"] = min(r["ms_min"] for r in good)
    row["ms_max"] = max(r["ms_max"] for r in good)
    row["peak_rss_mb"] = max(r["peak_rss_mb"] for r in good)
    row["matmul_peak_gflops"] = max(r["matmul_peak_gflops"] for r in good)
    for key in ("compile_s", "first_step_s"):
      if key in row:
        row[key] = float(np.median([r[key] for r in good]))
    merged.append(row)
  return merged


def _add_ratios(rows):
  """Speed-ups of metajax, FLOP/s and loss agreement, in place."""
  by = {(r["framework"], r["workload"], r["inner_steps"]): r for r in rows
        if "error" not in r}
  for (framework, workload, steps), row in by.items():
    mine = by.get(("metajax", workload, steps))
    if mine is None:
      continue
    flops = mine["flops"]
    row["model_gflop"] = flops / 1e9
    row["gflops_per_s"] = flops / 1e9 / (row["ms_per_step"] / 1000)
    row["peak_fraction"] = row["gflops_per_s"] / row["matmul_peak_gflops"]
    if workload == "protonet":
      row["episodes_per_s"] = FLAGS.meta_batch_size / (
          row["ms_per_step"] / 1000)
    if framework != "metajax":
      key = f"speedup_vs_{framework.replace('-', '_')}"
      mine[key] = row["ms_per_step"] / mine["ms_per_step"]
      mine[key + "_rounds"] = [
          theirs / ours for theirs, ours in zip(row["ms_per_step_rounds"],
                                                mine["ms_per_step_rounds"])]
      row["loss_matches_metajax"] = all(
          abs(row[k] - mine[k]) <= 1e-4 * max(1.0, abs(mine[k]))
          for k in ("first_loss", "second_loss"))


def _table(rows) -> str:
  lines = [f"{'workload':<9} {'steps':>5} {'framework':<11} {'ms/step':>9} "
           f"{'compile/1st s':>13} {'peak MB':>8} {'GFLOP/s':>8} "
           f"{'% peak':>7} {'metajax x':>9} {'same loss':>9}"]
  for r in rows:
    head = f"{r['workload']:<9} {r['inner_steps']:>5} {r['framework']:<11}"
    if "error" in r:
      lines.append(f"{head} failed: {r['error'].splitlines()[0]}")
      continue
    first = r.get("compile_s", r.get("first_step_s", float("nan")))
    mine = next((m for m in rows if m["framework"] == "metajax"
                 and m["workload"] == r["workload"]
                 and m["inner_steps"] == r["inner_steps"]
                 and "error" not in m), None)
    ratio = (f"{r['ms_per_step'] / mine['ms_per_step']:>8.2f}x"
             if mine and r is not mine else f"{'':>9}")
    lines.append(
        f"{head} {r['ms_per_step']:>9.1f} {first:>13.1f} "
        f"{r['peak_rss_mb']:>8.0f} {r.get('gflops_per_s', float('nan')):>8.1f}"
        f" {100 * r.get('peak_fraction', float('nan')):>6.1f}% {ratio} "
        f"{str(r.get('loss_matches_metajax', '')):>9}")
  return "\n".join(lines)


def _plot(rows, path: str):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  groups = sorted({(r["workload"], r["inner_steps"]) for r in rows},
                  key=lambda g: (WORKLOADS.index(g[0]), g[1]))
  frameworks = [f for f in FRAMEWORKS if any(r["framework"] == f
                                             for r in rows)]
  fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(groups), 3.6))
  width = 0.8 / max(len(frameworks), 1)
  for i, framework in enumerate(frameworks):
    heights = []
    for workload, steps in groups:
      row = next((r for r in rows if r["framework"] == framework
                  and r["workload"] == workload
                  and r["inner_steps"] == steps and "error" not in r), None)
      heights.append(row["ms_per_step"] if row else 0.0)
    bars = ax.bar([g + i * width for g in range(len(groups))], heights, width,
                  label=framework)
    ax.bar_label(bars, fmt="%.0f", fontsize=7)
  ax.set_xticks([g + width * (len(frameworks) - 1) / 2
                 for g in range(len(groups))])
  ax.set_xticklabels([f"{w}\n{s} inner" if w == "maml" else w
                      for w, s in groups])
  ax.set_ylabel("ms per meta-step (lower is better)")
  ax.set_yscale("log")
  ax.legend(fontsize=8)
  ax.set_title(f"meta-batch {FLAGS.meta_batch_size}, {os.cpu_count()} CPU "
               f"cores", fontsize=9)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=120)


def main(argv):
  del argv
  if FLAGS.repeats < 1:
    raise app.UsageError("--repeats must be at least 1.")
  if FLAGS.rounds < 1:
    raise app.UsageError("--rounds must be at least 1.")
  if FLAGS.child:
    (framework,), (workload,) = FLAGS.framework, FLAGS.workload
    print(json.dumps(_child(framework, workload, int(FLAGS.inner_steps[0]))))
    return
  machine = {"cpu": _cpu_model(), "cpu_count": os.cpu_count(),
             "python": platform.python_version()}
  if not FLAGS.json:
    print(f"machine: {machine}")
  configurations = list(_configurations())
  rounds = []
  for i in range(FLAGS.rounds):
    rounds.append([])
    for config in configurations:
      row = _run_child(*config)
      rounds[-1].append(row)
      if not FLAGS.json:
        print(f"  round {i + 1}/{FLAGS.rounds}, ran {config}: "
              f"{row.get('ms_per_step', float('nan')):.1f} ms/step"
              f"{' ' + row['error'] if 'error' in row else ''}", flush=True)
  rows = _merge_rounds(rounds)
  _add_ratios(rows)
  if FLAGS.json:
    for row in rows:
      print(json.dumps(dict(row, machine=machine)))
  else:
    print(_table(rows))
    for row in rows:
      for key, values in row.items():
        if key.startswith("speedup_vs_") and key.endswith("_rounds"):
          other = key[len("speedup_vs_"):-len("_rounds")].replace("_", "-")
          print(f"{row['workload']}, {row['inner_steps']} inner steps: "
                f"{other} time / metajax time, per round: "
                f"{', '.join(f'{v:.2f}' for v in values)}")
  if FLAGS.plot:
    _plot(rows, FLAGS.plot)
  if any("error" in r for r in rows):
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
