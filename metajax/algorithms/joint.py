"""Joint training: the non-episodic baseline, optionally fine-tuned at test.

One set of parameters is trained on the pooled support and query data of every
task, with no adaptation in the objective ("pretrained" in the MAML paper's
sinusoid experiment). At test time `adapt` fine-tunes those parameters on the
support set with plain gradient descent, so the baseline is judged with the
same adaptation budget as MAML.
"""

from typing import Callable, Union

from metajax import inner
from metajax import tasks as tasks_lib
from metajax import types
from metajax.algorithms.base import MetaLearner
from metajax.algorithms.base import apply_adapted
from metajax.algorithms.base import batch_mean_grad
from metajax.algorithms.base import supervised_loss


def joint(init_fn: types.ModelInitFn, apply_fn: types.ApplyFn,
          loss: types.Loss, *, steps: int = 0, lr: float = 0.01,
          adapt_mask: Union[None, Callable, types.PyTree] = None,
          pool: Callable[[tasks_lib.Task], types.Examples] = (
              tasks_lib.merge_sets)) -> MetaLearner:
  """Joint training with `steps` steps of fine-tuning at `lr` in `adapt`.

  Arguments as in `metajax.algorithms.maml` (`adapt_mask`: None, a PyTree of
  bools like the params, or a function of the params giving one; `init`
  checks it against the params); meta-parameters are `{"params": params}`.
  `adapt(meta_params, support, *, steps=None)` fine-tunes for `steps` steps
  (a Python int; None: the builder's `steps`). `pool(task) -> set` makes one
  training set of a task's support and query: concatenation by default;
  `metajax.data.students.sequences.pool_sets` for sequences.
  """
  inner.check_steps(steps)
  inner.check_scalar_lr(lr)
  if adapt_mask is not None and not callable(adapt_mask):
    adapt_mask = inner.check_mask(adapt_mask, name="adapt_mask")
  loss_fn = supervised_loss(apply_fn, loss)

  def init(key):
    params = init_fn(key)
    inner.resolve_mask(adapt_mask, params)  # Mismatches show here, not later.
    return {"params": params}

  def task_loss(meta_params, task):
    return loss_fn(meta_params["params"], pool(task))

  default_steps = steps  # `adapt`'s own option shadows the name.

  def adapt(meta_params, support, *, steps=None):
    params = meta_params["params"]
    return inner.adapt(
        loss_fn, params, support,
        steps=default_steps if steps is None else inner.check_steps(steps),
        lr=lr, mask=inner.resolve_mask(adapt_mask, params))

  return MetaLearner(init, batch_mean_grad(task_loss), adapt,
                     apply_adapted(apply_fn))
