"""The algorithm-neutral interface every meta-learner implements.

A `MetaLearner` is a NamedTuple of pure functions, in the way an optax
`GradientTransformation` is `(init, update)`. The training loop (`training.py`)
and evaluation (`evaluation.py`) use only these four functions, so MAML, its
variants, joint pre-training and later metric-based or amortised learners all
run through the same loop.
"""

from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple, Union

import jax
import jax.numpy as jnp

from metajax import tasks as tasks_lib

PyTree = Any
MetaParams = PyTree
TaskState = PyTree
Metrics = Dict[str, jax.Array]


class MetaLearner(NamedTuple):
  """A meta-learning algorithm as four pure functions.

  Attributes:
    init: `init(key) -> meta_params`, the PyTree the outer optimiser trains.
    meta_grad: `meta_grad(meta_params, tasks, key) -> (grads, metrics)`: the
      outer (pseudo-)gradient for a *batch* of tasks (leading task axis), with
      the structure of `meta_params`, and a dict of scalar metrics that has at
      least "loss". Reptile-like methods return a pseudo-gradient here.
    adapt: `adapt(meta_params, support) -> task_state` for *one* task: adapted
      parameters, prototypes, a latent code, ...
    predict: `predict(meta_params, task_state, inputs) -> outputs` for one task;
      `inputs` are the query inputs (the first element of a `(x, y)` set).
  """
  init: Callable[[jax.Array], MetaParams]
  meta_grad: Callable[[MetaParams, tasks_lib.Task, jax.Array],
                      Tuple[MetaParams, Metrics]]
  adapt: Callable[[MetaParams, PyTree], TaskState]
  predict: Callable[[MetaParams, TaskState, PyTree], jax.Array]


def supervised_loss(apply_fn: Callable, loss: Callable) -> Callable:
  """`loss_fn(params, (x, y)) = loss(apply_fn(params, x), y)`."""
  def loss_fn(params, batch):
    x, y = batch
    return loss(apply_fn(params, x), y)
  return loss_fn


def resolve_task_chunk(chunk: Union[int, str, None]) -> Optional[int]:
  """The chunk size `map_tasks` uses for `chunk`: "auto" is 1 on the CPU.

  On a CPU, one task's activations fit in the caches while a whole batch's
  do not: with conv4, a meta-step that maps over tasks one at a time runs
  1.6-2.2x faster than one vmapped over 32 tasks (benchmarks/meta_step.py).
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
  """
  if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
    raise ValueError(f"chunk must be an int >= 1, got {chunk!r}.")

  def meta_grad(meta_params, tasks, key):
    n = tasks_lib.num_tasks(tasks)
    if n % chunk:
      raise ValueError(
          f"a meta-batch of {n} tasks cannot be cut into chunks of {chunk}; "
          f"use a chunk size that divides the meta-batch size.")
    chunks = jax.tree.map(
        lambda x: x.reshape((n // chunk, chunk) + x.shape[1:]), tasks)
    keys = jax.random.split(key, n // chunk)
    per_chunk = jax.lax.map(
        lambda args: learner.meta_grad(meta_params, *args), (chunks, keys))
    return jax.tree.map(lambda x: jnp.mean(x, axis=0), per_chunk)

  return learner._replace(meta_grad=meta_grad)


def batch_mean_grad(task_loss: Callable, has_aux: bool = False) -> Callable:
  """Builds `meta_grad` from a per-task loss: grad of its mean over the batch.

  The batch is mapped with `jax.vmap`, so one task's computation never sees
  another's data (batch norm statistics included).

  Args:
    task_loss: `task_loss(meta_params, task) -> scalar`, or with `has_aux`
      `-> (scalar, dict of scalar metrics)`; the metrics are averaged over the
      batch and reported beside "loss".
    has_aux: whether `task_loss` returns metrics.
  """
  def meta_grad(meta_params, tasks, key):
    del key
    def mean_loss(mp):
      out = jax.vmap(task_loss, in_axes=(None, 0))(mp, tasks)
      losses, aux = out if has_aux else (out, {})
      return jnp.mean(losses), jax.tree.map(jnp.mean, aux)
    (loss, aux), grads = jax.value_and_grad(mean_loss, has_aux=True)(
        meta_params)
    return grads, dict(aux, loss=loss)
  return meta_grad


def mse(predictions: jax.Array, targets: jax.Array) -> jax.Array:
  """Mean squared error over all elements; scalar."""
  return jnp.mean(jnp.square(predictions - targets))


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy of `[n, classes]` logits and int `[n]` labels."""
  log_p = jax.nn.log_softmax(logits)
  return -jnp.mean(jnp.take_along_axis(log_p, labels[:, None], axis=-1))


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Fraction of `[n, classes]` logits whose argmax equals int `[n]` labels."""
  return jnp.mean(jnp.argmax(logits, axis=-1) == labels)


def classification_metrics(logits: jax.Array, labels: jax.Array):
  """`{"accuracy": ...}`, the training metric of classification learners."""
  return {"accuracy": accuracy(logits, labels)}
