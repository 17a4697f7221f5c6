"""Adversarial attacks on few-shot learners, and adversarial querying.

A few-shot learner is attacked where it is used: it adapts to a clean
support set, and the attacker then perturbs the query inputs to raise the
loss of the *adapted* learner (white box: the attacker knows the
meta-parameters and the adapted state). The attack is projected gradient
descent on the loss's sign in an L-infinity ball (PGD; Madry et al., 2018).

Adversarial querying (Goldblum, Fowl & Goldstein, NeurIPS 2020) meta-trains
on such attacked queries: `adversarial_querying(learner, ...)` is `learner`
with every task's query inputs replaced by a PGD attack on the current
meta-parameters before its own `meta_grad` runs, so it wraps any
`MetaLearner` (ProtoNets, MAML and the rest) without touching it.

Inputs are attacked in their own units: metajax's image models take pixels
on the 0-255 scale (uint8 episodes, divided by 255 inside the model), so an
ε of 8/255 in the papers' [0, 1] scale is `eps=8.0` here, with
`low=0.0, high=255.0`.
"""

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from metajax import tasks as tasks_lib
from metajax.algorithms.base import MetaLearner
from metajax.types import Loss


class PGD(NamedTuple):
  """An L-infinity projected-gradient attack.

  Attributes:
    eps: the ball's radius around each clean input, in the input's units.
    steps: gradient-sign steps (0: no attack).
    step_size: how far each step moves every input element.
    low: the smallest valid input value (the attack clips to it); -inf for
      none.
    high: the largest valid input value; inf for none.
    random_start: start from a uniform draw in the ball rather than from
      the clean input, when the caller gives a key (meta-training and
      `metajax.evaluate` do, one key a task).
  """
  eps: float
  steps: int
  step_size: float
  low: float = 0.0
  high: float = 255.0
  random_start: bool = True


def check_pgd(pgd: PGD) -> PGD:
  """Raises a ValueError naming the field of `pgd` that cannot work."""
  for name in ("eps", "step_size"):
    value = getattr(pgd, name)
    if not (math.isfinite(value) and value >= 0):
      raise ValueError(f"PGD.{name} must be a finite number >= 0, got "
                       f"{value!r}.")
  if isinstance(pgd.steps, bool) or not isinstance(pgd.steps, int) or (
      pgd.steps < 0):
    raise ValueError(f"PGD.steps must be an integer >= 0, got "
                     f"{pgd.steps!r}.")
  if not pgd.low < pgd.high:
    raise ValueError(f"PGD.low ({pgd.low}) must be below PGD.high "
                     f"({pgd.high}).")
  return pgd


def attack(predict: Callable, loss: Loss, pgd: PGD) -> Callable:
  """A PGD attack on one task's query inputs, given its adapted state.

  Args:
    predict: the learner's `predict(meta_params, task_state, inputs)`.
    loss: `loss(predictions, targets) -> scalar` the attack maximises
      (the learner's training loss, e.g. `algorithms.cross_entropy`).
    pgd: the attack's settings.

  Returns:
    `fn(meta_params, task_state, x, y, key=None) -> x_adv`: `x` `[n, ...]`
    (any real or integer dtype) and its targets `y` in, float32 inputs of
    `x`'s shape out, within `pgd.eps` of `x` (elementwise) and within
    `[pgd.low, pgd.high]`. Each step moves `x_adv` by `step_size` along the
    sign of the loss's gradient with respect to the inputs, through
    `predict` of the adapted state, and projects back onto the ball.
    `x_adv` carries no gradient (`stop_gradient`): a meta-gradient treats
    it as data. With `key` and `pgd.random_start` the attack starts from a
    uniform point of the ball.
  """
  check_pgd(pgd)

  def run(meta_params, task_state, x, y, key=None):
    clean = x.astype(jnp.float32)
    lo = jnp.maximum(clean - pgd.eps, pgd.low)
    hi = jnp.minimum(clean + pgd.eps, pgd.high)
    objective = lambda inputs: loss(predict(meta_params, task_state, inputs),
                                    y)
    start = clean
    if key is not None and pgd.random_start:
      start = jnp.clip(clean + jax.random.uniform(
          key, clean.shape, minval=-pgd.eps, maxval=pgd.eps), lo, hi)

    def step(_, inputs):
      grad = jax.grad(objective)(inputs)
      return jnp.clip(inputs + pgd.step_size * jnp.sign(grad), lo, hi)

    return jax.lax.stop_gradient(
        jax.lax.fori_loop(0, pgd.steps, step, start))

  return run


def attack_queries(learner: MetaLearner, loss: Loss, pgd: PGD) -> Callable:
  """`fn(meta_params, task, key=None) -> Task`: one task with its query
  inputs attacked (`attack`) after `learner` adapts to its support set as
  it does in training. Both sets' inputs come back float32, the support's
  values unchanged."""
  run = attack(learner.predict, loss, pgd)

  def attacked(meta_params, task, key=None):
    state = learner.adapt(meta_params, task.support)
    x, y = task.query
    x = run(meta_params, state, x, y, key)
    # The attacked queries are float32; learners that check that both sets
    # share a dtype (MAML) then see float32 support images of equal value.
    support_x, support_y = task.support
    return task._replace(support=(support_x.astype(x.dtype), support_y),
                         query=(x, y))

  return attacked


def adversarial_querying(learner: MetaLearner, loss: Loss,
                         pgd: PGD) -> MetaLearner:
  """`learner` meta-trained on PGD-attacked queries (Goldblum et al., 2020).

  Each task of a batch is attacked on the current meta-parameters
  (`attack_queries`, a random start from the step's key), and `learner`'s
  own `meta_grad` then runs on the attacked batch, so the meta-gradient
  is the learner's, of its loss on the worst queries PGD found; the
  attacked inputs enter it as data. The metrics, "loss" included, are
  those of the attacked queries. `init`, `adapt` and `predict` are
  unchanged: a robust learner is used like any other.

  Args:
    learner: any `MetaLearner` whose `predict` outputs `loss` scores.
    loss: `loss(predictions, targets) -> scalar`, the objective the attack
      raises (the learner's training loss).
    pgd: the attack's settings.
  """
  attacked = attack_queries(learner, loss, pgd)

  def meta_grad(meta_params, tasks, key):
    attack_key, key = jax.random.split(key)
    keys = jax.random.split(attack_key, tasks_lib.num_tasks(tasks))
    tasks = jax.vmap(attacked, in_axes=(None, 0, 0))(
        jax.lax.stop_gradient(meta_params), tasks, keys)
    return learner.meta_grad(meta_params, tasks, key)

  return learner._replace(meta_grad=meta_grad)
