"""Episode evaluation: adapt on each task's support set, score its query set.

Every number comes with its uncertainty: `mean_ci` gives the mean over tasks
and the half-width of a normal-approximation 95% confidence interval,
1.96 * std / sqrt(n).
"""

import operator
from typing import Callable, Dict, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from metajax import tasks as tasks_lib
from metajax.algorithms import MetaLearner
from metajax.algorithms import accuracy  # re-exported for metric_fn
from metajax.algorithms import resolve_task_chunk
from metajax.host_tasks import HostTasks
from metajax.host_tasks import Prefetcher
from metajax.types import PyTree
from metajax.types import TaskSampler

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


def _adapt(learner: MetaLearner, meta_params, support,
           steps: Optional[int]):
  """`learner.adapt`, with `steps` only when one is asked for.

  Learners that adapt nothing by gradient accept no `steps`, so evaluation
  passes it only when the caller does.
  """
  if steps is None:
    return learner.adapt(meta_params, support)
  return learner.adapt(meta_params, support, steps=steps)


def _score_one(learner: MetaLearner, metric_fn: MetricFn,
               adapt_steps: Optional[int],
               attack: Optional[Callable]) -> Callable:
  """`fn(meta_params, task, key) -> metric` of one (unbatched) task; `key`
  (None or a PRNG key) goes to the attack only."""
  def one(meta_params, task, key):
    state = _adapt(learner, meta_params, task.support, adapt_steps)
    x, y = task.query
    if attack is not None:
      x = attack(meta_params, state, x, y, key)
    return metric_fn(learner.predict(meta_params, state, x), y)
  return one


def task_metrics(learner: MetaLearner, metric_fn: MetricFn, *,
                 task_chunk: Union[int, str, None] = "auto",
                 adapt_steps: Optional[int] = None,
                 attack: Optional[Callable] = None) -> Callable:
  """`fn(meta_params, tasks, key=None) -> [n_tasks]`: each task's metric
  after adaptation.

  Args:
    learner: the algorithm.
    metric_fn: `metric_fn(predictions, query_targets) -> scalar` of one task.
    task_chunk: score this many tasks at a time, one chunk after another
      (a `jax.lax.map` over chunks, each chunk vmapped): the working set is
      one chunk's activations instead of the whole batch's. "auto" is one
      task at a time on the CPU and the whole batch on GPU and TPU
      (`metajax.algorithms.resolve_task_chunk`); None or 0 vmaps the whole
      batch. The values equal the vmapped ones up to float summation order.
      A chunk that does not divide the batch is allowed: the last chunk is
      filled up with the batch's first tasks, whose scores are dropped.
    adapt_steps: gradient steps of `learner.adapt` on each support set;
      None uses the learner's own number.
    attack: score each task on attacked query inputs: `attack(meta_params,
      task_state, x, y, key) -> x_adv`, given the adapted state
      (`metajax.adversarial.attack`); `key` is the task's own PRNG key, or
      None when `fn` gets none. None scores the clean queries.

  Returns:
    A traceable `fn(meta_params, tasks, key=None)`; `tasks` is a batched
    `Task` with leading axis `n_tasks`, and the result has one value per task
    (`[n_tasks]` for a scalar metric). `key` is split into one key a task for
    the attack (a random start); the scores without an attack ignore it.
  """
  chunk = resolve_task_chunk(task_chunk)
  one = _score_one(learner, metric_fn, adapt_steps, attack)

  def batched(meta_params, tasks, keys):
    return jax.vmap(one, in_axes=(None, 0, None if keys is None else 0))(
        meta_params, tasks, keys)

  def scores(meta_params, tasks, key=None):
    n = tasks_lib.num_tasks(tasks)
    keys = None if key is None else jax.random.split(key, n)
    if chunk is None:
      return batched(meta_params, tasks, keys)
    size = min(chunk, n)  # a chunk larger than the batch would only pad it
    n_chunks = -(-n // size)
    pad = n_chunks * size - n
    if pad:
      # Padding with real tasks (rather than zeros) keeps the filler inputs
      # valid for every learner, so it cannot raise or produce NaNs.
      tasks, keys = jax.tree.map(lambda x: jnp.concatenate([x, x[:pad]]),
                                 (tasks, keys))
    chunks = jax.tree.map(
        lambda x: x.reshape((n_chunks, size) + x.shape[1:]), (tasks, keys))
    values = jax.lax.map(lambda c: batched(meta_params, *c), chunks)
    return values.reshape((n_chunks * size,) + values.shape[2:])[:n]

  return scores


def _short(aval) -> str:
  """`float32[10, 1]`: dtype and shape of an array or ShapeDtypeStruct."""
  return f"{np.dtype(aval.dtype).name}{list(aval.shape)}"


def _check_num_tasks(num_tasks) -> int:
  if isinstance(num_tasks, bool):
    raise TypeError(f"num_tasks must be an int, got {num_tasks!r}.")
  try:
    num_tasks = operator.index(num_tasks)
  except TypeError:
    raise TypeError(
        f"num_tasks must be an int, got {num_tasks!r} "
        f"({type(num_tasks).__name__}).") from None
  if num_tasks < 1:
    raise ValueError(f"num_tasks must be >= 1, got {num_tasks}.")
  return num_tasks


def _check_scoring(learner: MetaLearner, meta_params: PyTree,
                   sample_tasks: Callable, metric_fn: MetricFn,
                   key: jax.Array, adapt_steps: Optional[int]) -> int:
  """Checks shapes with `jax.eval_shape`, running nothing; returns batch size.

  Raises:
    TypeError: `sample_tasks` does not return a `Task`.
    ValueError: naming the argument at fault and the shapes involved: an
      ill-formed or empty batch, a learner that cannot score one task of it,
      or a `metric_fn` that does not return one real scalar per task.
  """
  batch = jax.eval_shape(sample_tasks, key)
  if not isinstance(batch, tasks_lib.Task):
    raise TypeError(f"sample_tasks(key) must return a metajax.Task batch, "
                    f"got {type(batch).__name__}.")
  try:
    tasks_lib.validate_task(batch, batched=True)
  except ValueError as err:
    raise ValueError(f"sample_tasks(key) returned an ill-formed batch of "
                     f"tasks (every leaf needs a leading task axis): {err}"
                     ) from None
  n = tasks_lib.num_tasks(batch)
  if n < 1:
    raise ValueError(
        f"sample_tasks(key) returned a batch of 0 tasks (support "
        f"{jax.tree.map(_short, batch.support)}); evaluation needs at least "
        f"one task per batch.")
  task = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape[1:], s.dtype),
                      batch)
  shapes = (f"support {jax.tree.map(_short, task.support)}, query "
            f"{jax.tree.map(_short, task.query)}")
  try:
    predictions = jax.eval_shape(
        lambda mp, t: learner.predict(
            mp, _adapt(learner, mp, t.support, adapt_steps), t.query[0]),
        meta_params, task)
  except Exception as err:  # pylint: disable=broad-except
    # Shape errors surface deep inside the model; say which task shapes
    # (the sampled batch without its leading task axis) they came from.
    raise ValueError(
        f"the learner failed to adapt to and predict one task of "
        f"sample_tasks(key)'s batch of {n}, shaped {shapes} (a sampler that "
        f"returns one task instead of a batch with a leading task axis loses "
        f"an axis here). {type(err).__name__}: {err}") from err
  targets = task.query[1]
  value = jax.eval_shape(metric_fn, predictions, targets)
  what = (f"metric_fn(predictions {jax.tree.map(_short, predictions)}, "
          f"query targets {jax.tree.map(_short, targets)})")
  if not isinstance(value, jax.ShapeDtypeStruct):
    raise ValueError(f"{what} must return one scalar per task, got "
                     f"{jax.tree.map(_short, value)}.")
  if value.shape != ():
    raise ValueError(
        f"{what} must return one scalar per task, got shape {value.shape} "
        f"({_short(value)}); reduce it over the query set, e.g. with "
        f"jnp.mean.")
  if not (jnp.issubdtype(value.dtype, jnp.floating) or
          jnp.issubdtype(value.dtype, jnp.integer) or value.dtype == bool):
    raise ValueError(f"{what} must return a real number, got dtype "
                     f"{value.dtype}.")
  return n


def evaluate(learner: MetaLearner, meta_params: PyTree,
             sample_tasks: Union[TaskSampler, HostTasks],
             metric_fn: MetricFn, *, key: Optional[jax.Array] = None,
             num_tasks: int, task_chunk: Union[int, str, None] = "auto",
             adapt_steps: Optional[int] = None,
             attack: Optional[Callable] = None,
             progress: Optional[str] = None) -> np.ndarray:
  """Per-task metric over `num_tasks` freshly sampled tasks.

  Shapes are checked with `jax.eval_shape` before anything is compiled or
  run. Each batch is sampled and scored inside one compiled call, on the
  device.

  Args:
    learner: the algorithm; its `adapt` runs on each support set.
    meta_params: trained meta-parameters.
    sample_tasks: `sample_tasks(key) -> Task` batch (a leading task axis of
      at least one task on every leaf); batches are drawn from successive
      splits of `key` until `num_tasks` tasks are scored. Or a
      `metajax.host_tasks.HostTasks` pipeline, whose batches from step 0 on
      are scored in turn (each is put on the device while the one before
      is scored).
    metric_fn: `metric_fn(predictions, query_targets) -> scalar` of one task
      (bool, int or float).
    key: PRNG key; the same key gives the same tasks for every learner.
      Required with a sampler; a `HostTasks` pipeline takes none.
    num_tasks: how many tasks to score, an int >= 1.
    task_chunk: tasks scored at a time within a batch, as in `task_metrics`:
      "auto" (one at a time on the CPU, where the whole batch's activations
      can take gigabytes, and the whole batch on GPU and TPU), an int chunk
      size, or None / 0 for the whole batch vmapped. It changes memory and
      speed, not the values (beyond float summation order).
    adapt_steps: gradient steps of `learner.adapt` on each support set
      (e.g. more at test time than in training); None uses the learner's
      own number. Learners that adapt nothing by gradient take only None.
    attack: optional attack on each task's query inputs after adaptation,
      as in `task_metrics`: the scores are then robust accuracy (or loss).
      Each task's attack gets its own key, from the batch's key (a sampler)
      or from the batch's index (a `HostTasks` pipeline): a random start is
      the same for every learner scored with the same key.
    progress: a label to show a progress bar over the tasks under (an
      attacked evaluation of a thousand episodes takes minutes on a CPU);
      None shows none.

  Returns:
    float64 `[num_tasks]` array, one value per task; feed it to `mean_ci`.

  Raises:
    TypeError: `num_tasks` is not an int, or `sample_tasks` is not a
      callable returning a `Task`.
    ValueError: `num_tasks` < 1, a bad `task_chunk`, an ill-formed or empty
      task batch, a learner that cannot score one task of the batch, or a
      `metric_fn` that does not return one real scalar per task; the message
      names the argument and the shapes.
  """
  resolve_task_chunk(task_chunk)  # a bad value fails before any tracing
  num_tasks = _check_num_tasks(num_tasks)
  scores = task_metrics(learner, metric_fn, task_chunk=task_chunk,
                        adapt_steps=adapt_steps, attack=attack)
  if isinstance(sample_tasks, HostTasks):
    if key is not None:
      raise ValueError("evaluate: a HostTasks pipeline fixes its own "
                       "batches; pass key=None.")
    return _evaluate_fed(scores, learner, meta_params, sample_tasks,
                         metric_fn, num_tasks, adapt_steps, attack, progress)
  if key is None:
    raise ValueError("evaluate: a task sampler needs a PRNG key.")
  sample_tasks = tasks_lib.sampler_tree(sample_tasks)
  batch_size = _check_scoring(learner, meta_params, sample_tasks, metric_fn,
                              key, adapt_steps)
  # The attack's random starts come from the batch's key folded apart from
  # the sampler's draw, so the clean episodes stay those of `key`.
  attack_key = ((lambda k: jax.random.fold_in(k, 1)) if attack is not None
                else lambda k: None)
  score = jax.jit(lambda mp, k, sampler: scores(mp, sampler(k),
                                                attack_key(k)))
  values = []
  with _bar(num_tasks, progress) as bar:
    for _ in range(-(-num_tasks // batch_size)):
      key, sub = jax.random.split(key)
      values.append(score(meta_params, sub, sample_tasks))
      _advance(bar, values[-1], batch_size)
  return np.concatenate(jax.device_get(values)).astype(
      np.float64)[:num_tasks]


def _bar(num_tasks: int, label: Optional[str]):
  """A tqdm bar over `num_tasks` tasks, or a disabled one."""
  return tqdm.tqdm(total=num_tasks, desc=label, unit="task",
                   disable=label is None, leave=False)


def _advance(bar, values, batch_size: int) -> None:
  """Moves `bar` on once a batch's `values` are computed (waiting for them
  only when the bar is shown, so that dispatch stays asynchronous)."""
  if not bar.disable:
    jax.block_until_ready(values)
    bar.update(min(batch_size, bar.total - bar.n))


def _evaluate_fed(scores, learner, meta_params, host_tasks, metric_fn,
                  num_tasks, adapt_steps, attack, progress) -> np.ndarray:
  """`evaluate` over a `HostTasks` pipeline's batches, from step 0 on; an
  attack's random starts are drawn from each batch's index."""
  with Prefetcher(host_tasks, 0) as feed:
    example = feed.signature
    batch_size = _check_scoring(
        learner, meta_params,
        lambda _: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                               example),
        metric_fn, jax.random.PRNGKey(0), adapt_steps)
    score = jax.jit(scores)
    values = []
    with _bar(num_tasks, progress) as bar:
      for i in range(-(-num_tasks // batch_size)):
        key = (None if attack is None
               else jax.random.fold_in(jax.random.PRNGKey(0), i))
        values.append(score(meta_params, next(feed), key))
        _advance(bar, values[-1], batch_size)
  return np.concatenate(jax.device_get(values)).astype(
      np.float64)[:num_tasks]
