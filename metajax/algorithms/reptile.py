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

The released code also keeps its inner Adam's moments from one task to the
next, and fine-tunes at test from the moments training left. With
`carry_inner_state`, the inner optimiser's state is a meta-parameter of its
own, "inner_state". By default every task of a batch starts from it, and it
is replaced by the mean of the tasks' final states: the tasks stay
independent, so they can be vmapped, chunked or sharded. With
`sequential_tasks`, the batch's tasks run one after another and each starts
from the state the one before it left, as in the released loop; the state
then moves on to the last task's. Either way it is not trained by gradient:
`carry_state(optimizer)` is the outer optimiser that trains "params" with
`optimizer` and sets "inner_state" to the new state.
"""

import functools
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
            carry_inner_state: bool = False,
            sequential_tasks: bool = False,
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
      momentum), its state fresh for every task and every `adapt` unless
      `carry_inner_state`. A fresh state keeps each task's adaptation a
      function of that task alone.
    minibatches: in meta-training, inner step t takes its gradient on the
      t-th of `steps` equal slices of the task's pooled data, after a
      shuffle drawn from `meta_grad`'s key for each task (the paper's
      minibatch inner loop, one pass over the data); `steps` must divide
      the pooled set's size. `adapt` still uses the whole support set at
      every step, as the paper does at test time.
    carry_inner_state: keep `inner_optimizer`'s state in the
      meta-parameters ("inner_state", `inner_optimizer.init` of the model's
      parameters at first): training tasks and `adapt` start from it, and
      `meta_grad` returns "inner_state" minus the mean of the batch's final
      states in its place, for `carry_state` to apply. Needs
      `inner_optimizer`.
    sequential_tasks: with `carry_inner_state`, run the batch's inner loops
      one after another (a `lax.scan`), each from the state the previous
      task's left, and return "inner_state" minus the last task's final
      state: the released code's order. The state's step count then
      advances by `steps` times the batch size per meta-step. Its
      meta-gradient is not a mean over independent tasks: the learner's
      `tasks_independent` is False, so `map_tasks` refuses it and
      `train(task_chunk="auto")` keeps the batch whole.
    metrics: optional `metrics(predictions, targets) -> dict of scalars`
      (e.g. `classification_metrics`), reported by `meta_grad` for the query
      set after `adapt` on the support set, as evaluation scores a task. This
      costs one more inner loop per task, run only when `metrics` is given.
    pool: `pool(task) -> set`, the data of the training inner loop: support
      and query concatenated by default;
      `metajax.data.students.sequences.pool_sets` for sequences.

  Returns:
    A `MetaLearner` whose meta-parameters are `{"params": params}` (and
    "inner_state" with `carry_inner_state`) and whose task state is the
    fine-tuned parameters; `adapt(meta_params, support, *,
    steps=None)` takes `steps` steps (a Python int; None: the builder's
    `steps`). `meta_grad`'s metrics are "loss", the mean loss of the
    meta-parameters on each task's pooled data, "adapted_loss", the same
    after the inner loop, and those of `metrics`.
  """
  inner.check_steps(steps)
  if minibatches and steps < 1:
    raise ValueError("minibatches splits the data among the inner steps, so "
                     f"it needs steps >= 1; got steps={steps}.")
  if carry_inner_state and inner_optimizer is None:
    raise ValueError("carry_inner_state carries the inner optimizer's state "
                     "from task to task; gradient descent (lr=...) has none: "
                     "give inner_optimizer=....")
  if sequential_tasks and not carry_inner_state:
    raise ValueError("sequential_tasks passes the inner optimizer's state "
                     "from task to task; it needs carry_inner_state=True.")
  lr = inner.inner_rate(lr, inner_optimizer)
  step_options = dict(lr=lr, optimizer=inner_optimizer)
  loss_fn = supervised_loss(apply_fn, loss)

  def init(key):
    params = init_fn(key)
    if carry_inner_state:
      return {"params": params, "inner_state": inner_optimizer.init(params)}
    return {"params": params}

  def run_inner(meta_params, batch, **options):
    """`(adapted, final inner state or None)` from the meta-parameters."""
    out = inner.adapt(loss_fn, meta_params["params"], batch,
                      optimizer_state=meta_params.get("inner_state"),
                      **options, **step_options)
    return out if carry_inner_state else (out, None)

  default_steps = steps  # `adapt`'s own option shadows the name.

  def adapt(meta_params, support, *, steps=None):
    return run_inner(
        meta_params, support,
        steps=default_steps if steps is None else inner.check_steps(steps))[0]

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

    def one_task(meta_params, task, task_key):
      data = pool(task)
      batch = shuffled(data, task_key) if minibatches else data
      adapted, final_state = run_inner(meta_params, batch, steps=steps,
                                       online=minibatches)
      values = {"loss": loss_fn(params, data),
                "adapted_loss": loss_fn(adapted, data)}
      if metrics is not None:
        x, y = task.query
        values.update(metrics(apply_fn(adapt(meta_params, task.support), x),
                              y))
      return (adapted, final_state), values

    # vmap and scan keep each task's batch statistics to itself, as in MAML.
    if sequential_tasks:
      def next_task(state, task_and_key):
        (adapted, final_state), values = one_task(
            dict(meta_params, inner_state=state), *task_and_key)
        return final_state, (adapted, values)
      last_state, (adapted, values) = jax.lax.scan(
          next_task, meta_params["inner_state"], (tasks, keys))
      final_states = jax.tree.map(lambda x: x[None], last_state)
    else:
      (adapted, final_states), values = jax.vmap(
          functools.partial(one_task, meta_params))(tasks, keys)
    grads = {"params": _minus_mean(params, adapted)}
    if carry_inner_state:
      grads["inner_state"] = _minus_mean(meta_params["inner_state"],
                                         final_states)
    return grads, jax.tree.map(jnp.mean, values)

  return MetaLearner(init, meta_grad, adapt, apply_adapted(apply_fn),
                     tasks_independent=not sequential_tasks)


def _minus_mean(start, finals):
  """`start - mean(finals over their leading task axis)`, in `start`'s
  dtypes: a step count that every task advanced alike stays an integer."""
  return jax.tree.map(
      lambda s, f: s - jnp.mean(f, axis=0).astype(jnp.result_type(s)),
      start, finals)


def carry_state(optimizer: optax.GradientTransformation
                ) -> optax.GradientTransformation:
  """The outer optimiser of a `reptile(..., carry_inner_state=True)` learner.

  `optimizer` trains "params" on their pseudo-gradient; "inner_state",
  whose pseudo-gradient is its value minus the batch's mean final state,
  is set to that mean (an update of minus the pseudo-gradient), whatever
  `optimizer`'s rate.

  Args:
    optimizer: the optax optimiser of the model's parameters, e.g.
      `optax.sgd(1.0)`, the paper's meta-step.

  Returns:
    An optax `GradientTransformation` of the whole meta-parameters.
  """
  def labels(meta_params):
    return {name: jax.tree.map(
        lambda _: "carried" if name == "inner_state" else "trained", value)
            for name, value in meta_params.items()}
  return optax.multi_transform(
      {"trained": optimizer, "carried": optax.scale(-1.0)}, labels)
