"""Tasks as PyTrees.

A `Task` pairs a support set (what the learner adapts on) with a query set (what
the adapted learner is judged on). Both are arbitrary PyTrees, usually an
`(inputs, targets)` tuple whose leaves carry a leading *example* axis. A batch of
tasks is the same PyTree with one more leading *task* axis on every leaf, which
is what `jax.vmap` maps over.
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from metajax.types import PyTree


class Task(NamedTuple):
  """One task, or a batch of tasks when every leaf has a leading task axis.

  Attributes:
    support: PyTree whose leaves have shape `[n_support, ...]` (one task) or
      `[n_tasks, n_support, ...]` (a batch), e.g. `(x, y)`.
    query: PyTree with the same structure as `support`; leaves `[n_query, ...]`
      or `[n_tasks, n_query, ...]`. Per-example shapes and dtypes must match
      the support set's.
  """
  support: PyTree
  query: PyTree


def _leading_sizes(tree, what: str, axis: int) -> int:
  """Returns the common size of axis `axis` over all leaves of `tree`."""
  leaves_with_paths = jax.tree_util.tree_leaves_with_path(tree)
  if not leaves_with_paths:
    raise ValueError(f"{what} is empty: it has no array leaves.")
  sizes = {}
  for path, leaf in leaves_with_paths:
    shape = np.shape(leaf)
    if len(shape) <= axis:
      raise ValueError(
          f"{what}{jax.tree_util.keystr(path)} has shape {shape}; expected at "
          f"least {axis + 1} axes ({_axis_names(axis)}).")
    sizes[jax.tree_util.keystr(path)] = shape[axis]
  if len(set(sizes.values())) != 1:
    raise ValueError(
        f"{what} leaves disagree on the size of axis {axis} "
        f"({_axis_names(axis).split(', ')[-1]}): {sizes}")
  return next(iter(sizes.values()))


def _axis_names(axis: int) -> str:
  return "task, example" if axis == 1 else "example"


def validate_task(task: Task, *, batched: bool = False) -> None:
  """Checks that `task` is well formed and raises a ValueError naming the fault.

  Checks: `support` and `query` have the same tree structure; every leaf pair
  has the same per-example shape and dtype; within a set all leaves agree on
  the number of examples; in a batch all leaves agree on the number of tasks.

  Args:
    task: a `Task`.
    batched: whether leaves carry a leading task axis.

  Raises:
    ValueError: with the offending leaf path and shapes.
  """
  if not isinstance(task, Task):
    raise TypeError(f"expected a metajax.Task, got {type(task).__name__}.")
  s_def = jax.tree_util.tree_structure(task.support)
  q_def = jax.tree_util.tree_structure(task.query)
  if s_def != q_def:
    raise ValueError(
        f"support and query have different structures: {s_def} vs {q_def}.")
  example_axis = 1 if batched else 0
  if batched:
    n_s = _leading_sizes(task.support, "support", 0)
    n_q = _leading_sizes(task.query, "query", 0)
    if n_s != n_q:
      raise ValueError(
          f"support has {n_s} tasks but query has {n_q} on the task axis.")
  _leading_sizes(task.support, "support", example_axis)
  _leading_sizes(task.query, "query", example_axis)
  for (path, s), q in zip(jax.tree_util.tree_leaves_with_path(task.support),
                          jax.tree_util.tree_leaves(task.query)):
    s_shape, q_shape = np.shape(s), np.shape(q)
    where = jax.tree_util.keystr(path) or "<leaf>"
    if s_shape[example_axis + 1:] != q_shape[example_axis + 1:]:
      raise ValueError(
          f"support{where} has per-example shape {s_shape[example_axis + 1:]} "
          f"but query{where} has {q_shape[example_axis + 1:]} "
          f"(full shapes {s_shape} and {q_shape}).")
    s_dtype, q_dtype = jnp.result_type(s), jnp.result_type(q)
    if s_dtype != q_dtype:
      raise ValueError(
          f"support{where} has dtype {s_dtype} but query{where} has {q_dtype}.")


def num_tasks(task: Task) -> int:
  """Number of tasks in a batched `Task` (the size of the leading axis)."""
  return _leading_sizes(task.support, "support", 0)


def merge_sets(task: Task) -> PyTree:
  """Concatenates support and query along the example axis of one task.

  Joint (non-episodic) training sees all of a task's labelled data at once.
  """
  return jax.tree.map(lambda s, q: jnp.concatenate([s, q], axis=0),
                      task.support, task.query)


def sampler_tree(sample_tasks: Callable) -> jax.tree_util.Partial:
  """Wraps a `key -> Task` sampler so it can be an argument of `jax.jit`.

  A sampler that closes over a dataset on the device would have `jit` bake the
  whole dataset into the compiled program as a constant (slow to compile, and
  copied into every executable). A `jax.tree_util.Partial` whose bound
  arguments are the arrays is a PyTree instead: the arrays are ordinary
  arguments of the compiled step. Plain functions are wrapped with no bound
  arguments; a `Partial` is returned unchanged.
  """
  if isinstance(sample_tasks, jax.tree_util.Partial):
    return sample_tasks
  if not callable(sample_tasks):
    raise TypeError(
        f"a task sampler must be callable as sample_tasks(key), got "
        f"{type(sample_tasks).__name__}.")
  return jax.tree_util.Partial(sample_tasks)
