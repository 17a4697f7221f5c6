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
progress bar. Checkpoints (`metajax.checkpoint`: orbax, verified by SHA-256
when written and when read) are written every `checkpoint_every` steps and
at the end, and a run restarted with the same `workdir` resumes from the
newest one that passes verification. No step's update is applied unless its
loss, meta-gradient, parameters and optimiser state are all finite.

Given a `mesh` (`metajax.sharding.task_mesh()`), each meta-batch is split over
the mesh's devices, on one host or several, with the state replicated.
"""

import contextlib
import json
import logging
import numbers
import os
import socket
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from metajax import checkpoint as checkpoint_lib
from metajax import sharding as sharding_lib
from metajax import tasks as tasks_lib
from metajax import workdir as workdir_lib
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
      whose loss, meta-gradient, updated parameters or optimiser state was
      not finite, or -1. That step's update is not applied.
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


# Bits of the per-step "nonfinite" metric: which part of a step was not finite.
NONFINITE_LOSS, NONFINITE_GRADS, NONFINITE_PARAMS = 1, 2, 4


def describe_nonfinite(bits: int) -> str:
  """Words for a "nonfinite" bit set, e.g. "loss/metrics, meta-gradient"."""
  parts = [name for bit, name in (
      (NONFINITE_LOSS, "loss/metrics/gradient norm"),
      (NONFINITE_GRADS, "meta-gradient"),
      (NONFINITE_PARAMS, "updated parameters/optimiser state"))
           if bits & bit]
  return ", ".join(parts) or "nothing"


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
    updates, opt_state = optimizer.update(grads, state.opt_state,
                                          state.meta_params)
    meta_params = optax.apply_updates(state.meta_params, updates)
    metrics = dict(metrics, grad_norm=optax.tree.norm(grads))
    # A diverging run can keep finite gradients whose norm overflows, or
    # finite gradients that a large rate turns into infinite parameters:
    # every part of the step is checked, and which failed is reported.
    nonfinite = (NONFINITE_LOSS * ~_all_finite(metrics)
                 | NONFINITE_GRADS * ~_all_finite(grads)
                 | NONFINITE_PARAMS * ~_all_finite((meta_params, opt_state)))
    finite = nonfinite == 0
    keep_new = lambda new, old: jax.tree.map(
        lambda n, o: jnp.where(finite, n, o), new, old)
    metrics = dict(metrics, nonfinite=nonfinite.astype(jnp.int32))
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


def read_metrics(path: str) -> List[Dict[str, Any]]:
  """The records of a `metrics.jsonl`, tolerating a torn last line.

  A run stopped in the middle of a write (a full disk, a kill) can leave
  its last line incomplete: that line is dropped with a warning, since the
  step it describes is past the last checkpoint and will be run again.

  Raises:
    ValueError: a line other than the last is not a JSON object with a
      "step"; the message names the file and the line.
  """
  with open(path, "rb") as f:
    lines = f.read().split(b"\n")
  records = []
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line.decode("utf-8"))
      int(record["step"])
    except (ValueError, KeyError, TypeError) as e:
      if not any(l.strip() for l in lines[number:]):
        logging.warning("%s: dropped a torn last line %d (%s)", path,
                        number, e)
        break
      raise ValueError(f"{path}, line {number}: not a metrics record "
                       f"({type(e).__name__}: {e}).") from None
    records.append(record)
  return records


class _MetricsLog:
  """Appends one JSON object per logged step to `metrics.jsonl`."""

  def __init__(self, path: Optional[str], resume_step: int):
    self.path = path
    self.train_s = 0.0  # training seconds logged before this call
    if path and os.path.exists(path):
      # Lines past the checkpoint we resume from describe steps that will be
      # re-run; keep the log equal to what an uninterrupted run writes.
      kept = [r for r in read_metrics(path) if r["step"] <= resume_step]
      workdir_lib.write_atomic(path, "".join(json.dumps(r) + "\n"
                                             for r in kept))
      if kept:
        self.train_s = kept[-1].get("train_s", 0.0)

  def write(self, record: Dict[str, Any]):
    if self.path:
      # One write of one whole line: a failure leaves at most a torn last
      # line, which `read_metrics` drops.
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
      The run holds it (`metajax.workdir.hold`): a second run on the same
      workdir is refused while this one lives. A resumed run must pass the
      same `key` and build the same parameter shapes, and `num_steps` no
      smaller than the step it resumes from; otherwise it raises before
      training.
    log_every: meta-steps per compiled call, per log line and per progress
      update.
    checkpoint_every: steps between checkpoints; rounded up to a multiple of
      `log_every`. The last step is always checkpointed.
    fail_on_nonfinite: raise FloatingPointError, naming `desc`, the step and
      what failed, at the first step whose loss, metrics, meta-gradient (or
      its norm), updated parameters or optimiser state is not finite; that
      update is not applied, and the last finite state is checkpointed
      beside the earlier checkpoints, none of which is rotated out (without
      a workdir it is the error's `state` attribute). Otherwise such steps
      are skipped and counted in the log.
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
  for name, value, least in (("num_steps", num_steps, 0),
                             ("log_every", log_every, 1),
                             ("checkpoint_every", checkpoint_every, 1),
                             ("eval_every", eval_every or 1, 1)):
    _check_int(name, value, least)
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
  # On several hosts every process runs this loop; one locks and logs.
  primary = jax.process_index() == 0
  with (workdir_lib.hold(workdir) if workdir and primary
        else contextlib.nullcontext()):
    checkpoints = None
    if workdir:
      checkpoints = checkpoint_lib.Checkpoints(
          os.path.join(workdir, "checkpoints"), writer=True)
      state = _resume(checkpoints, state, key, num_steps)
    start = int(state.step)
    if start:
      logging.info("%s: resumed from step %d", desc, start)
      if progress:
        tqdm.tqdm.write(f"{desc}: resumed from step {start}")
    logdir = workdir if primary else None
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
      # Shown, not only logged: with the persistent compilation cache a
      # rerun's "compiled in" falls to the time of loading the program.
      tqdm.tqdm.write(f"{desc}: compiled in {compile_s:.1f} s")

    bar = tqdm.tqdm(total=num_steps, initial=start, desc=desc, unit="step",
                    disable=not progress, dynamic_ncols=True)
    since_ckpt = 0
    best = _BestParams(workdir, keep_best) if keep_best else None
    metadata = {"run_key": _key_list(key)}
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
        finite[ran] = nonfinite == 0
        if finite.any():
          record.update({k: float(np.mean(v[finite]))
                         for k, v in metrics.items()})
        if nonfinite.any():
          record["nonfinite_steps"] = int(np.count_nonzero(nonfinite))
        since_ckpt += take
        halted = fail_on_nonfinite and int(state.nonfinite_step) >= 0
        if eval_fn is not None and eval_every and not halted and (
            step // eval_every > previous // eval_every or step >= num_steps):
          record.update(eval_fn(sharding_lib.local_copy(state.meta_params)))
          if best:
            best.offer(step, record, state.meta_params)
        log.write(record)
        board.write(record)
        bar.update(take)
        bar.set_postfix({k: f"{record[k]:.4g}" for k in record
                         if k not in ("step", "grad_norm", "train_s")})
        if checkpoints and (since_ckpt >= checkpoint_every or
                            step >= num_steps or halted) and (
                                step not in checkpoints.steps()):
          # A halted run's last finite state is kept for inspection and
          # resumption, without rotating out the checkpoints before it.
          checkpoints.save(step, state._asdict(), metadata=metadata,
                           rotate=not halted)
          since_ckpt = 0
        if halted:
          where = (f"is checkpointed in {workdir}, beside any earlier "
                   f"checkpoints" if workdir else
                   "is this error's `state` attribute")
          error = FloatingPointError(
              f"{desc}: non-finite values at step "
              f"{int(state.nonfinite_step)} (in: "
              f"{describe_nonfinite(int(nonfinite[nonfinite != 0][0]))}); "
              f"that update was not applied and training stopped. The last "
              f"finite state (step {step}) {where}. Lower the learning "
              f"rates, or pass fail_on_nonfinite=False to skip such steps.")
          error.state = state
          raise error
    finally:
      bar.close()
      board.close()
  return state


def _check_int(name: str, value, least: int) -> None:
  """A clear error for a count that is not an integer >= `least`."""
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise TypeError(f"{name} must be an integer, got {value!r} "
                    f"({type(value).__name__}).")
  if value < least:
    raise ValueError(f"{name} must be >= {least}, got {value}.")


def _key_list(key: jax.Array) -> List[int]:
  """The raw bits of a PRNG key, for comparing a resumed run's key."""
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  return checkpoint_lib.to_host(key).ravel().tolist()


def _resume(checkpoints: checkpoint_lib.Checkpoints, state: TrainState,
            key: jax.Array, num_steps: int) -> TrainState:
  """`state` restored from the newest checkpoint that passes, if any."""
  found = checkpoints.restore_latest(state._asdict())
  if found is None:
    return state
  step, restored, metadata = found
  saved_key = metadata.get("run_key")
  if saved_key is not None and saved_key != _key_list(key):
    raise ValueError(
        f"{checkpoints.directory} holds a run started from key {saved_key}, "
        f"but this call passes key {_key_list(key)} (another seed?). Resuming "
        f"would mix two runs; use another workdir.")
  if step > num_steps:
    raise ValueError(
        f"{checkpoints.path(step)} is at step {step}, past num_steps="
        f"{num_steps}: its parameters were trained longer than asked. Pass "
        f"num_steps >= {step}, or use another workdir.")
  # nonfinite_step reports on this call only: a run that halted is resumed
  # to retry the step it stopped at.
  return TrainState(**restored)._replace(
      nonfinite_step=jnp.full_like(state.nonfinite_step, -1))


class _BestParams:
  """The best-scoring meta-parameters so far, on disk so a resume keeps them.

  They are a verified checkpoint in `best/<step>/`; `best.json`, written
  atomically after it has passed, names the step, so it never points at a
  half-written checkpoint, and the previous best is deleted only then.
  """

  def __init__(self, workdir: str, metric: str):
    self.checkpoints = checkpoint_lib.Checkpoints(
        os.path.join(workdir, "best"), keep=1, writer=True)
    self.info_path = os.path.join(workdir, "best.json")
    self.metric = metric
    self.score = -np.inf
    if os.path.exists(self.info_path):
      self.score = _read_best_info(self.info_path)["score"]

  def offer(self, step: int, record: Dict[str, Any], meta_params) -> None:
    if self.metric not in record:
      raise KeyError(f"keep_best metric {self.metric!r} is not among the "
                     f"eval_fn's metrics {sorted(record)}.")
    score = float(record[self.metric])
    if not score > self.score:
      return
    if step not in self.checkpoints.steps():
      self.checkpoints.save(step, meta_params, rotate=False)
    if jax.process_index() == 0:
      workdir_lib.write_json(self.info_path, {
          "step": step, "metric": self.metric, "score": score})
    for old in self.checkpoints.steps():
      if old != step:
        self.checkpoints.delete(old)
    self.score = score


def _read_best_info(path: str) -> Dict[str, Any]:
  try:
    with open(path) as f:
      info = json.load(f)
    return {"step": int(info["step"]), "metric": str(info["metric"]),
            "score": float(info["score"])}
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ValueError(f"{path} is unreadable ({type(e).__name__}: {e}).") \
        from None


def restore_best(workdir: str, like: PyTree):
  """The meta-parameters `train(..., keep_best=...)` kept in `workdir`.

  Args:
    workdir: the run's directory.
    like: a PyTree with the meta-parameters' structure, shapes and dtypes
      (e.g. `learner.init(key)` or the final `TrainState.meta_params`).

  Returns:
    `(meta_params, info)`, info being `{"step", "metric", "score"}`.

  Raises:
    FileNotFoundError: no best parameters were kept in `workdir`.
    metajax.checkpoint.CheckpointError: they fail verification.
  """
  info_path = os.path.join(workdir, "best.json")
  if not os.path.exists(info_path):
    raise FileNotFoundError(f"{info_path} does not exist: no best "
                            f"meta-parameters were kept in {workdir}.")
  info = _read_best_info(info_path)
  checkpoints = checkpoint_lib.Checkpoints(os.path.join(workdir, "best"))
  params, _ = checkpoints.restore(info["step"], like)
  return params, info


def restore_state(workdir: str, like: TrainState) -> TrainState:
  """The newest verified `TrainState` checkpointed in `workdir`.

  Args:
    workdir: the `workdir` given to `train`.
    like: a `TrainState` of the same structure (e.g. from `init_state`).

  Raises:
    FileNotFoundError: `workdir` holds no checkpoint.
    metajax.checkpoint.CheckpointError: none of its checkpoints passes
      verification.
  """
  checkpoints = checkpoint_lib.Checkpoints(os.path.join(workdir,
                                                        "checkpoints"))
  found = checkpoints.restore_latest(like._asdict())
  if found is None:
    raise FileNotFoundError(f"no checkpoint in {checkpoints.directory}.")
  return TrainState(**found[1])
