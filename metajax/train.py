"""The one meta-training loop, shared by every `MetaLearner`.

The loop state is a `TrainState` PyTree (step, meta-parameters, optimiser state,
PRNG key). Tasks are sampled on the device inside the compiled step from a key
split off the state's key, so a run is a pure function of its seed: restarting
from a checkpoint replays exactly the same tasks and reaches exactly the same
parameters as an uninterrupted run.

`log_every` meta-steps run inside one compiled `lax.scan` call, which keeps
Python out of the inner loop of small models; metrics are averaged over those
steps, appended to `metrics.jsonl` (and to TensorBoard event files in
`tensorboard/` when the tensorboard package is installed), and shown on a
progress bar. Orbax
checkpoints are written every `checkpoint_every` steps and at the end, and a
run restarted with the same `workdir` resumes from the latest one.

Given a `mesh` (`metajax.sharding.task_mesh()`), each meta-batch is split over
the mesh's devices, on one host or several, with the state replicated.
"""

import json
import logging
import os
import socket
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import tqdm

from metajax import sharding as sharding_lib
from metajax import tasks as tasks_lib
from metajax.algorithms.base import MetaLearner
from metajax.algorithms.base import map_tasks
from metajax.algorithms.base import resolve_task_chunk

PyTree = Any
TaskSampler = Callable[[jax.Array], tasks_lib.Task]


class TrainState(NamedTuple):
  """Everything a meta-training run carries from one step to the next.

  Attributes:
    step: int32 scalar, meta-steps taken. A non-finite step counts only when
      it is skipped (`fail_on_nonfinite=False`), not when the run halts on it.
    meta_params: the learner's meta-parameters.
    opt_state: the optax optimiser's state.
    key: uint32 `[2]` PRNG key for the steps still to come.
    nonfinite_step: int32 scalar, the first step in this call of `train`
      whose meta-gradient or loss was not finite, or -1. That step's update
      is not applied.
  """
  step: jax.Array
  meta_params: PyTree
  opt_state: PyTree
  key: jax.Array
  nonfinite_step: jax.Array


def init_state(learner: MetaLearner, optimizer: optax.GradientTransformation,
               key: jax.Array) -> TrainState:
  """Initialises meta-parameters and optimiser state from one key."""
  init_key, run_key = jax.random.split(key)
  meta_params = learner.init(init_key)
  return TrainState(jnp.int32(0), meta_params, optimizer.init(meta_params),
                    run_key, jnp.int32(-1))


def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack(
      [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def make_train_step(learner: MetaLearner,
                    optimizer: optax.GradientTransformation, *,
                    num_steps: int, halt_on_nonfinite: bool = True,
                    mesh: Optional[jax.sharding.Mesh] = None,
                    task_chunk: Union[int, str, None] = None) -> Callable:
  """Builds the jit-compiled function that runs `num_steps` meta-steps.

  Args:
    learner: the algorithm.
    optimizer: the outer optimiser.
    num_steps: meta-steps per call (a `lax.scan`).
    halt_on_nonfinite: once a step is non-finite, leave the state untouched
      for the rest of the call (the caller then stops); otherwise skip only
      the offending updates and go on.
    mesh: optional 1-D mesh over a "tasks" axis (`metajax.sharding.task_mesh`):
      each sampled task batch is split over its devices, whose number must
      divide the batch size, and the returned state and metrics are
      replicated on all of them. Pass the state and the sampler replicated
      (`metajax.sharding.replicate`). None runs on one device.
    task_chunk: compute each meta-gradient this many tasks at a time
      (`metajax.algorithms.map_tasks`), "auto" (one task at a time on the
      CPU, the whole batch vmapped elsewhere; `resolve_task_chunk`), or None
      to vmap the whole batch. Not combined with a `mesh`.

  Returns:
    `step_fn(state, sample_tasks, stop_at) -> (state, metrics)`: runs up to
    `num_steps` steps but none at or past step `stop_at` (int32), so one
    compiled function also serves a shorter last chunk. `sample_tasks` is a
    `key -> Task` batch sampler wrapped by `metajax.tasks.sampler_tree`; it runs
    inside the compiled step. Each metric is stacked over the
    `num_steps` slots, with "ran" (bool `[num_steps]`) marking real steps.
  """
  chunk = resolve_task_chunk(task_chunk)
  if chunk is not None:
    if mesh is not None:
      raise ValueError(
          f"task_chunk={task_chunk!r} maps over the tasks that a mesh splits "
          f"over devices; pass task_chunk=None with a mesh.")
    learner = map_tasks(learner, chunk)

  def one_step(state: TrainState, sample_tasks):
    key, task_key, grad_key = jax.random.split(state.key, 3)
    tasks = sample_tasks(task_key)
    if mesh is not None:
      # Every device samples and adapts only its own slice of the batch; the
      # mean over tasks in `meta_grad` becomes an all-reduce.
      tasks = sharding_lib.shard_tasks(tasks, mesh)
    grads, metrics = learner.meta_grad(state.meta_params, tasks, grad_key)
    finite = _all_finite(grads) & _all_finite(metrics)
    updates, opt_state = optimizer.update(grads, state.opt_state,
                                          state.meta_params)
    meta_params = optax.apply_updates(state.meta_params, updates)
    keep_new = lambda new, old: jax.tree.map(
        lambda n, o: jnp.where(finite, n, o), new, old)
    metrics = dict(metrics, grad_norm=optax.tree.norm(grads),
                   nonfinite=~finite)
    nonfinite_step = jnp.where((state.nonfinite_step < 0) & ~finite,
                               state.step, state.nonfinite_step)
    # When halting, a non-finite step is not taken at all: the step count and
    # the key stay put, so a resumed run retries exactly that step.
    advance = finite | (not halt_on_nonfinite)
    return TrainState(jnp.where(advance, state.step + 1, state.step),
                      keep_new(meta_params, state.meta_params),
                      keep_new(opt_state, state.opt_state),
                      jnp.where(advance, key, state.key),
                      nonfinite_step), metrics

  def body(state, sample_tasks, stop_at):
    halted = (state.step >= stop_at) | (
        halt_on_nonfinite & (state.nonfinite_step >= 0))
    take_step = lambda s: one_step(s, sample_tasks)
    def skip(s):
      # Placeholders only: "ran" marks these slots as not real steps.
      return s, jax.tree.map(lambda m: jnp.zeros(m.shape, m.dtype),
                             jax.eval_shape(take_step, s)[1])
    state, metrics = jax.lax.cond(halted, skip, take_step, state)
    return state, dict(metrics, ran=~halted)

  def step_fn(state, sample_tasks, stop_at):
    return jax.lax.scan(lambda s, _: body(s, sample_tasks, stop_at), state,
                        None, length=num_steps)

  if mesh is None:
    return jax.jit(step_fn)
  # Pinned so that the state stays replicated from call to call (and in the
  # checkpoints), and metrics can be read on any host.
  return jax.jit(step_fn, out_shardings=sharding_lib.replicated(mesh))


class _MetricsLog:
  """Appends one JSON object per logged step to `metrics.jsonl`."""

  def __init__(self, path: Optional[str], resume_step: int):
    self.path = path
    self.train_s = 0.0  # training seconds logged before this call
    if path and os.path.exists(path):
      # Lines past the checkpoint we resume from describe steps that will be
      # re-run; keep the log equal to what an uninterrupted run writes.
      with open(path) as f:
        kept = [l for l in f if json.loads(l)["step"] <= resume_step]
      with open(path, "w") as f:
        f.writelines(kept)
      if kept:
        self.train_s = json.loads(kept[-1]).get("train_s", 0.0)

  def write(self, record: Dict[str, Any]):
    if self.path:
      with open(self.path, "a") as f:
        f.write(json.dumps(record) + "\n")


class _TensorBoardLog:
  """Scalars as TensorBoard event files in `logdir`, if tensorboard imports.

  Writes the records with tensorboard's `RecordWriter` into a plain file:
  tensorboard's `EventFileWriter` would open it through `tf.io.gfile`, which
  imports TensorFlow where it is installed (3.5 s at every start of an
  experiment). Without the package nothing is written: metrics.jsonl holds
  the same numbers.
  """

  def __init__(self, logdir: Optional[str]):
    self.writer = None
    if not logdir:
      return
    try:
      # pylint: disable=g-import-not-at-top
      from tensorboard.compat.proto import event_pb2
      from tensorboard.compat.proto import summary_pb2
      from tensorboard.summary.writer.record_writer import RecordWriter
    except ImportError:
      return
    self.event_pb2, self.summary_pb2 = event_pb2, summary_pb2
    os.makedirs(logdir, exist_ok=True)
    # TensorBoard reads every file whose name contains "tfevents". A resumed
    # run adds a file of its own, named apart even within the same second.
    name = (f"events.out.tfevents.{int(time.time()):010d}."
            f"{socket.gethostname()}.{os.getpid()}.{time.time_ns()}")
    self.writer = RecordWriter(open(os.path.join(logdir, name), "xb"))
    self._add(event_pb2.Event(wall_time=time.time(),
                              file_version="brain.Event:2"))

  def _add(self, event):
    self.writer.write(event.SerializeToString())
    self.writer.flush()

  def write(self, record: Dict[str, Any]):
    if self.writer is None:
      return
    values = [self.summary_pb2.Summary.Value(tag=k, simple_value=float(v))
              for k, v in record.items() if k != "step"]
    self._add(self.event_pb2.Event(
        wall_time=time.time(), step=int(record["step"]),
        summary=self.summary_pb2.Summary(value=values)))

  def close(self):
    if self.writer is not None:
      self.writer.close()


def train(learner: MetaLearner, optimizer: optax.GradientTransformation,
          sample_tasks: TaskSampler, *, key: jax.Array, num_steps: int,
          workdir: Optional[str] = None, log_every: int = 100,
          checkpoint_every: int = 1000, fail_on_nonfinite: bool = True,
          eval_fn: Optional[Callable[[PyTree], Dict[str, float]]] = None,
          eval_every: Optional[int] = None, keep_best: Optional[str] = None,
          progress: bool = True, desc: str = "meta-train",
          mesh: Optional[jax.sharding.Mesh] = None,
          task_chunk: Union[int, str, None] = None) -> TrainState:
  """Meta-trains `learner` for `num_steps` steps, resuming from `workdir`.

  Args:
    learner: any `MetaLearner`.
    optimizer: the outer optax optimiser.
    sample_tasks: traceable `sample_tasks(key) -> Task` batch.
    key: PRNG key for the run; together with the flags it fixes the result.
    num_steps: total meta-steps of the run (not of this call: a resumed run
      continues to `num_steps`).
    workdir: where `checkpoints/` and `metrics.jsonl` go; None keeps nothing.
    log_every: meta-steps per compiled call, per log line and per progress
      update.
    checkpoint_every: steps between checkpoints; rounded up to a multiple of
      `log_every`. The last step is always checkpointed.
    fail_on_nonfinite: raise FloatingPointError at the first non-finite
      meta-gradient (after checkpointing the last finite state); otherwise
      such steps are skipped and counted in the log.
    eval_fn: optional `eval_fn(meta_params) -> dict of floats`, run on the
      host every `eval_every` steps and logged. With a `mesh` it gets the
      meta-parameters on one local device (`metajax.sharding.local_copy`),
      so evaluation code written for one device runs unchanged.
    eval_every: evaluate whenever the step count passes a multiple of
      `eval_every` (so a resumed run evaluates at the same steps), and at
      the end.
    keep_best: the name of an `eval_fn` metric to maximise (early stopping
      / model selection): the meta-parameters that score best on it are
      saved in `workdir/best/`, with their step and score in
      `workdir/best.json`, and are loaded by `restore_best`. Needs
      `workdir`, `eval_fn` and `eval_every`.
    progress: show a tqdm progress bar.
    desc: the progress bar's label.
    mesh: optional 1-D mesh over a "tasks" axis
      (`metajax.sharding.task_mesh()`): each meta-batch is split over its
      devices, whose number must divide the meta-batch size; the state and
      the sampler's arrays are replicated on all of them. The result equals
      the one-device run's up to float32 summation order. On several hosts
      (after `jax.distributed.initialize()`) every process calls `train` with
      the same arguments.
    task_chunk: tasks per pass of the meta-gradient, as in
      `make_train_step`; "auto" is fastest for convolutional models on a CPU.

  Returns:
    The final `TrainState` (replicated over `mesh` when one is given).
  """
  if num_steps < 0 or log_every < 1 or checkpoint_every < 1:
    raise ValueError(
        f"need num_steps >= 0, log_every >= 1, checkpoint_every >= 1; got "
        f"{num_steps}, {log_every}, {checkpoint_every}.")
  if keep_best and not (workdir and eval_fn and eval_every):
    raise ValueError(f"keep_best={keep_best!r} needs workdir, eval_fn and "
                     f"eval_every.")
  sample_tasks = tasks_lib.sampler_tree(sample_tasks)
  example = jax.eval_shape(sample_tasks, key)
  tasks_lib.validate_task(example, batched=True)
  n_tasks = tasks_lib.num_tasks(example)
  state = init_state(learner, optimizer, key)
  stop_at = jnp.int32(num_steps)
  if mesh is not None:
    sharding_lib.check_divisible(n_tasks, mesh)
    # Placed once here rather than copied by every compiled call; a restored
    # checkpoint takes the sharding of `state`.
    state, sample_tasks, stop_at = sharding_lib.replicate(
        (state, sample_tasks, stop_at), mesh)

  manager = None
  if workdir:
    os.makedirs(workdir, exist_ok=True)
    manager = ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, "checkpoints")),
        options=ocp.CheckpointManagerOptions(max_to_keep=2))
    if manager.latest_step() is not None:
      # nonfinite_step reports on this call only: a run that halted is
      # resumed to retry the step it stopped at.
      state = restore_state(manager, state)._replace(
          nonfinite_step=jnp.full_like(state.nonfinite_step, -1))
  start = int(state.step)
  # On several hosts every process runs this loop; one writes the logs.
  logdir = workdir if jax.process_index() == 0 else None
  log = _MetricsLog(os.path.join(logdir, "metrics.jsonl") if logdir
                    else None, start)
  board = _TensorBoardLog(os.path.join(logdir, "tensorboard") if logdir
                          else None)
  t0 = time.perf_counter()
  step_fn = make_train_step(
      learner, optimizer, num_steps=log_every,
      halt_on_nonfinite=fail_on_nonfinite, mesh=mesh,
      task_chunk=task_chunk).lower(
          state, sample_tasks, stop_at).compile()
  compile_s = time.perf_counter() - t0
  logging.info("%s: compiled %d meta-steps per call in %.1f s", desc,
               log_every, compile_s)
  if progress:
    # Shown, not only logged: with the persistent compilation cache a rerun's
    # "compiled in" falls to the time of loading the program from disk.
    tqdm.tqdm.write(f"{desc}: compiled in {compile_s:.1f} s")

  bar = tqdm.tqdm(total=num_steps, initial=start, desc=desc, unit="step",
                  disable=not progress, dynamic_ncols=True)
  since_ckpt = 0
  best = _BestParams(workdir, keep_best) if keep_best else None
  try:
    while int(state.step) < num_steps:
      t0 = time.perf_counter()
      previous = int(state.step)
      state, metrics = step_fn(state, sample_tasks, stop_at)
      metrics = jax.device_get(metrics)
      seconds = time.perf_counter() - t0
      ran = metrics.pop("ran")
      nonfinite = metrics.pop("nonfinite")[ran]
      step = int(state.step)
      take = step - previous
      log.train_s += seconds
      record = {"step": step, "tasks_per_s": take * n_tasks / seconds,
                "train_s": log.train_s}
      if compile_s is not None:
        record["compile_s"], compile_s = compile_s, None
      finite = ran.copy()
      finite[ran] = ~nonfinite
      if finite.any():
        record.update({k: float(np.mean(v[finite]))
                       for k, v in metrics.items()})
      if nonfinite.any():
        record["nonfinite_steps"] = int(nonfinite.sum())
      since_ckpt += take
      if eval_fn is not None and eval_every and (
          step // eval_every > previous // eval_every or step >= num_steps):
        record.update(eval_fn(sharding_lib.local_copy(state.meta_params)))
        if best:
          best.offer(step, record, state.meta_params)
      log.write(record)
      board.write(record)
      bar.update(take)
      bar.set_postfix({k: f"{record[k]:.4g}" for k in record
                       if k not in ("step", "grad_norm", "train_s")})
      halted = fail_on_nonfinite and int(state.nonfinite_step) >= 0
      if manager and (since_ckpt >= checkpoint_every or step >= num_steps
                      or halted) and manager.latest_step() != step:
        save_state(manager, state)
        since_ckpt = 0
      if halted and fail_on_nonfinite:
        raise FloatingPointError(
            f"non-finite meta-gradient or loss at step "
            f"{int(state.nonfinite_step)}; its update was not applied. The "
            f"last finite state (step {step})"
            + (f" is checkpointed in {workdir}." if workdir else " is kept.")
            + " Lower the learning rates or pass fail_on_nonfinite=False to"
            " skip such steps.")
  finally:
    bar.close()
    board.close()
    if manager:
      manager.wait_until_finished()
      manager.close()
  return state


class _BestParams:
  """The best-scoring meta-parameters so far, on disk so a resume keeps them."""

  def __init__(self, workdir: str, metric: str):
    self.path = os.path.abspath(os.path.join(workdir, "best"))
    self.info_path = os.path.join(workdir, "best.json")
    self.metric = metric
    self.score = -np.inf
    if os.path.exists(self.info_path):
      with open(self.info_path) as f:
        self.score = json.load(f)["score"]

  def offer(self, step: int, record: Dict[str, Any], meta_params) -> None:
    if self.metric not in record:
      raise KeyError(f"keep_best metric {self.metric!r} is not among the "
                     f"eval_fn's metrics {sorted(record)}.")
    score = float(record[self.metric])
    if not score > self.score:
      return
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(self.path, meta_params, force=True)
    checkpointer.wait_until_finished()
    # Written after the parameters, so best.json never names a half-saved
    # checkpoint; by one process, as every host saves the same parameters.
    if jax.process_index() == 0:
      with open(self.info_path, "w") as f:
        json.dump({"step": step, "metric": self.metric, "score": score}, f)
    self.score = score


def restore_best(workdir: str, like: PyTree):
  """The meta-parameters `train(..., keep_best=...)` kept in `workdir`.

  Args:
    workdir: the run's directory.
    like: a PyTree with the meta-parameters' structure, shapes and dtypes
      (e.g. `learner.init(key)` or the final `TrainState.meta_params`).

  Returns:
    `(meta_params, info)`, info being `{"step", "metric", "score"}`.
  """
  info_path = os.path.join(workdir, "best.json")
  if not os.path.exists(info_path):
    raise FileNotFoundError(f"{info_path} does not exist: no best "
                            f"meta-parameters were kept in {workdir}.")
  with open(info_path) as f:
    info = json.load(f)
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
  params = ocp.StandardCheckpointer().restore(
      os.path.abspath(os.path.join(workdir, "best")), abstract)
  return params, info


def save_state(manager: ocp.CheckpointManager, state: TrainState) -> None:
  """Saves `state` under its step number."""
  manager.save(int(state.step), args=ocp.args.StandardSave(state._asdict()))


def restore_state(manager: ocp.CheckpointManager,
                  like: TrainState) -> TrainState:
  """Restores the latest checkpoint into the structure of `like`."""
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like._asdict())
  restored = manager.restore(manager.latest_step(),
                             args=ocp.args.StandardRestore(abstract))
  return TrainState(**restored)
