r"""Conv4 second-order MAML meta-step: patches+matmul against native convolution.

  python benchmarks/conv_impl.py --repeats=3

The workload of the design guide: Omniglot-shaped conv4 (4 x [3x3 conv, 64
filters, stride 2, batch norm, ReLU], mean-pool, linear), 28x28x1 inputs,
5-way 1-shot, 15 query per class, meta-batch 32, inner lr 0.4, one inner step,
exact second order, Adam 1e-3. Both implementations run the library's own
training step (`metajax.make_train_step`) one after the other in this process;
the script prints compile time, the median steady-state time per meta-step and
the ratio. Random images stand in for Omniglot: speed depends on shapes only.
"""

import json
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import optax

import metajax
from metajax import algorithms
from metajax.models import Conv4

flags.DEFINE_integer("repeats", 3, "Timed meta-steps per implementation.")
flags.DEFINE_integer("meta_batch_size", 32, "Tasks per meta-step.")
flags.DEFINE_list("impls", ["patches", "native"], "Implementations to time.")
FLAGS = flags.FLAGS

WAYS, SHOTS, QUERY = 5, 1, 15


def cross_entropy(logits, labels):
  return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits),
                                       labels[:, None], axis=-1))


def sample_tasks(key, n_tasks):
  k1, k2 = jax.random.split(key)
  labels = lambda n: jnp.broadcast_to(jnp.repeat(jnp.arange(WAYS), n),
                                      (n_tasks, WAYS * n))
  xs = jax.random.uniform(k1, (n_tasks, WAYS * SHOTS, 28, 28, 1))
  xq = jax.random.uniform(k2, (n_tasks, WAYS * QUERY, 28, 28, 1))
  return metajax.Task((xs, labels(SHOTS)), (xq, labels(QUERY)))


def time_impl(impl):
  model = Conv4(num_outputs=WAYS, impl=impl)
  learner = algorithms.maml(
      lambda k: model.init(k, jnp.zeros((1, 28, 28, 1))), model.apply,
      cross_entropy, steps=1, lr=0.4)
  optimizer = optax.adam(1e-3)
  state = metajax.init_state(learner, optimizer, jax.random.PRNGKey(0))
  step = metajax.make_train_step(learner, optimizer, num_steps=1)
  sampler = metajax.tasks.sampler_tree(
      lambda k: sample_tasks(k, FLAGS.meta_batch_size))
  stop_at = jnp.int32(10**9)
  t0 = time.perf_counter()
  compiled = step.lower(state, sampler, stop_at).compile()
  compile_s = time.perf_counter() - t0
  state, _ = jax.block_until_ready(compiled(state, sampler, stop_at))  # warm-up
  times = []
  for _ in range(FLAGS.repeats):
    t0 = time.perf_counter()
    state, metrics = jax.block_until_ready(compiled(state, sampler, stop_at))
    times.append(time.perf_counter() - t0)
  return {"impl": impl, "compile_s": compile_s,
          "ms_per_step": 1000 * float(np.median(times)),
          "loss": float(metrics["loss"][0])}


def main(argv):
  del argv
  rows = [time_impl(impl) for impl in FLAGS.impls]
  for row in rows:
    print(json.dumps(row))
  if len(rows) == 2:
    print(f"{rows[1]['impl']} / {rows[0]['impl']} time ratio: "
          f"{rows[1]['ms_per_step'] / rows[0]['ms_per_step']:.1f}x")


if __name__ == "__main__":
  app.run(main)
