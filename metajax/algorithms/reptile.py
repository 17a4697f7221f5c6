"""Reptile (Nichol et al., 2018): step towards the task-adapted weights.

For each task of a batch, Reptile runs `steps` steps of gradient descent from
the meta-parameters `theta` on all of the task's labelled data (support and
query pooled), reaching `phi_i`. Its update is `theta + epsilon * (mean_i phi_i
- theta)`. `meta_grad` returns the pseudo-gradient `theta - mean_i phi_i`, so
the training loop's optax optimiser applies it like any gradient: SGD with
learning rate `epsilon` is the paper's update, Adam its adaptive variant.

The inner loop is `metajax.inner.adapt`: full-batch gradient descent at a fixed
rate. The paper's inner loop runs Adam on minibatches; a few-shot task is
small enough that one batch holds it all, and plain SGD keeps the inner loop
the same as MAML's. Nothing is differentiated through the inner loop, so the
cost of a meta-step is that of `steps` ordinary training steps per task.

With one inner step, `theta - phi_i = lr * grad L_i(theta)`: the
pseudo-gradient is `lr` times the joint-training gradient. Only from two steps
on does Reptile differ from joint training (section 5 of the paper).
"""

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from metajax import inner
from metajax import tasks as tasks_lib
from metajax import types
from metajax.algorithms.base import MetaLearner
from metajax.algorithms.base import apply_adapted
from metajax.algorithms.base import supervised_loss


def reptile(init_fn: types.ModelInitFn, apply_fn: types.ApplyFn,
            loss: types.Loss, *, steps: int = 5, lr: float = 0.01,
            metrics: Optional[types.MetricsFn] = None,
            pool: Callable[[tasks_lib.Task], types.Examples] = (
                tasks_lib.merge_sets)) -> MetaLearner:
  """Reptile with a gradient-descent inner loop.

  Args:
    init_fn: `init_fn(key) -> params`, e.g. `lambda k: model.init(k, x)`.
    apply_fn: `apply_fn(params, x) -> predictions`, e.g. `model.apply`.
    loss: `loss(predictions, targets) -> scalar`, e.g. a cross-entropy of
      logits and int labels.
    steps: inner gradient steps per task during meta-training, and by default
      the fine-tuning steps of `adapt` on a support set (the paper uses more
      at test time: pass `adapt(..., steps=...)`).
    lr: inner learning rate, in meta-training and in `adapt`.
    metrics: optional `metrics(predictions, targets) -> dict of scalars`
      (e.g. `classification_metrics`), reported by `meta_grad` for the query
      set after `adapt` on the support set, as evaluation scores a task. This
      costs one more inner loop per task, run only when `metrics` is given.
    pool: `pool(task) -> set`, the data of the training inner loop: support
      and query concatenated by default;
      `metajax.data.students.sequences.pool_sets` for sequences.

  Returns:
    A `MetaLearner` whose meta-parameters are `{"params": params}` and whose
    task state is the fine-tuned parameters; `adapt(meta_params, support, *,
    steps=None)` takes `steps` steps (a Python int; None: the builder's
    `steps`). `meta_grad`'s metrics are "loss", the mean loss of the
    meta-parameters on each task's pooled data, "adapted_loss", the same
    after the inner loop, and those of `metrics`.
  """
  inner.check_steps(steps)
  inner.check_scalar_lr(lr)
  loss_fn = supervised_loss(apply_fn, loss)

  def init(key):
    return {"params": init_fn(key)}

  default_steps = steps  # `adapt`'s own option shadows the name.

  def adapt(meta_params, support, *, steps=None):
    return inner.adapt(
        loss_fn, meta_params["params"], support,
        steps=default_steps if steps is None else inner.check_steps(steps),
        lr=lr)

  def meta_grad(meta_params, tasks, key):
    del key
    params = meta_params["params"]

    def one_task(task):
      data = pool(task)
      adapted = inner.adapt(loss_fn, params, data, steps=steps, lr=lr)
      values = {"loss": loss_fn(params, data),
                "adapted_loss": loss_fn(adapted, data)}
      if metrics is not None:
        x, y = task.query
        values.update(metrics(apply_fn(adapt(meta_params, task.support), x),
                              y))
      return adapted, values

    # vmap keeps each task's batch statistics to itself, as in MAML.
    adapted, values = jax.vmap(one_task)(tasks)
    pseudo_grad = jax.tree.map(lambda p, a: p - jnp.mean(a, axis=0), params,
                               adapted)
    return {"params": pseudo_grad}, jax.tree.map(jnp.mean, values)

  return MetaLearner(init, meta_grad, adapt, apply_adapted(apply_fn))
