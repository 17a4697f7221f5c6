r"""Training steps per second: episodes sampled on the device or fed from the
host (NumPy, tf.data), side by side in one process.

  python benchmarks/host_pipeline.py
  python benchmarks/host_pipeline.py --source=tfds --data_dir=DIR
  python benchmarks/host_pipeline.py --sampling_only

For each learner of `--learners`, with the few-shot experiment's settings
of its README Omniglot row (MAML: 5-way 1-shot, 5 query, meta-batch 32, one
inner step at 0.4; ProtoNets: 60-way 1-shot, 5 query, one episode per
step), `metajax.train` runs `--steps` steps with the training episodes of
each `--pipeline` (`fewshot_vision.train_tasks`): drawn inside the compiled
step, or built on the host by NumPy or by a tf.data pipeline and fed. The
runs alternate, the order reversed each round, for `--rounds` rounds; the
table gives the median steps per second of training time (the time in
training steps, as `metrics.jsonl` counts it: not compiling) and its ratio
to the device sampler's. With `--source=tfds` the drawings come from a
prepared tfds `omniglot` dataset, so that the tf.data row is tfds to device
end to end. `--sampling_only` times the making of one batch of episodes
alone instead, by each pipeline: on the device, the sampler is part of
the step's time; on the host, it runs beside the step.
"""

import dataclasses
import tempfile
import time

from absl import app
from absl import flags
import jax
import numpy as np

from metajax import training
from metajax.experiments import fewshot_vision as fv

flags.DEFINE_list("learners", ["maml", "protonet"], "Learners to time.")
flags.DEFINE_list("pipelines", ["device", "numpy", "tf"], "Pipelines.")
flags.DEFINE_integer("steps", 50, "Training steps per run.")
flags.DEFINE_integer("rounds", 3, "Runs of each pipeline.")
flags.DEFINE_string("source", "npz", "Omniglot source (fewshot --source).")
flags.DEFINE_string("data_dir", "", "fewshot --data_dir.")
flags.DEFINE_bool("sampling_only", False, "Time only the making of one "
                  "batch of training episodes, by each pipeline, and exit.")
FLAGS = flags.FLAGS

SETTINGS = {
    "maml": dict(algorithm="maml", ways=5, query=5, meta_batch_size=32,
                 inner_steps=1, inner_lr=0.4),
    "protonet": dict(algorithm="protonet", ways=60, query=5,
                     meta_batch_size=1),
}


class _Last:
  """A `metajax.summary.Writer` that keeps the last record."""

  def __init__(self):
    self.record = None

  def write(self, record):
    self.record = record

  def close(self):
    pass


def _steps_per_second(config: fv.Config, dataset) -> float:
  last = _Last()
  training.train(fv.make_learner(config, config.ways),
                 fv.make_optimizer(config), fv.train_tasks(config, dataset),
                 key=jax.random.PRNGKey(0), num_steps=FLAGS.steps,
                 log_every=25, progress=False, task_chunk="auto",
                 writers=[last])
  return FLAGS.steps / last.record["train_s"]


def _sampling_ms(config: fv.Config, dataset, batches: int = 20) -> float:
  """Median milliseconds to make one batch of episodes, alone: on the device
  (compiled, results ready) or by a host pipeline's iterator."""
  tasks = fv.train_tasks(config, dataset)
  if config.pipeline == "device":
    sample = jax.jit(lambda key, sampler: sampler(key))
    one = lambda i: jax.block_until_ready(sample(jax.random.PRNGKey(i),
                                                 tasks))
  else:
    iterator = tasks.make_iterator(0)
    one = lambda i: next(iterator)
  one(0)
  seconds = []
  for i in range(1, batches + 1):
    start = time.perf_counter()
    one(i)
    seconds.append(time.perf_counter() - start)
  return 1e3 * float(np.median(seconds))


def main(argv):
  del argv
  # Each run compiles what the run of the round before compiled: load it.
  jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp())
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  base = fv.Config(source=FLAGS.source, data_dir=FLAGS.data_dir,
                   train_on_val=True, shots=1, test_ways=(5,))
  dataset = fv.load_splits(base)["train"]
  if FLAGS.sampling_only:
    print(f"Omniglot, {dataset.num_classes} training classes: ms to make one "
          f"batch of training episodes, median of 20 ({jax.default_backend()})")
    print("| learner | episodes built | ms per batch |")
    print("| --- | --- | --- |")
    for learner in FLAGS.learners:
      for p in FLAGS.pipelines:
        config = dataclasses.replace(base, pipeline=p, **SETTINGS[learner])
        print(f"| {learner} | {p} | {_sampling_ms(config, dataset):.1f} |")
    return
  rows = []
  for learner in FLAGS.learners:
    configs = {p: dataclasses.replace(base, pipeline=p, **SETTINGS[learner])
               for p in FLAGS.pipelines}
    rates = {p: [] for p in configs}
    for r in range(FLAGS.rounds):
      for p in list(configs)[::-1 if r % 2 else 1]:
        rates[p].append(_steps_per_second(configs[p], dataset))
    for p in configs:
      rows.append((learner, p, float(np.median(rates[p])),
                   float(np.median(rates[p]) / np.median(rates["device"]))))
  print(f"Omniglot from {FLAGS.source}, {dataset.num_classes} training "
        f"classes; {FLAGS.steps} steps per run, median of {FLAGS.rounds} "
        f"({jax.default_backend()})")
  print("| learner | episodes built | steps/s | ratio to device |")
  print("| --- | --- | --- | --- |")
  for learner, p, rate, ratio in rows:
    print(f"| {learner} | {p} | {rate:.2f} | {ratio:.2f} |")


if __name__ == "__main__":
  app.run(main)
