"""Joint training: the non-episodic baseline, optionally fine-tuned at test.

One set of parameters is trained on the pooled support and query data of every
task, with no adaptation in the objective ("pretrained" in the MAML paper's
sinusoid experiment). At test time `adapt` fine-tunes those parameters on the
support set with plain gradient descent, so the baseline is judged with the
same adaptation budget as MAML.
"""

from typing import Any, Callable, Union

from metajax import inner
from metajax import tasks as tasks_lib
from metajax.algorithms.base import MetaLearner
from metajax.algorithms.base import batch_mean_grad
from metajax.algorithms.base import supervised_loss


def joint(init_fn: Callable, apply_fn: Callable, loss: Callable, *,
          steps: int = 0, lr: float = 0.01,
          adapt_mask: Union[None, Callable, Any] = None,
          pool: Callable = tasks_lib.merge_sets) -> MetaLearner:
  """Joint training with `steps` steps of fine-tuning at `lr` in `adapt`.

  Arguments as in `metajax.algorithms.maml` (`adapt_mask`: None, a PyTree of
  bools like the params, or a function of the params giving one; `init`
  checks it against the params); meta-parameters are `{"params": params}`.
  `pool(task) -> set` makes one training set of a task's support and query:
  concatenation by default; `metajax.data.students.pool_sets` for sequences.
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

  def adapt(meta_params, support):
    params = meta_params["params"]
    return inner.adapt(loss_fn, params, support, steps=steps, lr=lr,
                       mask=inner.resolve_mask(adapt_mask, params))

  def predict(meta_params, adapted_params, x):
    del meta_params
    return apply_fn(adapted_params, x)

  return MetaLearner(init, batch_mean_grad(task_loss), adapt, predict)
