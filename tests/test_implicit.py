"""Implicit differentiation of a solver's solution, against closed forms."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import metajax
from metajax import implicit


def _ridge(key, n=7, d=4):
  """`A [n, d]`, `b [n]` of a least-squares problem."""
  ka, kb = jax.random.split(key)
  return (jax.random.normal(ka, (n, d), jnp.float64),
          jax.random.normal(kb, (n,), jnp.float64))


def _proximal_ridge(lam):
  """x*(theta, b) = argmin 1/2 |A x - b|^2 + lam/2 |x - theta|^2, solved by
  gradient descent (not differentiated) and in closed form."""
  def objective_grad(x, theta, a, b):
    return a.T @ (a @ x - b) + lam * (x - theta)

  def solver(theta, a, b):
    step = 1.0 / (jnp.linalg.norm(a, 2) ** 2 + lam)
    return jax.lax.fori_loop(
        0, 2000, lambda _, x: x - step * objective_grad(x, theta, a, b),
        theta)

  def closed_form(theta, a, b):
    d = a.shape[1]
    return jnp.linalg.solve(a.T @ a + lam * jnp.eye(d), a.T @ b + lam * theta)
  return solver, objective_grad, closed_form


@pytest.mark.parametrize("solve", [implicit.conjugate_gradient(),
                                   implicit.gmres()], ids=["cg", "gmres"])
def test_gradient_of_a_solution_is_the_closed_forms(x64, solve):
  a, b = _ridge(jax.random.PRNGKey(0))
  theta = jnp.linspace(-1.0, 1.0, 4)
  solver, objective_grad, closed_form = _proximal_ridge(0.7)
  solution = implicit.implicit_solution(solver, objective_grad, solve)
  np.testing.assert_allclose(solution(theta, a, b), closed_form(theta, a, b),
                             rtol=1e-10)
  outer = lambda x: jnp.sum(jnp.sin(x))  # any function of the solution
  got = jax.grad(lambda t, a, b: outer(solution(t, a, b)),
                 argnums=(0, 1, 2))(theta, a, b)
  want = jax.grad(lambda t, a, b: outer(closed_form(t, a, b)),
                  argnums=(0, 1, 2))(theta, a, b)
  chex.assert_trees_all_close(got, want, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("make", [implicit.conjugate_gradient,
                                  implicit.gmres], ids=["cg", "gmres"])
def test_ridge_solves_the_shifted_system(x64, make):
  # An indefinite symmetric matrix, as a non-convex loss's Hessian is: the
  # ridge shifts it to positive definite, where both solvers converge.
  q, _ = jnp.linalg.qr(jax.random.normal(jax.random.PRNGKey(2), (6, 6)))
  a = q @ jnp.diag(jnp.array([-2.0, -0.5, 0.3, 1.0, 4.0, 9.0])) @ q.T
  b = {"x": jnp.arange(6.0)}
  got = make(maxiter=50, ridge=3.0)(lambda v: {"x": a @ v["x"]}, b)
  np.testing.assert_allclose(got["x"], jnp.linalg.solve(a + 3.0 * jnp.eye(6),
                                                        b["x"]), rtol=1e-9)


@pytest.mark.parametrize("ridge", [-1.0, float("nan")])
def test_bad_ridge_is_named(ridge):
  with pytest.raises(ValueError, match="ridge must be finite and >= 0"):
    implicit.conjugate_gradient(ridge=ridge)


def test_args_as_data_get_no_gradient_and_theta_the_same(x64):
  a, b = _ridge(jax.random.PRNGKey(1))
  theta = jnp.ones(4)
  solver, objective_grad, closed_form = _proximal_ridge(0.3)
  as_data = implicit.implicit_solution(solver, objective_grad,
                                       differentiate_args=False)
  g_theta, g_a = jax.grad(lambda t, a: jnp.sum(as_data(t, a, b) ** 2),
                          argnums=(0, 1))(theta, a)
  np.testing.assert_allclose(g_theta, jax.grad(
      lambda t: jnp.sum(closed_form(t, a, b) ** 2))(theta), rtol=1e-8)
  np.testing.assert_array_equal(g_a, 0.0)


def test_a_non_symmetric_fixed_point_by_gmres(x64):
  """x = tanh(W x + theta), a contraction with non-symmetric W: the implicit
  gradient equals differentiating through the converged iteration."""
  w = 0.4 * jax.random.normal(jax.random.PRNGKey(2), (5, 5), jnp.float64)
  w = w / jnp.linalg.norm(w, 2) * 0.6
  theta = jnp.linspace(-0.5, 0.5, 5)

  def iterate(t, w, n=200):
    return jax.lax.fori_loop(0, n, lambda _, x: jnp.tanh(w @ x + t),
                             jnp.zeros(5, jnp.float64))

  residual = lambda x, t, w: x - jnp.tanh(w @ x + t)
  solution = implicit.implicit_solution(iterate, residual, implicit.gmres())
  outer = lambda x: jnp.sum(x ** 3)
  got = jax.grad(lambda t, w: outer(solution(t, w)), argnums=(0, 1))(theta, w)
  unrolled = jax.grad(lambda t, w: outer(iterate(t, w)),
                      argnums=(0, 1))(theta, w)
  chex.assert_trees_all_close(got, unrolled, rtol=1e-9, atol=1e-12)


def test_solution_vmaps_and_jits_like_a_loop(x64):
  a, b = _ridge(jax.random.PRNGKey(3))
  thetas = jax.random.normal(jax.random.PRNGKey(4), (3, 4), jnp.float64)
  solver, objective_grad, _ = _proximal_ridge(0.5)
  solution = metajax.implicit_solution(solver, objective_grad)
  f = lambda t: jnp.sum(solution(t, a, b) ** 2)
  batched = jax.jit(jax.vmap(jax.grad(f)))(thetas)
  looped = jnp.stack([jax.grad(f)(t) for t in thetas])
  np.testing.assert_allclose(batched, looped, rtol=1e-10)
