"""Implicit differentiation of an inner solver's solution.

When an inner problem is solved to (near) optimality, the gradient of its
solution with respect to the outer variables follows from the optimality
condition alone, by the implicit function theorem, without differentiating
through the solver's steps: memory does not grow with them, and the solver
may be anything (a `lax.scan` of optax steps, a `while_loop`, a closed form).

If `x*(theta)` solves `F(x, theta) = 0` (for a minimiser, `F` is the
gradient of the objective in `x`), then `dx*/dtheta = -(dF/dx)^{-1}
dF/dtheta`, and the vector-Jacobian product the outer `jax.grad` needs is

    v -> -(dF/dtheta)^T u,   where (dF/dx)^T u = v,

one linear solve with `(dF/dx)^T`, which is only ever applied to vectors (a
Hessian-vector product for a minimiser). iMAML (Rajeswaran et al., 2019) is
this with `F(phi, theta) = grad L(phi) + lam (phi - theta)`, whose Jacobian
`H + lam I` is symmetric positive definite when `L` is convex near `phi`, so
conjugate gradients solve it; `algorithms.imaml` builds that.

The result is exact at an exact solution; at an approximate one it is the
gradient the optimality condition implies there, which is why the inner
problem should be solved well and the linear solve run to a small residual.
"""

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from metajax.types import PyTree

LinearSolve = Callable[[Callable[[PyTree], PyTree], PyTree], PyTree]


def conjugate_gradient(maxiter: int = 20, tol: float = 1e-10,
                       ridge: float = 0.0) -> LinearSolve:
  """`linear_solve(matvec, b) -> x` by conjugate gradients.

  For a symmetric positive definite `matvec` (a minimiser's Hessian, plus
  iMAML's `lam I`). A thin wrapper over `jax.scipy.sparse.linalg.cg`, which
  works on PyTrees.

  Args:
    maxiter: the most iterations (each one `matvec`).
    tol: relative residual at which it stops, `|b - A x| <= tol |b|`.
    ridge: solve `(A + ridge I) x = b` instead. CG needs a positive definite
      matrix, which the Hessian of a non-convex loss (a neural network's,
      away from a minimum) is not; a ridge larger than the magnitude of its
      most negative eigenvalue makes it so, and biases `x` towards
      `b / ridge`.
  """
  _check_ridge(ridge)
  def solve(matvec, b):
    x, _ = jax.scipy.sparse.linalg.cg(_ridged(matvec, ridge), b,
                                      maxiter=maxiter, tol=tol)
    return x
  return solve


def gmres(maxiter: int = 20, tol: float = 1e-10, restart: int = 20,
          ridge: float = 0.0) -> LinearSolve:
  """`linear_solve(matvec, b) -> x` by GMRES, for a non-symmetric Jacobian
  (an optimality condition that is not a gradient); a thin wrapper over
  `jax.scipy.sparse.linalg.gmres`. `ridge` solves `(A + ridge I) x = b`, as
  in `conjugate_gradient`."""
  _check_ridge(ridge)
  def solve(matvec, b):
    x, _ = jax.scipy.sparse.linalg.gmres(_ridged(matvec, ridge), b,
                                         maxiter=maxiter, tol=tol,
                                         restart=restart)
    return x
  return solve


def _check_ridge(ridge: float) -> None:
  if not (np.isfinite(ridge) and ridge >= 0):
    raise ValueError(f"ridge must be finite and >= 0, got {ridge}.")


def _ridged(matvec, ridge: float):
  if not ridge:
    return matvec
  return lambda v: jax.tree.map(lambda a, b: a + ridge * b, matvec(v), v)


def implicit_solution(solver: Callable[..., PyTree],
                      optimality_fn: Callable[..., PyTree],
                      linear_solve: Optional[LinearSolve] = None,
                      differentiate_args: bool = True
                      ) -> Callable[..., PyTree]:
  """`solver` whose gradient comes from `optimality_fn`, not its steps.

  Args:
    solver: `solver(theta, *args) -> x`, a solution of `optimality_fn(x,
      theta, *args) = 0`. Its operations are not differentiated.
    optimality_fn: `optimality_fn(x, theta, *args) -> residual`, a PyTree
      with the structure of `x` that is zero at a solution, e.g. the
      gradient in `x` of the inner objective.
    linear_solve: `linear_solve(matvec, b) -> u` solving `A u = b` for the
      linear map `A = matvec`, here `(d optimality_fn / dx)^T`; default
      `conjugate_gradient()`, right when the residual is a gradient (its
      Jacobian, a Hessian, is symmetric) and the solution a minimum. Pass
      `gmres()` otherwise.
    differentiate_args: also differentiate with respect to `args`; False
      treats them as data (a task's examples), whose gradient would cost a
      backward pass to the inputs that nobody reads.

  Returns:
    `solution(theta, *args) -> x`, equal to `solver`'s result, which
    `jax.grad` / `jax.vjp` differentiate implicitly with respect to `theta`
    (and every array in `args`, with `differentiate_args`). `theta` and
    `args` must be arrays or PyTrees of them: pass data in `args` rather
    than closing over it, which `jax.custom_vjp` does not allow for traced
    values.
  """
  linear_solve = linear_solve or conjugate_gradient()

  @jax.custom_vjp
  def solution(theta, *args):
    return solver(theta, *args)

  def forward(theta, *args):
    x = solver(theta, *args)
    return x, (x, theta, args)

  def backward(residuals, v):
    x, theta, args = residuals
    _, vjp_x = jax.vjp(lambda y: optimality_fn(y, theta, *args), x)
    u = linear_solve(lambda w: vjp_x(w)[0], v)
    minus_u = jax.tree.map(jnp.negative, u)
    if differentiate_args:
      _, vjp_outer = jax.vjp(
          lambda t, *a: optimality_fn(x, t, *a), theta, *args)
      return vjp_outer(minus_u)
    _, vjp_theta = jax.vjp(lambda t: optimality_fn(x, t, *args), theta)
    return (*vjp_theta(minus_u), *(None for _ in args))

  solution.defvjp(forward, backward)
  return solution
