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


def auc(scores, labels, weights=None) -> float:
  """Area under the ROC curve (ties count one half), optionally weighted.

  Args:
    scores: float `[n]`, higher means "more likely 1".
    labels: `[n]` in {0, 1}.
    weights: optional non-negative `[n]` (e.g. bootstrap multiplicities).

  Returns:
    P(score of a random positive > that of a random negative), in [0, 1].
  """
  return float(_auc_sorted(*_sort_for_auc(scores, labels),
                           None if weights is None else np.asarray(weights)))


def _sort_for_auc(scores, labels):
  scores = np.asarray(scores, np.float64).ravel()
  labels = np.asarray(labels).ravel()
  if scores.shape != labels.shape:
    raise ValueError(f"scores {scores.shape} and labels {labels.shape} differ.")
  if not np.isin(labels, (0, 1)).all():
    raise ValueError("labels must be 0 or 1.")
  order = np.argsort(scores, kind="mergesort")
  scores, labels = scores[order], labels[order].astype(bool)
  # Groups of tied scores: index of the first element of each element's group.
  starts = np.r_[True, scores[1:] != scores[:-1]]
  group = np.cumsum(starts) - 1
  return order, labels, group


def _auc_sorted(order, labels, group, weights):
  w = np.ones(labels.size) if weights is None else weights[order]
  neg = np.where(labels, 0.0, w)
  pos = np.where(labels, w, 0.0)
  neg_per_group = np.bincount(group, neg)
  below = np.cumsum(neg_per_group) - neg_per_group  # negatives strictly lower
  total_pos, total_neg = pos.sum(), neg.sum()
  if total_pos == 0 or total_neg == 0:
    raise ValueError("AUC needs both positive and negative labels.")
  wins = np.sum(pos * (below[group] + 0.5 * neg_per_group[group]))
  return wins / (total_pos * total_neg)


def binary_metrics(probs, labels) -> Dict[str, float]:
  """AUC, accuracy at 0.5 and RMSE of probabilities `[n]` for 0/1 `[n]`."""
  probs = np.asarray(probs, np.float64).ravel()
  labels = np.asarray(labels, np.float64).ravel()
  return {"auc": auc(probs, labels),
          "accuracy": float(np.mean((probs >= 0.5) == (labels == 1))),
          "rmse": float(np.sqrt(np.mean((probs - labels) ** 2))),
          "n": int(labels.size)}


def bootstrap_auc(scores, labels, groups, *, reps: int = 1000, seed: int = 0
                  ) -> Dict[str, float]:
  """AUC with a 95% percentile bootstrap interval over groups (students).

  Each replicate draws as many groups as there are, with replacement, and
  weighs every answer by its group's multiplicity; the answers are sorted
  once, so a replicate costs O(n).

  Args:
    scores, labels: `[n]` as in `auc`.
    groups: int `[n]`, the group (student) of each answer.
    reps: bootstrap replicates.
    seed: seed of the resampling.

  Returns:
    {"auc", "ci_low", "ci_high", "groups", "n"}.
  """
  groups = np.asarray(groups).ravel()
  sorted_ = _sort_for_auc(scores, labels)
  values = [_auc_sorted(*sorted_, w)
            for w in _group_weights(groups, reps, seed)]
  low, high = np.percentile(values, [2.5, 97.5])
  return {"auc": float(_auc_sorted(*sorted_, None)), "ci_low": float(low),
          "ci_high": float(high), "groups": int(np.unique(groups).size),
          "n": int(groups.size)}


def bootstrap_auc_gain(scores, baseline_scores, labels, groups, *,
                       reps: int = 1000, seed: int = 0) -> Dict[str, float]:
  """AUC(scores) - AUC(baseline_scores) on the same answers, paired bootstrap.

  Both AUCs are computed on each replicate's same resampled groups
  (students), so the interval is that of the gain itself, much narrower than
  the two AUCs' own intervals when the methods agree on most students.

  Args:
    scores, baseline_scores: `[n]` scores of two methods for the same answers.
    labels, groups: `[n]` as in `bootstrap_auc`.
    reps, seed: as in `bootstrap_auc`.

  Returns:
    {"gain", "ci_low", "ci_high", "p_not_positive"}: the gain, its 95%
    percentile interval, and the fraction of replicates whose gain is <= 0
    (a one-sided bootstrap p-value for "the method is better").
  """
  groups = np.asarray(groups).ravel()
  ours = _sort_for_auc(scores, labels)
  theirs = _sort_for_auc(baseline_scores, labels)
  gains = np.array([_auc_sorted(*ours, w) - _auc_sorted(*theirs, w)
                    for w in _group_weights(groups, reps, seed)])
  low, high = np.percentile(gains, [2.5, 97.5])
  return {"gain": float(_auc_sorted(*ours, None) -
                        _auc_sorted(*theirs, None)),
          "ci_low": float(low), "ci_high": float(high),
          "p_not_positive": float(np.mean(gains <= 0))}


def _group_weights(groups, reps: int, seed: int):
  """Per replicate, float64 `[n]` weights: each answer's group multiplicity."""
  ids, index = np.unique(groups, return_inverse=True)
  rng = np.random.default_rng(seed)
  for _ in range(reps):
    counts = np.bincount(rng.integers(0, ids.size, ids.size),
                         minlength=ids.size)
    yield counts[index].astype(np.float64)
