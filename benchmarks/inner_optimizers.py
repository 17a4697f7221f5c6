r"""Time and memory of one meta-gradient per inner optimiser, and iMAML's.

  python benchmarks/inner_optimizers.py
  python benchmarks/inner_optimizers.py --ways=20 --batch=16 --steps=1,16 \
      --imaml_reg=0.1 --imaml_damping=200 --rounds=3

The workload is the few-shot experiment's learner (`fewshot_vision.
make_learner`: Conv4 with strided convolutions, 64 filters, Omniglot's
28x28x1 inputs) on `--batch` random `--ways`-way 1-shot episodes with 5
query images per class, mapped one task at a time on the CPU (the
experiment's `--task_chunk=auto`); pixel values do not change the cost.
For each number of inner steps in `--steps`, the meta-gradients of

* MAML with gradient descent (`--inner_optimizer=sgd`, the default path),
  with `optax.sgd` at the same rate, with momentum and with Adam;
* MAML with `remat` (rematerialised inner steps);
* iMAML with gradient descent (`--cg_steps` conjugate-gradient iterations,
  `--imaml_reg` and `--imaml_damping`: CG may stop early, so they can
  change its cost)

are compiled, then timed `--rounds` times each, in turn, in this one
process (`student_performance.side_by_side_times`); the table gives the
median milliseconds of one meta-gradient of the batch, its ratio to MAML
with gradient descent at the same steps, and XLA's temporary memory for it
(`memory_analysis()` of the compiled program: deterministic, fixed at
compile time).
"""

import dataclasses
import json

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import optax

from metajax import algorithms
from metajax import tasks as tasks_lib
from metajax.experiments import fewshot_vision as fv
from metajax.experiments import student_performance as sp

flags.DEFINE_integer("ways", 5, "Classes per episode.")
flags.DEFINE_integer("batch", 4, "Episodes per meta-gradient.")
flags.DEFINE_list("steps", ["5", "20"], "Inner steps to compare.")
flags.DEFINE_integer("rounds", 5, "Timed meta-gradients of each learner.")
flags.DEFINE_integer("cg_steps", 5, "iMAML's conjugate-gradient iterations.")
flags.DEFINE_float("imaml_reg", 2.0, "iMAML's proximal strength lambda.")
flags.DEFINE_float("imaml_damping", 10.0, "iMAML's damping.")
flags.DEFINE_bool("json", False, "Print one JSON object per row.")
FLAGS = flags.FLAGS

QUERY = 5


def _episodes(ways: int, batch: int) -> tasks_lib.Task:
  """`batch` random `ways`-way 1-shot episodes, uint8 `[batch, n, 28, 28, 1]`
  images and int32 `[batch, n]` labels."""
  rng = np.random.default_rng(0)
  def one_set(per_class):
    x = rng.integers(0, 256, (batch, ways * per_class, 28, 28, 1), np.uint8)
    y = np.tile(np.repeat(np.arange(ways, dtype=np.int32), per_class),
                (batch, 1))
    return jnp.asarray(x), jnp.asarray(y)
  return tasks_lib.Task(one_set(1), one_set(QUERY))


def _learners(steps: int):
  base = fv.Config(algorithm="maml", ways=FLAGS.ways, test_ways=(FLAGS.ways,),
                   inner_steps=steps, inner_lr=0.4, cg_steps=FLAGS.cg_steps)
  learners = {
      name: fv.make_learner(dataclasses.replace(base, inner_optimizer=name),
                            FLAGS.ways)
      for name in ("sgd", "momentum", "adam")}
  init_fn, apply_fn = fv.classifier_model(base, FLAGS.ways)
  learners["optax.sgd"] = algorithms.maml(
      init_fn, apply_fn, algorithms.cross_entropy, steps=steps,
      inner_optimizer=optax.sgd(0.4))
  learners["sgd, remat"] = algorithms.maml(
      init_fn, apply_fn, algorithms.cross_entropy, steps=steps, lr=0.4,
      remat=True)
  learners["imaml"] = fv.make_learner(
      dataclasses.replace(base, algorithm="imaml", imaml_reg=FLAGS.imaml_reg,
                          imaml_damping=FLAGS.imaml_damping), FLAGS.ways)
  return learners


def main(argv):
  del argv
  tasks = _episodes(FLAGS.ways, FLAGS.batch)
  rows = []
  for steps in map(int, FLAGS.steps):
    calls, memory = {}, {}
    for name, learner in _learners(steps).items():
      # As the experiment runs it: one task at a time on the CPU.
      learner = algorithms.map_tasks(
          learner, algorithms.resolve_task_chunk("auto"))
      meta_params = learner.init(jax.random.PRNGKey(0))
      key = jax.random.PRNGKey(1)
      compiled = jax.jit(learner.meta_grad).lower(meta_params, tasks,
                                                  key).compile()
      stats = compiled.memory_analysis()
      memory[name] = None if stats is None else stats.temp_size_in_bytes
      calls[name] = (lambda c=compiled, p=meta_params, k=key: c(p, tasks, k))
    seconds = sp.side_by_side_times(calls, FLAGS.rounds)
    for name in calls:
      rows.append({"steps": steps, "learner": name,
                   "ms": 1e3 * seconds[name],
                   "ratio_to_sgd": seconds[name] / seconds["sgd"],
                   "temp_mb": (None if memory[name] is None
                               else memory[name] / 2 ** 20)})
  if FLAGS.json:
    for row in rows:
      print(json.dumps(row))
    return
  print(f"{FLAGS.ways}-way 1-shot, {FLAGS.batch} episodes per "
        f"meta-gradient, median of {FLAGS.rounds} ({jax.default_backend()}); "
        f"imaml: lambda {FLAGS.imaml_reg:g}, damping {FLAGS.imaml_damping:g}, "
        f"{FLAGS.cg_steps} CG steps")
  print("| inner steps | learner | ms | ratio to sgd | XLA temp MB |")
  print("| --- | --- | --- | --- | --- |")
  for r in rows:
    mb = "n/a" if r["temp_mb"] is None else f"{r['temp_mb']:.1f}"
    print(f"| {r['steps']} | {r['learner']} | {r['ms']:.0f} | "
          f"{r['ratio_to_sgd']:.2f} | {mb} |")


if __name__ == "__main__":
  app.run(main)
