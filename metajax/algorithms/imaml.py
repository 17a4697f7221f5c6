"""iMAML (Rajeswaran et al., 2019): MAML with implicit meta-gradients.

The inner problem adds a proximal term that keeps the adapted parameters
near the meta-parameters `theta`::

    phi*(theta) = argmin_phi  L_support(phi) + lam / 2 ||phi - theta||^2

and the meta-gradient of `L_query(phi*)` is `(I + H / lam)^{-1} g`, with `g`
the query gradient at `phi*` and `H` the support loss's Hessian there. It
depends only on where the inner loop ends, not on how it got there:
`metajax.implicit.implicit_solution` computes it by conjugate gradients on
Hessian-vector products, and nothing of the inner loop is kept for the
backward pass, so a meta-step's memory does not grow with the inner steps.

The inner solver is `metajax.inner.adapt` on the regularised loss, with
gradient descent at `lr` or any optax optimiser, started from `theta` (the
paper's iMAML-GD runs gradient descent for a fixed number of steps). The
meta-gradient is exact when the inner problem is solved exactly; with a
fixed number of steps it is the implicit gradient at the point reached.
"""

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metajax import implicit
from metajax import inner
from metajax import types
from metajax.algorithms.base import MetaLearner
from metajax.algorithms.base import apply_adapted
from metajax.algorithms.base import batch_mean_grad
from metajax.algorithms.base import supervised_loss


def proximal(loss_fn: inner.LossFn, reg: float) -> inner.LossFn:
  """`loss(phi, (batch, theta)) = loss_fn(phi, batch) + reg/2 ||phi-theta||^2`.
  """
  def regularised(phi, batch_and_theta):
    batch, theta = batch_and_theta
    squares = jax.tree.map(lambda p, t: jnp.sum(jnp.square(p - t)), phi,
                           theta)
    return loss_fn(phi, batch) + 0.5 * reg * sum(jax.tree.leaves(squares))
  return regularised


def imaml(init_fn: types.ModelInitFn, apply_fn: types.ApplyFn,
          loss: types.Loss, *, steps: int = 16, lr: Optional[float] = None,
          inner_optimizer: Optional[optax.GradientTransformation] = None,
          reg: float = 2.0, cg_steps: int = 5, cg_tol: float = 1e-10,
          damping: float = 0.0,
          metrics: Optional[types.MetricsFn] = None) -> MetaLearner:
  """Implicit MAML.

  Args:
    init_fn: `init_fn(key) -> params`, e.g. `lambda k: model.init(k, x)`.
    apply_fn: `apply_fn(params, x) -> predictions`, e.g. `model.apply`.
    loss: `loss(predictions, targets) -> scalar`, used in both loops.
    steps: inner steps on the regularised support loss, in `meta_grad` and
      by default in `adapt`. Memory does not grow with them.
    lr: the inner gradient descent's rate (default 0.01 when there is no
      `inner_optimizer`).
    inner_optimizer: an optax optimiser for the inner loop instead.
    reg: the proximal strength `lam` (the paper's lambda): larger keeps
      `phi` nearer `theta` and makes the linear system better conditioned.
    cg_steps: conjugate-gradient iterations of the meta-gradient's solve
      (the paper uses 5).
    cg_tol: relative residual at which the solve stops earlier.
    damping: solve `((1 + damping) I + H / lam) x = g` instead. The paper's
      system (damping 0) is positive definite only where the support loss
      is convex; a network's is not (Conv4 on Omniglot episodes: `I + H /
      lam` has eigenvalues near -2 at lam = 2, and CG diverges;
      `benchmarks/imaml_curvature.py`). Damping makes it definite once it
      exceeds that magnitude, and moves the meta-gradient towards the
      first-order `g / (1 + damping)`.
    metrics: optional `metrics(predictions, targets) -> dict of scalars` on
      the query set after adaptation, reported by `meta_grad`.

  Returns:
    A `MetaLearner` whose meta-parameters are `{"params": params}` and
    whose task state is the adapted parameters; `adapt(meta_params, support,
    *, steps=None)` solves the same regularised problem.
  """
  inner.check_steps(steps)
  lr = inner.inner_rate(lr, inner_optimizer)
  inner.check_scalar_lr(reg, "reg")
  if not reg > 0:
    raise ValueError(f"reg must be > 0 (the proximal term makes the inner "
                     f"problem well posed), got {reg}.")
  inner.check_steps(cg_steps)
  if not (np.isfinite(damping) and damping >= 0):
    raise ValueError(f"damping must be finite and >= 0, got {damping}.")
  loss_fn = supervised_loss(apply_fn, loss)
  regularised = proximal(loss_fn, reg)

  def solver(num_steps):
    def solve(theta, support):
      # The solver's operations are not differentiated (implicit_solution):
      # first_order drops second-order terms nobody would read.
      return inner.adapt(regularised, theta, (support, theta),
                         steps=num_steps, lr=lr, optimizer=inner_optimizer,
                         first_order=True)
    return solve

  def optimality(phi, theta, support):
    return jax.grad(regularised)(phi, (support, theta))

  # The optimality condition's Jacobian is H + lam I = lam (I + H / lam).
  linear_solve = implicit.conjugate_gradient(cg_steps, cg_tol,
                                             ridge=reg * damping)
  solution = implicit.implicit_solution(solver(steps), optimality,
                                        linear_solve,
                                        differentiate_args=False)

  def init(key):
    return {"params": init_fn(key)}

  def task_loss(meta_params, task):
    adapted = solution(meta_params["params"], task.support)
    query_loss = loss_fn(adapted, task.query)
    if metrics is None:
      return query_loss, {}
    x, y = task.query
    return query_loss, metrics(jax.lax.stop_gradient(apply_fn(adapted, x)), y)

  def adapt(meta_params, support, *, steps=None):
    num_steps = default_steps if steps is None else inner.check_steps(steps)
    return solver(num_steps)(meta_params["params"], support)

  default_steps = steps
  return MetaLearner(init, batch_mean_grad(task_loss, has_aux=True), adapt,
                     apply_adapted(apply_fn))
