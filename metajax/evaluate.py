"""Evaluation: adapt on each task's support set, score its query set.

Every number comes with its uncertainty: `mean_ci` gives the mean over tasks
and the half-width of a normal-approximation 95% confidence interval,
1.96 * std / sqrt(n).
"""

from typing import Callable, Dict

import jax
import jax.numpy as jnp
import numpy as np

from metajax import tasks as tasks_lib
from metajax.algorithms.base import MetaLearner
from metajax.algorithms.base import accuracy  # re-exported for metric_fn
from metajax.train import TaskSampler

PyTree = object
MetricFn = Callable[[jax.Array, jax.Array], jax.Array]


def mean_ci(values) -> Dict[str, float]:
  """Mean of per-task values with a 95% confidence interval.

  Args:
    values: 1-D array of per-task metrics (n >= 2).

  Returns:
    {"mean", "ci95" (half-width), "std" (sample std, ddof=1), "n"}.
  """
  values = np.asarray(values, dtype=np.float64)
  if values.ndim != 1 or values.size < 2:
    raise ValueError(
        f"need a 1-D array of at least 2 per-task values, got shape "
        f"{values.shape}.")
  if not np.all(np.isfinite(values)):
    raise ValueError(
        f"{np.sum(~np.isfinite(values))} of {values.size} per-task values are "
        f"not finite.")
  std = float(np.std(values, ddof=1))
  return {"mean": float(np.mean(values)),
          "ci95": 1.96 * std / float(np.sqrt(values.size)),
          "std": std, "n": int(values.size)}


def task_metrics(learner: MetaLearner, metric_fn: MetricFn) -> Callable:
  """`fn(meta_params, tasks) -> [n_tasks]` metric after adaptation, vmapped."""
  def one(meta_params, task):
    state = learner.adapt(meta_params, task.support)
    x, y = task.query
    return metric_fn(learner.predict(meta_params, state, x), y)
  return jax.vmap(one, in_axes=(None, 0))


def evaluate(learner: MetaLearner, meta_params: PyTree,
             sample_tasks: TaskSampler, metric_fn: MetricFn, *,
             key: jax.Array, num_tasks: int) -> np.ndarray:
  """Per-task metric over `num_tasks` freshly sampled tasks.

  Args:
    learner: the algorithm; its `adapt` runs on each support set.
    meta_params: trained meta-parameters.
    sample_tasks: `sample_tasks(key) -> Task` batch; batches are drawn from
      successive splits of `key` until `num_tasks` tasks are scored.
    metric_fn: `metric_fn(predictions, query_targets) -> scalar`.
    key: PRNG key; the same key gives the same tasks for every learner.
    num_tasks: how many tasks to score.

  Returns:
    float64 `[num_tasks]` array, one value per task; feed it to `mean_ci`.
  """
  score = jax.jit(lambda mp, k, sampler: task_metrics(learner, metric_fn)(
      mp, sampler(k)))
  sample_tasks = tasks_lib.sampler_tree(sample_tasks)
  values = []
  count = 0
  while count < num_tasks:
    key, sub = jax.random.split(key)
    batch = np.asarray(score(meta_params, sub, sample_tasks), np.float64)
    values.append(batch)
    count += batch.size
  return np.concatenate(values)[:num_tasks]
