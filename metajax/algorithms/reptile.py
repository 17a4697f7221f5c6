"""Reptile (Nichol et al., 2018): step towards the task-adapted weights.

For each task of a batch, Reptile runs `steps` steps of gradient descent from
the meta-parameters `theta` on all of the task's labelled data (support and
query pooled), reaching `phi_i`. Its update is `theta + epsilon * (mean_i phi_i
- theta)`. `meta_grad` returns the pseudo-gradient `theta - mean_i phi_i`, so
the training loop's optax optimiser applies it like any gradient: SGD with
learning rate `epsilon` is the paper's update, Adam its adaptive variant.

The inner loop is `metajax.inner.adapt`: by default full-batch gradient
descent at a fixed rate, the same loop as MAML's. The paper's released
Omniglot and mini-ImageNet runs differ in two ways, both options here:
`inner_optimizer` (they use Adam) and `minibatches`, under which each inner
step sees only the next of `steps` equal slices of the task's data, shuffled
afresh for every task (their `--inner-batch` times `--inner-iters` equals the
training task's size, so the inner loop is one pass over it). Nothing is
differentiated through the inner loop, so the cost of a meta-step is that of
`steps` ordinary training steps per task.

With one inner step, `theta - phi_i = lr * grad L_i(theta)`: the
pseudo-gradient is `lr` times the joint-training gradient. Only from two steps
on does Reptile differ from joint training (section 5 of the paper).
"""

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import optax

from metajax import inner
from metajax import tasks as tasks_lib
from metajax import types
from metajax.algorithms.base import MetaLearner
from metajax.algorithms.base import apply_adapted
from metajax.algorithms.base import supervised_loss


def reptile(init_fn: types.ModelInitFn, apply_fn: types.ApplyFn,
            loss: types.Loss, *, steps: int = 5,
            lr: Optional[float] = None,
            inner_optimizer: Optional[optax.GradientTransformation] = None,
            minibatches: bool = False,
            metrics: Optional[types.MetricsFn] = None,
            pool: Callable[[tasks_lib.Task], types.Examples] = (
                tasks_lib.merge_sets)) -> MetaLearner:
  """Reptile: gradient descent or an optax optimiser in the inner loop.

  Args:
    init_fn: `init_fn(key) -> params`, e.g. `lambda k: model.init(k, x)`.
    apply_fn: `apply_fn(params, x) -> predictions`, e.g. `model.apply`.
    loss: `loss(predictions, targets) -> scalar`, e.g. a cross-entropy of
      logits and int labels.
    steps: inner gradient steps per task during meta-training, and by default
      the fine-tuning steps of `adapt` on a support set (the paper uses more
      at test time: pass `adapt(..., steps=...)`).
    lr: gradient descent's inner rate, in meta-training and in `adapt`
      (None: 0.01); give it or `inner_optimizer`, not both.
    inner_optimizer: an optax `GradientTransformation` for the inner loop
      (e.g. `optax.adam(1e-3, b1=0.0)`, the released runs' Adam without
      momentum), its state fresh for every task and every `adapt`. The
      released code instead carries Adam's moments from task to task; a
      fresh state keeps each task's adaptation a function of that task
      alone, as it is at test time.
    minibatches: in meta-training, inner step t takes its gradient on the
      t-th of `steps` equal slices of the task's pooled data, after a
      shuffle drawn from `meta_grad`'s key for each task (the paper's
      minibatch inner loop, one pass over the data); `steps` must divide
      the pooled set's size. `adapt` still uses the whole support set at
      every step, as the paper does at test time.
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
  if minibatches and steps < 1:
    raise ValueError("minibatches splits the data among the inner steps, so "
                     f"it needs steps >= 1; got steps={steps}.")
  lr = inner.inner_rate(lr, inner_optimizer)
  step_options = dict(lr=lr, optimizer=inner_optimizer)
  loss_fn = supervised_loss(apply_fn, loss)

  def init(key):
    return {"params": init_fn(key)}

  default_steps = steps  # `adapt`'s own option shadows the name.

  def adapt(meta_params, support, *, steps=None):
    return inner.adapt(
        loss_fn, meta_params["params"], support,
        steps=default_steps if steps is None else inner.check_steps(steps),
        **step_options)

  def shuffled(data, key):
    order = jax.random.permutation(key, jax.tree.leaves(data)[0].shape[0])
    return jax.tree.map(lambda x: x[order], data)

  def meta_grad(meta_params, tasks, key):
    params = meta_params["params"]
    if minibatches:
      if key is None:
        raise ValueError("reptile with minibatches shuffles each task's data "
                         "by meta_grad's key; got key=None.")
      keys = jax.random.split(key, tasks_lib.num_tasks(tasks))
    else:
      keys = None  # Nothing is random: the whole task is every step's batch.

    def one_task(task, task_key):
      data = pool(task)
      batch = shuffled(data, task_key) if minibatches else data
      adapted = inner.adapt(loss_fn, params, batch, steps=steps,
                            online=minibatches, **step_options)
      values = {"loss": loss_fn(params, data),
                "adapted_loss": loss_fn(adapted, data)}
      if metrics is not None:
        x, y = task.query
        values.update(metrics(apply_fn(adapt(meta_params, task.support), x),
                              y))
      return adapted, values

    # vmap keeps each task's batch statistics to itself, as in MAML.
    adapted, values = jax.vmap(one_task)(tasks, keys)
    pseudo_grad = jax.tree.map(lambda p, a: p - jnp.mean(a, axis=0), params,
                               adapted)
    return {"params": pseudo_grad}, jax.tree.map(jnp.mean, values)

  return MetaLearner(init, meta_grad, adapt, apply_adapted(apply_fn))
