"""The benchmark workloads on metajax's own path: the models, learners and the
`make_train_step` that the experiments use, with the inputs of `workloads`."""

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import metajax
from metajax import algorithms
from metajax.data.students import sequences as students_lib
from metajax.experiments import student_performance
from metajax.models import Conv4
import workloads as wl


def cross_entropy(logits, labels):
  return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits),
                                       labels[:, None], axis=-1))


def _fixed(tasks):
  """A `key -> tasks` sampler that ignores the key and returns `tasks`.

  The arrays are bound into a `Partial`, so they are arguments of the
  compiled step, as the experiments' samplers' datasets are.
  """
  leaves, treedef = jax.tree.flatten(tasks)
  return jax.tree_util.Partial(
      lambda *args: jax.tree.unflatten(treedef, args[:-1]),
      *[jax.device_put(a) for a in leaves])


def _episode_task(batch: wl.EpisodeBatch):
  return metajax.Task((batch.support_x, batch.support_y),
                      (batch.query_x, batch.query_y))


def learner_and_tasks(workload: str, inner_steps: int, meta_batch: int):
  """(learner, task batch with a leading task axis) of one workload."""
  if workload == "maml":
    model = Conv4(num_outputs=wl.WAYS, norm="none")
    weights = jax.tree.map(jnp.asarray, wl.conv4_weights(wl.WAYS))
    learner = algorithms.maml(lambda key: {"params": weights}, model.apply,
                              cross_entropy, steps=inner_steps,
                              lr=wl.MAML_INNER_LR)
    return learner, _episode_task(wl.episodes(meta_batch))
  if workload == "protonet":
    model = Conv4(num_outputs=None, downsample="max", norm="none")
    weights = jax.tree.map(jnp.asarray, wl.conv4_weights(None))
    learner = algorithms.protonet(lambda key: {"params": weights},
                                  model.apply, ways=wl.WAYS)
    return learner, _episode_task(wl.episodes(meta_batch))
  if workload == "student":
    config = student_performance.Config(
        model="irt", inner_steps=inner_steps, inner_lr=wl.STUDENT_INNER_LR,
        prior_answers=wl.STUDENT_PRIOR_ANSWERS, window=wl.WINDOW,
        personal_dim=wl.PERSONAL_DIM)
    learner = student_performance.make_learner(config, "maml", wl.NUM_SKILLS)
    weights = jax.tree.map(jnp.asarray, wl.student_weights())
    learner = algorithms.starting_from(learner, {"params": {"params": weights}})
    batch = wl.students(meta_batch)
    tasks = jax.vmap(students_lib.cold_start_task)(
        jnp.asarray(batch.questions), jnp.asarray(batch.answers),
        jnp.full(meta_batch, wl.WINDOW, jnp.int32),
        jnp.full(meta_batch, wl.SUPPORT, jnp.int32))
    return learner, tasks
  raise ValueError(f"unknown workload {workload!r}; known: {wl.WORKLOADS}.")


def matmul_flops(jaxpr) -> float:
  """FLOPs of the matrix products and convolutions in a (closed) jaxpr.

  2 per multiply-add of every `dot_general` and `conv_general_dilated`; a
  `scan` body counts `length` times, the larger branch of a `cond` once.
  XLA's own cost analysis counts a loop's body once, which undercounts the
  inner loop of MAML and the loop over task chunks.
  """
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      (contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += 2.0 * np.prod(eqn.outvars[0].aval.shape) * np.prod(
          [lhs[d] for d in contract])
    elif name == "conv_general_dilated":
      rhs = eqn.invars[1].aval.shape
      out_features = rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
      total += 2.0 * np.prod(eqn.outvars[0].aval.shape) * np.prod(
          rhs) / out_features
    elif name == "cond":
      total += max(matmul_flops(b) for b in eqn.params["branches"])
    elif name == "while":
      raise ValueError("matmul_flops: a while loop has no static trip count.")
    else:
      inner = sum(matmul_flops(v) for v in eqn.params.values()
                  if hasattr(v, "eqns") or hasattr(v, "jaxpr"))
      total += inner * (eqn.params["length"] if name == "scan" else 1)
  return total


# What the experiments pass to `train(task_chunk=...)` by default.
EXPERIMENT_TASK_CHUNK = {"maml": "auto", "protonet": "auto", "student": None}


def run(workload: str, inner_steps: int, meta_batch: int, repeats: int,
        task_chunk="experiment"):
  """Compiles and times one meta-step of `workload`; a dict of results.

  `task_chunk` is passed to `make_train_step`; "experiment" takes the
  default of the experiment that runs this workload.
  """
  if task_chunk == "experiment":
    task_chunk = EXPERIMENT_TASK_CHUNK[workload]
  learner, tasks = learner_and_tasks(workload, inner_steps, meta_batch)
  optimizer = optax.adam(wl.OUTER_LR)
  state = metajax.init_state(learner, optimizer, jax.random.PRNGKey(0))
  step = metajax.make_train_step(learner, optimizer, num_steps=1,
                                 task_chunk=task_chunk)
  sampler = _fixed(tasks)
  stop_at = jnp.int32(np.iinfo(np.int32).max)
  t0 = time.perf_counter()
  traced = step.trace(state, sampler, stop_at)
  compiled = traced.lower().compile()
  compile_s = time.perf_counter() - t0
  state, metrics = jax.block_until_ready(compiled(state, sampler, stop_at))
  first_loss = float(metrics["loss"][0])
  times, losses = [], []
  for _ in range(repeats):
    t0 = time.perf_counter()
    state, metrics = jax.block_until_ready(compiled(state, sampler, stop_at))
    times.append(time.perf_counter() - t0)
    losses.append(float(metrics["loss"][0]))
  memory = compiled.memory_analysis()
  return {"compile_s": compile_s, "task_chunk": task_chunk, "times_s": times,
          "first_loss": first_loss, "second_loss": losses[0],
          "flops": matmul_flops(traced.jaxpr),
          "xla_temp_mb": getattr(memory, "temp_size_in_bytes", 0) / 2**20}


def matmul_gflops(n: int = 3072, repeats: int = 20) -> float:
  """fp32 `[n, n] @ [n, n]` GFLOP/s through XLA, the best of `repeats`."""
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n))
  f = jax.jit(functools.partial(jnp.matmul, precision="highest"))
  jax.block_until_ready(f(a, a))
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(f(a, a))
    best = min(best, time.perf_counter() - t0)
  return 2 * n**3 / best / 1e9
