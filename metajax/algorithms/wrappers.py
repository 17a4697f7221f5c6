"""Learners built from learners.

As optax's `apply_if_finite` wraps a gradient transformation, each function
here takes a `MetaLearner` and returns one that differs in one of its four
functions:

* `map_tasks`: the meta-gradient computed a chunk of tasks at a time;
* `starting_from`: `init` starting from another learner's model parameters.
"""

from typing import Optional, Union

import jax
import jax.numpy as jnp

from metajax import tasks as tasks_lib
from metajax import types
from metajax.algorithms.base import MetaLearner
from metajax.algorithms.base import model_params


def resolve_task_chunk(chunk: Union[int, str, None]) -> Optional[int]:
  """The chunk size `map_tasks` uses for `chunk`: "auto" is 1 on the CPU.

  On a CPU, one task's activations fit in the caches while a whole batch's
  do not: with conv4, a meta-step that maps over tasks one at a time runs
  faster than one vmapped over a meta-batch (benchmarks/meta_step.py
  measures by how much).
  GPUs and TPUs want the whole batch at once, so "auto" is None there.
  None or 0 keeps the batch vmapped; an int >= 1 is a chunk size.
  """
  if chunk == "auto":
    return 1 if jax.default_backend() == "cpu" else None
  if chunk is None or chunk == 0:
    return None
  if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 0:
    raise ValueError(
        f"task chunk must be 'auto', None or an int >= 0, got {chunk!r}.")
  return chunk


def map_tasks(learner: MetaLearner, chunk: int) -> MetaLearner:
  """`learner` with its meta-gradient computed `chunk` tasks at a time.

  The batch `[B, ...]` is cut into B / chunk chunks; `jax.lax.map` runs the
  learner's own `meta_grad` on one chunk after another, and the chunks'
  gradients and metrics are averaged. Every `meta_grad` is a mean over its
  tasks, so this is the batch's meta-gradient, equal to the vmapped one up to
  float summation order, with the working set of one chunk (see
  `resolve_task_chunk`). Each chunk's `meta_grad` gets its own key, split
  from the step's key. `adapt` and `predict` are unchanged.

  Raises a ValueError for a learner whose `tasks_independent` is False: its
  chunks' mean would be another meta-gradient.
  """
  if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
    raise ValueError(f"chunk must be an int >= 1, got {chunk!r}.")
  if not learner.tasks_independent:
    raise ValueError(
        "map_tasks: this learner's tasks depend on the ones before them in "
        "the batch (tasks_independent=False, e.g. reptile's "
        "sequential_tasks), so chunks of the batch would give another "
        "meta-gradient; train it with the whole batch at once "
        "(task_chunk=None).")

  def meta_grad(meta_params, tasks, key):
    n = tasks_lib.num_tasks(tasks)
    if n % chunk:
      raise ValueError(
          f"a meta-batch of {n} tasks cannot be cut into chunks of {chunk}; "
          f"use a chunk size that divides the meta-batch size.")
    chunks = jax.tree.map(
        lambda x: x.reshape((n // chunk, chunk) + x.shape[1:]), tasks)
    keys = jax.random.split(key, n // chunk)
    grads, metrics = jax.lax.map(
        lambda args: learner.meta_grad(meta_params, *args), (chunks, keys))
    mean = lambda x: jnp.mean(x, axis=0)
    # An integer pseudo-gradient (a step count every task advanced alike)
    # stays an integer.
    return (jax.tree.map(lambda g: mean(g).astype(g.dtype), grads),
            jax.tree.map(mean, metrics))

  return learner._replace(meta_grad=meta_grad)


def _check_like(start: types.Params, fresh: types.Params) -> None:
  """Raises a ValueError unless `start` is like `fresh`, naming a difference.

  Structure, shapes and dtypes are compared, so traced values pass.
  """
  mismatch = types.tree_mismatch(start, fresh)
  if mismatch is None:
    return
  where, given, wanted = mismatch
  if not where:
    raise ValueError(f"starting_from: the model parameters given have "
                     f"{given}, but the learner's have {wanted}.")
  raise ValueError(f"starting_from: params{where} has {given}, but the "
                   f"learner's has {wanted}.")


def starting_from(learner: MetaLearner,
                  meta_params: types.MetaParams) -> MetaLearner:
  """`learner` whose `init` starts from the model parameters of `meta_params`.

  E.g. MAML initialised by joint training: `meta_params` are another
  learner's (trained) meta-parameters with the same model. `init(key)`
  returns the learner's own fresh meta-parameters, its learned rates at their
  initial value for instance, with the model parameters of `meta_params` in
  place of freshly initialised ones. `meta_grad`, `adapt` and `predict` are
  unchanged.

  Args:
    learner: the learner to start.
    meta_params: meta-parameters of any learner of `metajax.algorithms`
      whose model has the structure, shapes and dtypes of `learner`'s
      (checked by `init`, which raises a ValueError naming the first
      parameter that differs).

  Returns:
    A `MetaLearner`.
  """
  start = model_params(meta_params)

  def init(key):
    fresh = learner.init(key)
    _check_like(start, model_params(fresh))
    return dict(fresh, params=start)

  return learner._replace(init=init)
