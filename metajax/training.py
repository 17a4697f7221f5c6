"""The one meta-training loop, shared by every `MetaLearner`.

The loop state is a `TrainState` PyTree (step, meta-parameters, optimiser state,
PRNG key). Tasks are sampled on the device inside the compiled step from a key
split off the state's key, so a run is a pure function of its seed: restarting
from a checkpoint replays exactly the same tasks and reaches exactly the same
parameters as an uninterrupted run. Tasks made on the host instead come from
a `metajax.host_tasks.HostTasks` pipeline, a pure function of the step that
a resumed run restarts at its step; each is put on the device while the
step before it runs, and the step is compiled once, for one batch.

`log_every` meta-steps run inside one compiled `lax.scan` call, which keeps
Python out of the inner loop of small models; metrics are averaged over those
steps into one record, written to `metrics.jsonl`, to TensorBoard event files
in `tensorboard/` and to a progress bar (`metajax.summary`). Checkpoints
(`metajax.checkpoint.TrainCheckpointer`: orbax, verified by SHA-256 when
written and when read) are written every `checkpoint_every` steps and at the
end, and a run restarted with the same `workdir` resumes from the newest one
that passes verification. No step's update is applied unless its loss,
meta-gradient, parameters and optimiser state are all finite.

Given a `mesh` (`metajax.sharding.task_mesh()`), each meta-batch is split over
the mesh's devices, on one host or several, with the state replicated.
"""

import contextlib
import functools
import numbers
import os
import time
from typing import Any, Callable, Dict, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metajax import checkpoint as checkpoint_lib
from metajax import host_tasks as host_tasks_lib
from metajax import sharding as sharding_lib
from metajax import summary
from metajax import tasks as tasks_lib
from metajax import workdir as workdir_lib
from metajax.algorithms import MetaLearner
from metajax.algorithms import map_tasks
from metajax.algorithms import resolve_task_chunk
from metajax.types import PyTree
from metajax.types import TaskSampler



class TrainState(NamedTuple):
  """Everything a meta-training run carries from one step to the next.

  Attributes:
    step: int32 scalar, meta-steps taken. A non-finite step counts only when
      it is skipped (`halt_on_nonfinite=False`), not when the run halts on it.
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
                    task_chunk: Union[int, str, None] = None,
                    fed: bool = False) -> Callable:
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
      CPU, the whole batch vmapped elsewhere; `resolve_task_chunk`; always
      the whole batch for a learner whose `tasks_independent` is False), or
      None to vmap the whole batch. Not combined with a `mesh`.
    fed: the tasks are given rather than sampled: `step_fn`'s second
      argument is a `Task` whose leaves are stacked `[num_steps, n_tasks,
      ...]`, one batch per step (`metajax.host_tasks`).

  Returns:
    `step_fn(state, sample_tasks, stop_at) -> (state, metrics)`: runs up to
    `num_steps` steps but none at or past step `stop_at` (int32), so one
    compiled function also serves a shorter last chunk. `sample_tasks` is a
    `key -> Task` batch sampler wrapped by `metajax.tasks.sampler_tree`; it runs
    inside the compiled step (with `fed`, the stacked batches). Each metric
    is stacked over the `num_steps` slots, with "ran" (bool `[num_steps]`)
    marking real steps.
  """
  chunk = resolve_task_chunk(task_chunk)
  if task_chunk == "auto" and not learner.tasks_independent:
    chunk = None
  if chunk is not None:
    if mesh is not None:
      raise ValueError(
          f"task_chunk={task_chunk!r} maps over the tasks that a mesh splits "
          f"over devices; pass task_chunk=None with a mesh.")
    learner = map_tasks(learner, chunk)

  def one_step(state: TrainState, sample_tasks):
    # Fed or sampled, the key is split alike: the gradient keys of a run do
    # not depend on where its tasks come from.
    key, task_key, grad_key = jax.random.split(state.key, 3)
    tasks = sample_tasks if fed else sample_tasks(task_key)
    if mesh is not None:
      # Every device samples and adapts only its own slice of the batch; the
      # mean over tasks in `meta_grad` becomes an all-reduce.
      tasks = sharding_lib.shard_tasks(tasks, mesh)
    grads, metrics = learner.meta_grad(state.meta_params, tasks, grad_key)
    updates, opt_state = optimizer.update(grads, state.opt_state,
                                          state.meta_params)
    meta_params = optax.apply_updates(state.meta_params, updates)
    # Integer leaves are counts a learner carries (Reptile's inner step
    # count), not gradients.
    metrics = dict(metrics, grad_norm=optax.tree.norm(
        [g for g in jax.tree.leaves(grads)
         if jnp.issubdtype(g.dtype, jnp.inexact)]))
    # A diverging run can keep finite gradients whose norm overflows, or
    # finite gradients that a large rate turns into infinite parameters:
    # every part of the step is checked, and which failed is reported.
    nonfinite = (NONFINITE_LOSS * ~_all_finite(metrics)
                 | NONFINITE_GRADS * ~_all_finite(grads)
                 | NONFINITE_PARAMS * ~_all_finite((meta_params, opt_state)))
    finite = nonfinite == 0
    # Not optax.apply_if_finite: it checks the gradients only, not the loss,
    # metrics, new parameters and optimiser state, gives up after a count
    # of failures, and changes the optimiser state's (checkpointed) structure.
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
    if fed:
      return jax.lax.scan(lambda s, tasks: body(s, tasks, stop_at), state,
                          sample_tasks, length=num_steps)
    return jax.lax.scan(lambda s, _: body(s, sample_tasks, stop_at), state,
                        None, length=num_steps)

  if mesh is None:
    return jax.jit(step_fn)
  # Pinned so that the state stays replicated from call to call (and in the
  # checkpoints), and metrics can be read on any host.
  return jax.jit(step_fn, out_shardings=sharding_lib.replicated(mesh))


def train(learner: MetaLearner, optimizer: optax.GradientTransformation,
          sample_tasks: Union[TaskSampler, host_tasks_lib.HostTasks], *,
          key: jax.Array, num_steps: int,
          workdir: Optional[str] = None, log_every: int = 100,
          checkpoint_every: int = 1000, halt_on_nonfinite: bool = True,
          eval_fn: Optional[Callable[[PyTree], Dict[str, float]]] = None,
          eval_every: Optional[int] = None, keep_best: Optional[str] = None,
          progress: bool = True, desc: str = "meta-train",
          mesh: Optional[jax.sharding.Mesh] = None,
          task_chunk: Union[int, str, None] = None,
          writers: Sequence[summary.Writer] = ()) -> TrainState:
  """Meta-trains `learner` for `num_steps` steps, resuming from `workdir`.

  Args:
    learner: any `MetaLearner`.
    optimizer: the outer optax optimiser.
    sample_tasks: traceable `sample_tasks(key) -> Task` batch, run inside
      the compiled step; or a `metajax.HostTasks` pipeline of batches made
      on the host, prefetched to the device (split over `mesh`), and
      scanned over in stacks of up to `log_every` steps (`fed_stack`).
    key: PRNG key for the run; together with the flags it fixes the result.
    num_steps: total meta-steps of the run (not of this call: a resumed run
      continues to `num_steps`).
    workdir: where `checkpoints/`, `metrics.jsonl` and `tensorboard/` go;
      None keeps nothing. The run holds it (`metajax.workdir.hold`): a
      second run on the same workdir is refused while this one lives. A
      resumed run must pass the same `key` and build the same parameter
      shapes, and `num_steps` no smaller than the step it resumes from;
      otherwise it raises before training.
    log_every: meta-steps per compiled call, per record and per progress
      update.
    checkpoint_every: steps between checkpoints; rounded up to a multiple of
      `log_every`. The last step is always checkpointed.
    halt_on_nonfinite: raise FloatingPointError, naming `desc`, the step and
      what failed, at the first step whose loss, metrics, meta-gradient (or
      its norm), updated parameters or optimiser state is not finite; that
      update is not applied, and the last finite state is checkpointed
      beside the earlier checkpoints, none of which is rotated out (without
      a workdir it is the error's `state` attribute). Otherwise such steps
      are skipped and counted in the records.
    eval_fn: optional `eval_fn(meta_params) -> dict of floats`, run on the
      host every `eval_every` steps and recorded. With a `mesh` it gets the
      meta-parameters on one local device (`metajax.sharding.local_copy`),
      so evaluation code written for one device runs unchanged.
    eval_every: evaluate whenever the step count passes a multiple of
      `eval_every` (so a resumed run evaluates at the same steps), and at
      the end.
    keep_best: the name of an `eval_fn` metric to maximise (early stopping
      / model selection): the meta-parameters that score best on it are
      saved in `workdir/best/`, with their step and score in
      `workdir/best.json`, and are loaded by
      `metajax.checkpoint.restore_best`. Needs `workdir`, `eval_fn` and
      `eval_every`.
    progress: show a tqdm progress bar; if False, log each record as one
      line instead (`summary.LogWriter`, at INFO).
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
    writers: more `metajax.summary.Writer`s, given every record (str ->
      float with an int "step"; the record `metrics.jsonl` gets) on every
      process. The caller closes them.

  Returns:
    The final `TrainState` (replicated over `mesh` when one is given).
  """
  _check_args(num_steps=num_steps, log_every=log_every,
              checkpoint_every=checkpoint_every, eval_every=eval_every,
              keep_best=keep_best, workdir=workdir, eval_fn=eval_fn)
  fed = isinstance(sample_tasks, host_tasks_lib.HostTasks)
  if fed:
    host_tasks_lib.check(sample_tasks)
  else:
    sample_tasks = tasks_lib.sampler_tree(sample_tasks)
    n_tasks = _tasks_per_step(sample_tasks, key)
  state, stop_at = init_state(learner, optimizer, key), jnp.int32(num_steps)
  if mesh is not None:
    if not fed:
      sharding_lib.check_divisible(n_tasks, mesh)
      sample_tasks = sharding_lib.replicate(sample_tasks, mesh)
    # Placed once here rather than copied by every compiled call; a restored
    # checkpoint takes the sharding of `state`.
    state, stop_at = sharding_lib.replicate((state, stop_at), mesh)
  # On several hosts every process runs this loop; one locks and logs.
  primary = jax.process_index() == 0
  with (workdir_lib.hold(workdir) if workdir and primary
        else contextlib.nullcontext()):
    checkpointer = checkpoint_lib.TrainCheckpointer(
        workdir, key=key, num_steps=num_steps, every=checkpoint_every,
        keep_best=keep_best)
    state = checkpointer.resume(state)
    start = int(state.step)
    if start:
      summary.note(f"{desc}: resumed from step {start}", show=progress)
    if fed and start >= num_steps:
      return state  # Finished: not a batch more to read.
    with contextlib.ExitStack() as stack:
      if fed:
        feed = stack.enter_context(_feed(sample_tasks, start, num_steps,
                                         log_every, mesh))
        n_tasks = tasks_lib.num_tasks(feed.signature)
        if mesh is not None:
          sharding_lib.check_divisible(n_tasks, mesh)
        example = _stacked_example(feed, mesh)
      step_fn, compile_s = _compile(
          make_train_step(learner, optimizer,
                          num_steps=feed.stack if fed else log_every,
                          halt_on_nonfinite=halt_on_nonfinite, mesh=mesh,
                          task_chunk=task_chunk, fed=fed),
          state, example if fed else sample_tasks, stop_at, desc=desc,
          progress=progress)
      run_chunk = functools.partial(_run_fed, feed) if fed else (
          lambda step_fn, state, stop_at, n: step_fn(state, sample_tasks,
                                                     stop_at))
      state = _loop(run_chunk, step_fn, state, stop_at, start=start,
                    num_steps=num_steps, log_every=log_every,
                    n_tasks=n_tasks, compile_s=compile_s, eval_fn=eval_fn,
                    eval_every=eval_every, checkpointer=checkpointer,
                    halt_on_nonfinite=halt_on_nonfinite, workdir=workdir,
                    primary=primary, progress=progress, desc=desc,
                    writers=writers)
  return state


# A fed call scans over the batches of up to `log_every` steps, stacked on
# the host, to pay a compiled call's fixed cost (about 0.2 s for a 60-way
# Omniglot ProtoNets step on a CPU) once per stack rather than once per
# step. This bounds the bytes of one stack; `prefetch` stacks wait ahead.
FED_STACK_BYTES = 64 << 20


def fed_stack(signature, log_every: int,
              max_bytes: Optional[int] = None) -> int:
  """Steps per fed call: the largest divisor of `log_every` whose stack of
  batches (each of `signature`'s shapes) fits in `max_bytes`
  (`FED_STACK_BYTES` if None), at least 1.

  A divisor, so that a chunk of `log_every` steps - and so every record and
  checkpoint - falls on a stack boundary, and a resumed run reads the same
  stacks as an uninterrupted one.
  """
  max_bytes = FED_STACK_BYTES if max_bytes is None else max_bytes
  nbytes = sum(int(np.prod(s.shape)) * np.dtype(s.dtype).itemsize
               for s in jax.tree.leaves(signature))
  return max(k for k in range(1, log_every + 1)
             if log_every % k == 0 and (k == 1 or k * nbytes <= max_bytes))


def _fed_sharding(mesh: Optional[jax.sharding.Mesh]):
  """Where a fed stack `[k, n_tasks, ...]` goes: split along its task axis
  over `mesh`, or the default device (None)."""
  return None if mesh is None else sharding_lib.task_sharding(mesh, axis=1)


def _feed(host_tasks: host_tasks_lib.HostTasks, start: int, stop: int,
          log_every: int, mesh: Optional[jax.sharding.Mesh]
          ) -> host_tasks_lib.Prefetcher:
  """The run's batches of steps `start` to `stop`, in stacks `[k, n_tasks,
  ...]` on the device (`fed_stack`); the last stack is padded."""
  return host_tasks_lib.Prefetcher(
      host_tasks, start, sharding=_fed_sharding(mesh), stop_step=stop,
      stack=lambda signature: fed_stack(signature, log_every))


def _stacked_example(feed: host_tasks_lib.Prefetcher, mesh):
  """What a fed `step_fn` is compiled for: the feed's stacks, placed as
  `_feed` places them."""
  return jax.tree.map(
      lambda s: jax.ShapeDtypeStruct((feed.stack,) + s.shape, s.dtype,
                                     sharding=_fed_sharding(mesh)),
      feed.signature)


def _run_fed(feed, step_fn, state, stop_at, n):
  """The next `n` steps as calls of a fed `step_fn`, one per stack;
  metrics stacked over every slot, "ran" marking the real steps. The calls
  are dispatched without waiting, so the device runs one stack while the
  feed places the next."""
  chunks = []
  for _ in range(-(-n // feed.stack)):
    state, metrics = step_fn(state, next(feed), stop_at)
    chunks.append(metrics)
  return state, jax.tree.map(lambda *m: jnp.concatenate(m), *chunks)


def _loop(run_chunk, step_fn, state, stop_at, *, start, num_steps, log_every,
          n_tasks, compile_s, eval_fn, eval_every, checkpointer,
          halt_on_nonfinite, workdir, primary, progress, desc, writers):
  """Runs `run_chunk` until step `num_steps`, recording, evaluating and
  checkpointing after each chunk of `log_every` steps."""
  own, train_s = _open_writers(workdir if primary else None, start=start,
                               num_steps=num_steps, progress=progress,
                               desc=desc)
  log = summary.MultiWriter(own, *writers)
  try:
    while int(state.step) < num_steps:
      previous, t0 = int(state.step), time.perf_counter()
      state, metrics = run_chunk(step_fn, state, stop_at,
                                 min(log_every, num_steps - previous))
      metrics = jax.device_get(metrics)
      seconds = time.perf_counter() - t0
      train_s += seconds
      step = int(state.step)
      record = _record(metrics, step=step, seconds=seconds,
                       tasks=(step - previous) * n_tasks, train_s=train_s,
                       compile_s=compile_s)
      compile_s = None
      halted = halt_on_nonfinite and int(state.nonfinite_step) >= 0
      if eval_fn is not None and eval_every and not halted and (
          step // eval_every > previous // eval_every or step >= num_steps):
        record.update(eval_fn(sharding_lib.local_copy(state.meta_params)))
        checkpointer.offer_best(step, record, state.meta_params)
      log.write(record)
      checkpointer.save(state, halted=halted)
      if halted:
        raise _halt_error(state, metrics, desc=desc, workdir=workdir)
  finally:
    own.close()
  return state


def replay_tasks(sample_tasks: TaskSampler, key: jax.Array,
                 prefetch: int = 2) -> host_tasks_lib.HostTasks:
  """The task batches `train(..., sample_tasks, key=key)` draws on the
  device, drawn again on the host, as a `HostTasks` pipeline.

  Training on it gives the parameters of the sampled run (the key is split
  alike either way); it serves to check a host pipeline, or the training
  loop's host path, against the sampled run, and to look at the tasks a run
  trained on. Each batch is sampled on the default device and copied to
  NumPy; `make_iterator(s)` first walks the key chain `s` steps.

  Args:
    sample_tasks: `key -> Task` batch sampler.
    key: the run's key.
    prefetch: as in `HostTasks`.
  """
  sampler = tasks_lib.sampler_tree(sample_tasks)
  sample = jax.jit(lambda s, k: s(jax.random.split(k, 3)[1]))
  advance = jax.jit(lambda k: jax.random.split(k, 3)[0])

  def make_iterator(start_step):
    run_key = jax.random.split(key)[1]  # as in `init_state`
    for _ in range(start_step):
      run_key = advance(run_key)
    while True:
      yield jax.device_get(sample(sampler, run_key))
      run_key = advance(run_key)

  return host_tasks_lib.HostTasks(make_iterator, prefetch)


def _check_int(name: str, value, least: int) -> None:
  """A clear error for a count that is not an integer >= `least`."""
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise TypeError(f"{name} must be an integer, got {value!r} "
                    f"({type(value).__name__}).")
  if value < least:
    raise ValueError(f"{name} must be >= {least}, got {value}.")


def _check_args(*, num_steps, log_every, checkpoint_every, eval_every,
                keep_best, workdir, eval_fn) -> None:
  """Raises TypeError/ValueError for `train` arguments that cannot work."""
  for name, value, least in (("num_steps", num_steps, 0),
                             ("log_every", log_every, 1),
                             ("checkpoint_every", checkpoint_every, 1),
                             ("eval_every", eval_every or 1, 1)):
    _check_int(name, value, least)
  if keep_best and not (workdir and eval_fn and eval_every):
    raise ValueError(f"keep_best={keep_best!r} needs workdir, eval_fn and "
                     f"eval_every.")


def _tasks_per_step(sample_tasks: TaskSampler, key: jax.Array) -> int:
  """The meta-batch size, after checking the sampler's `Task` shapes."""
  example = jax.eval_shape(sample_tasks, key)
  tasks_lib.validate_task(example, batched=True)
  return tasks_lib.num_tasks(example)


def _compile(step_fn, *args, desc: str, progress: bool):
  """`(step_fn compiled for args, seconds it took)`, announced."""
  t0 = time.perf_counter()
  compiled = step_fn.lower(*args).compile()
  seconds = time.perf_counter() - t0
  # Shown, not only logged: with the persistent compilation cache a rerun's
  # "compiled in" falls to the time of loading the program.
  summary.note(f"{desc}: compiled in {seconds:.1f} s", show=progress)
  return compiled, seconds


def _open_writers(logdir: Optional[str], *, start: int, num_steps: int,
                  progress: bool, desc: str):
  """`(the run's own writers, training seconds logged up to step start)`.

  metrics.jsonl and TensorBoard files in `logdir` (None writes no files) and
  the progress bar or, without it, a log line a record, all resumed at step
  `start`.
  """
  own, train_s = [], 0.0
  if logdir:
    jsonl = summary.JsonlWriter(os.path.join(logdir, "metrics.jsonl"),
                                resume_step=start)
    own += [jsonl, summary.TensorBoardWriter(os.path.join(logdir,
                                                          "tensorboard"))]
    train_s = jsonl.train_s
  own.append(summary.ProgressWriter(num_steps, initial=start, desc=desc)
             if progress else summary.LogWriter(num_steps, desc=desc))
  return summary.MultiWriter(*own), train_s


def _record(metrics: Dict[str, np.ndarray], *, step: int, seconds: float,
            tasks: int, train_s: float,
            compile_s: Optional[float]) -> Dict[str, Any]:
  """The record of one compiled call, from its stacked metrics.

  Args:
    metrics: `step_fn`'s metrics on the host: `[log_every]` arrays, with
      "ran" (bool: a real step) and "nonfinite" (int32 bits, 0 if finite).
    step: the step reached.
    seconds: the call's wall time.
    tasks: tasks the call trained on.
    train_s: training seconds of the run so far, this call's included.
    compile_s: the compile time, recorded with the first call only.

  Returns:
    `{"step", "tasks_per_s", "train_s", ["compile_s"], <each metric's mean
    over the finite steps>, ["nonfinite_steps"]}`, in that order.
  """
  ran = metrics["ran"]
  finite = ran & (metrics["nonfinite"] == 0)
  record = {"step": step, "tasks_per_s": tasks / seconds, "train_s": train_s}
  if compile_s is not None:
    record["compile_s"] = compile_s
  if finite.any():
    record.update({k: float(np.mean(v[finite])) for k, v in metrics.items()
                   if k not in ("ran", "nonfinite")})
  skipped = np.count_nonzero(ran & ~finite)
  if skipped:
    record["nonfinite_steps"] = int(skipped)
  return record


def _halt_error(state: TrainState, metrics: Dict[str, np.ndarray], *,
                desc: str, workdir: Optional[str]) -> FloatingPointError:
  """The error that stops a run at its first non-finite step.

  It says which step, what was not finite and where the last finite state
  is; that `state` is also its attribute.
  """
  bits = metrics["nonfinite"][metrics["ran"]]
  where = (f"is checkpointed in {workdir}, beside any earlier checkpoints"
           if workdir else "is this error's `state` attribute")
  error = FloatingPointError(
      f"{desc}: non-finite values at step {int(state.nonfinite_step)} (in: "
      f"{describe_nonfinite(int(bits[bits != 0][0]))}); that update was not "
      f"applied and training stopped. The last finite state (step "
      f"{int(state.step)}) {where}. Lower the learning rates, or pass "
      f"halt_on_nonfinite=False to skip such steps.")
  error.state = state
  return error
