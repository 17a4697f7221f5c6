"""The algorithm-neutral interface every meta-learner implements.

A `MetaLearner` is a NamedTuple of pure functions, in the way an optax
`GradientTransformation` is `(init, update)`; `metajax.types` gives their
signatures. The training loop (`training.py`) and evaluation use only these
four functions, so MAML, its variants, joint pre-training and the
metric-based learners all run through the same loop.

Every learner here keeps its meta-parameters in a dict whose "params" entry
is the model's parameters (what `init_fn` returns, for Relation Networks
both networks'), beside entries of its own such as learned rates. Code
outside `metajax.algorithms` reads them only through `model_params` and
`wrappers.starting_from`.
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from metajax import types


class MetaLearner(NamedTuple):
  """A meta-learning algorithm as four pure functions.

  Attributes:
    init: `init(key) -> meta_params`, the PyTree the outer optimiser trains
      (see `model_params`).
    meta_grad: `meta_grad(meta_params, tasks, key) -> (grads, metrics)`: the
      outer (pseudo-)gradient for a *batch* of tasks (leading task axis), with
      the structure of `meta_params`, and a dict of scalar metrics that has at
      least "loss". Reptile-like methods return a pseudo-gradient here.
    adapt: `adapt(meta_params, support, *, steps=None) -> task_state` for
      *one* task: adapted parameters, or the support set itself for
      metric-based learners; `steps` overrides the learner's number of
      gradient steps.
    predict: `predict(meta_params, task_state, inputs) -> outputs` for one task;
      `inputs` are the query inputs (the first element of a `(x, y)` set).
    tasks_independent: whether `meta_grad` is a mean of terms that each
      depend on one task alone, so that a batch may be cut into chunks whose
      results are averaged (`map_tasks`). False where a task's term depends
      on the tasks before it in the batch (Reptile's `sequential_tasks`).
  """
  init: types.InitFn
  meta_grad: types.MetaGradFn
  adapt: types.AdaptFn
  predict: types.PredictFn
  tasks_independent: bool = True


def model_params(meta_params: types.MetaParams) -> types.Params:
  """The model's parameters within a learner's meta-parameters.

  What the model's `apply_fn` takes, e.g. to predict without adapting; a
  gradient learner's `adapt(meta_params, support, steps=0)` returns the same.
  """
  return meta_params["params"]


def refuse_steps(name: str, how: str, steps) -> None:
  """Raises a ValueError unless `steps` is None.

  For learners that adapt by a forward pass rather than by gradient steps,
  so that a caller's `steps` is never silently ignored.

  Args:
    name: the learner's name, for the error.
    how: what the learner's adapt does instead, for the error.
    steps: the caller's `steps`.
  """
  if steps is not None:
    raise ValueError(
        f"{name} adapts nothing by gradient: {how}, so adapt takes "
        f"steps=None only; got steps={steps!r}.")


def keep_support(name: str) -> types.AdaptFn:
  """The `adapt` of a learner whose task state is the support set itself.

  Args:
    name: the learner's name, for the error.

  Returns:
    `adapt(meta_params, support, *, steps=None) -> support`; any `steps` but
    None raises a ValueError, as no gradient step is taken to honour it.
  """
  def adapt(meta_params, support, *, steps=None):
    del meta_params
    refuse_steps(name, "its task state is the support set itself, embedded "
                 "with the queries in predict", steps)
    return support
  return adapt


def check_ways(ways: int) -> None:
  """Raises a ValueError unless `ways` is a positive Python int.

  The number of classes is the static width of a classifier's outputs.
  """
  if isinstance(ways, bool) or not isinstance(ways, int) or ways < 1:
    raise ValueError(
        f"ways must be a positive Python int (it is a static shape), got "
        f"{ways!r}.")


def supervised_loss(apply_fn: types.ApplyFn, loss: types.Loss) -> Callable[
    [types.Params, types.Examples], jax.Array]:
  """`loss_fn(params, (x, y)) = loss(apply_fn(params, x), y)`."""
  def loss_fn(params, batch):
    x, y = batch
    return loss(apply_fn(params, x), y)
  return loss_fn


def apply_adapted(apply_fn: types.ApplyFn) -> types.PredictFn:
  """The `predict` of a learner whose task state is the adapted parameters."""
  def predict(meta_params, adapted_params, inputs):
    del meta_params
    return apply_fn(adapted_params, inputs)
  return predict


def batch_mean_grad(task_loss: Callable, has_aux: bool = False,
                    keyed: bool = False) -> types.MetaGradFn:
  """Builds `meta_grad` from a per-task loss: grad of its mean over the batch.

  The batch is mapped with `jax.vmap`, so one task's computation never sees
  another's data (batch norm statistics included).

  Args:
    task_loss: `task_loss(meta_params, task) -> scalar`, or with `has_aux`
      `-> (scalar, dict of scalar metrics)`; the metrics are averaged over the
      batch and reported beside "loss". With `keyed`, `task_loss(meta_params,
      task, key)`.
    has_aux: whether `task_loss` returns metrics.
    keyed: give each task its own key, split from `meta_grad`'s (which must
      then be a key, not None).
  """
  def meta_grad(meta_params, tasks, key):
    def mean_loss(mp):
      if keyed:
        keys = jax.random.split(key, jax.tree.leaves(tasks)[0].shape[0])
        out = jax.vmap(task_loss, in_axes=(None, 0, 0))(mp, tasks, keys)
      else:
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


def classification_metrics(logits: jax.Array,
                           labels: jax.Array) -> types.Metrics:
  """`{"accuracy": ...}`, the training metric of classification learners."""
  return {"accuracy": accuracy(logits, labels)}
