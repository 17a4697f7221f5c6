"""Joint training: the non-episodic baseline, optionally fine-tuned at test.

One set of parameters is trained on the pooled support and query data of every
task, with no adaptation in the objective ("pretrained" in the MAML paper's
sinusoid experiment). At test time `adapt` fine-tunes those parameters on the
support set with plain gradient descent, so the baseline is judged with the
same adaptation budget as MAML.
"""

from typing import Callable

from metajax import inner
from metajax import tasks as tasks_lib
from metajax.algorithms.base import MetaLearner
from metajax.algorithms.base import batch_mean_grad
from metajax.algorithms.base import supervised_loss


def joint(init_fn: Callable, apply_fn: Callable, loss: Callable, *,
          steps: int = 0, lr: float = 0.01) -> MetaLearner:
  """Joint training with `steps` steps of fine-tuning at `lr` in `adapt`.

  Arguments as in `metajax.algorithms.maml`; meta-parameters are
  `{"params": params}`.
  """
  inner.check_steps(steps)
  loss_fn = supervised_loss(apply_fn, loss)

  def task_loss(meta_params, task):
    return loss_fn(meta_params["params"], tasks_lib.merge_sets(task))

  def adapt(meta_params, support):
    return inner.adapt(loss_fn, meta_params["params"], support, steps=steps,
                       lr=lr)

  def predict(meta_params, adapted_params, x):
    del meta_params
    return apply_fn(adapted_params, x)

  return MetaLearner(lambda key: {"params": init_fn(key)},
                     batch_mean_grad(task_loss), adapt, predict)
