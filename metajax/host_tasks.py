"""Task batches made on the host (NumPy, tf.data, tfds) and fed to the device.

`metajax.train` and `metajax.evaluate` normally draw tasks inside the compiled
step from a `key -> Task` sampler, which is fastest when the dataset fits on
the device and episodes are cheap index arithmetic. A pipeline that decodes,
augments or streams data from disk runs on the host instead: wrap it in a
`HostTasks` and pass that where a sampler goes.

Resuming must replay the same batches, so the pipeline is given as a pure
function of the step: `make_iterator(start_step)` yields the batches of steps
`start_step, start_step + 1, ...`. Seed each batch from (seed, step) -
`np.random.default_rng([seed, step])`, or stateless TensorFlow ops on
`tf.data.Dataset.range(start_step, ...)` - and a resumed run sees exactly
what an uninterrupted one saw.

Batches are converted and put on the device by a background thread ahead of
the step that uses them, and split over the task mesh when there is one.
`metajax.train` stacks the batches of several steps into one compiled call
(a scan over them): on a CPU each call has a fixed cost that one-step calls
would pay at every step. Every batch must have the shapes and dtypes of the
first: the step is compiled once for them, and a batch that differs is an
error naming the step and the leaf, not a silent recompilation.
"""

import queue
import threading
from typing import Callable, Iterator, NamedTuple, Optional, Union

import jax
import numpy as np

from metajax import tasks as tasks_lib
from metajax.types import PyTree


class HostTasks(NamedTuple):
  """A host pipeline of task batches, one per meta-step.

  Attributes:
    make_iterator: `make_iterator(start_step) -> iterator` of `Task` batches
      for steps `start_step, start_step + 1, ...`; leaves are NumPy arrays
      (or anything `np.asarray` takes: tf.data's `as_numpy_iterator()`
      output, lists), each `[n_tasks, n_examples, ...]` with the same shapes
      and dtypes in every batch. It must be a pure function of `start_step`
      for a resumed run to equal an uninterrupted one.
    prefetch: items (batches, or `metajax.train`'s stacks of batches) kept
      ready on the device ahead of the call that uses them (>= 1).
  """
  make_iterator: Callable[[int], Iterator[tasks_lib.Task]]
  prefetch: int = 2


def check(host_tasks: HostTasks) -> HostTasks:
  """Raises a TypeError/ValueError naming what is wrong with `host_tasks`."""
  if not callable(host_tasks.make_iterator):
    raise TypeError(f"HostTasks.make_iterator must be callable as "
                    f"make_iterator(start_step), got "
                    f"{type(host_tasks.make_iterator).__name__}.")
  prefetch = host_tasks.prefetch
  if isinstance(prefetch, bool) or not isinstance(prefetch, int) or (
      prefetch < 1):
    raise ValueError(f"HostTasks.prefetch must be an integer >= 1, got "
                     f"{prefetch!r}.")
  return host_tasks


def to_numpy(batch, step: int) -> tasks_lib.Task:
  """`batch` as a `Task` of NumPy arrays, checked as a batch of tasks."""
  if not isinstance(batch, tasks_lib.Task):
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
      batch = tasks_lib.Task(*batch)
    else:
      raise TypeError(f"host task batch of step {step}: expected a Task (or "
                      f"a (support, query) pair), got "
                      f"{type(batch).__name__}.")
  batch = jax.tree.map(np.asarray, batch)
  try:
    tasks_lib.validate_task(batch, batched=True)
  except ValueError as e:
    raise ValueError(f"host task batch of step {step}: {e}") from None
  return batch


def signature(batch: PyTree) -> PyTree:
  """The shapes and dtypes of `batch`'s leaves, as `jax.ShapeDtypeStruct`s."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x),
                                                     np.asarray(x).dtype),
                      batch)


def check_like(batch: PyTree, expected: PyTree, step: int) -> None:
  """Raises a ValueError unless `batch` has `expected`'s structure, shapes
  and dtypes (the ones the step was compiled for)."""
  got_def = jax.tree.structure(batch)
  if got_def != jax.tree.structure(expected):
    raise ValueError(f"host task batch of step {step} has structure "
                     f"{got_def}, but the first batch had "
                     f"{jax.tree.structure(expected)}.")
  for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(batch),
                               jax.tree.leaves(expected)):
    if np.shape(got) != want.shape or np.asarray(got).dtype != want.dtype:
      raise ValueError(
          f"host task batch of step {step}: leaf {jax.tree_util.keystr(path)}"
          f" is {np.asarray(got).dtype}{list(np.shape(got))}, but the step "
          f"was compiled for {want.dtype}{list(want.shape)} (the first "
          f"batch's): every batch must have the same shapes and dtypes.")


class _Failure(NamedTuple):
  error: BaseException


_END = object()  # next(iterator, _END): the pipeline has ended.


class Prefetcher:
  """Batches of a `HostTasks` from `start_step` on, on the device.

  A background thread reads the pipeline, checks each batch against the
  first, and puts it on the device (`jax.device_put` with `sharding`, or
  the default device), keeping `prefetch` items ready. An error in the
  pipeline is raised by `next` at the item holding the step it belongs to.
  Use as a context manager, or call `close`, to stop the thread.

  Args:
    host_tasks: the pipeline.
    start_step: the step of the first batch.
    sharding: where to put each item, e.g. split along the task axis over
      a mesh (`metajax.sharding.task_sharding`); None for the default
      device. With a mesh over several hosts, every process's pipeline
      must yield the whole batch; each takes its own devices' slice.
    stack: None yields one batch per item; an integer k >= 1 yields the
      batches of k consecutive steps stacked on a new leading axis
      (`[k, n_tasks, ...]`: a k-step scan's `xs`), or a function of the
      first batch's `signature` that returns k. `self.stack` is the k used.
    stop_step: no batch at or past this step is read; the stack that
      reaches it is filled up with copies of its last batch (slots for the
      caller to skip). None reads on until the pipeline ends.
  """

  def __init__(self, host_tasks: HostTasks, start_step: int, *,
               sharding: Optional[jax.sharding.Sharding] = None,
               stack: Union[None, int, Callable[[PyTree], int]] = None,
               stop_step: Optional[int] = None):
    check(host_tasks)
    if stop_step is not None and stop_step <= start_step:
      raise ValueError(f"stop_step ({stop_step}) must come after "
                       f"start_step ({start_step}).")
    self._queue = queue.Queue(maxsize=host_tasks.prefetch)
    self._stop = threading.Event()
    self._sharding, self._stop_step = sharding, stop_step
    self.step = start_step
    iterator = iter(host_tasks.make_iterator(start_step))
    # The first batch is read here, so that its errors and its signature
    # come before anything is compiled.
    first = self._first(iterator, start_step)
    self.signature = signature(first)
    self.stack = stack(self.signature) if callable(stack) else stack
    if self.stack is not None and (isinstance(self.stack, bool) or
                                   not isinstance(self.stack, int) or
                                   self.stack < 1):
      raise ValueError(f"Prefetcher stack must be None or an integer >= 1, "
                       f"got {self.stack!r}.")
    self._thread = threading.Thread(target=self._fill,
                                    args=(iterator, first, start_step + 1),
                                    daemon=True)
    self._thread.start()

  @staticmethod
  def _first(iterator, step):
    try:
      batch = next(iterator)
    except StopIteration:
      raise ValueError(f"the host task pipeline yielded no batch for step "
                       f"{step}.") from None
    return to_numpy(batch, step)

  def _place(self, batches):
    if self.stack is None:
      (item,) = batches
    else:
      batches = batches + batches[-1:] * (self.stack - len(batches))
      item = jax.tree.map(lambda *x: np.stack(x), *batches)
    if self._sharding is None:
      return jax.device_put(item)
    sharding = self._sharding
    return jax.tree.map(
        lambda x: jax.make_array_from_callback(x.shape, sharding,
                                               lambda index: x[index]),
        item)

  def _put(self, item) -> bool:
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def _fill(self, iterator, first, step):
    """Reads the batches of `step` on (`first` is the one before it)."""
    size, pending = self.stack or 1, [first]
    try:
      while True:
        if len(pending) == size or step == self._stop_step:
          if not self._put(self._place(pending)) or step == self._stop_step:
            return
          pending = []
        batch = next(iterator, _END)
        if batch is _END:
          self._put(_Failure(ValueError(
              f"the host task pipeline ended before step {step}: it must "
              f"yield a batch for every step of the run.")))
          return
        batch = to_numpy(batch, step)
        check_like(batch, self.signature, step)
        pending.append(batch)
        step += 1
    except BaseException as e:  # pylint: disable=broad-except
      self._put(_Failure(e))

  def __iter__(self):
    return self

  def __next__(self) -> tasks_lib.Task:
    item = self._queue.get()
    if isinstance(item, _Failure):
      self._queue.put(item)  # Every later call fails alike.
      raise item.error
    self.step += self.stack or 1
    return item

  def close(self) -> None:
    self._stop.set()
    self._thread.join()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
