"""iMAML: implicit meta-gradients against unrolled ones, and flat memory."""

import chex
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metajax
from metajax import algorithms
from metajax.algorithms.imaml import proximal
from conftest import tiny_mlp, tiny_mlp_params, tiny_tasks


def _linear_init(key):
  return {"w": 0.5 * jax.random.normal(key, (1, 3), jnp.float64),
          "b": jnp.zeros((3,), jnp.float64)}


def _features(params, x):
  """A linear model of fixed features of `x [n, 1]`: `[n, 1]` outputs.
  Convex in the parameters, so the regularised inner problem is strongly
  convex."""
  phi = jnp.concatenate([x, jnp.sin(x), x ** 2], axis=-1)  # [n, 3]
  return phi @ params["w"].T + params["b"][:1]


@pytest.mark.parametrize("optimizer", [None, "momentum"])
def test_implicit_meta_gradient_is_the_unrolled_one_at_convergence(
    x64, optimizer):
  """On a strongly convex inner problem solved to convergence, iMAML's
  meta-gradient equals differentiating through the whole inner loop of the
  same regularised objective (exact second order)."""
  reg, steps = 1.5, 400
  how = (dict(lr=0.05) if optimizer is None else
         dict(inner_optimizer=optax.sgd(0.02, momentum=0.5)))
  learner = algorithms.imaml(_linear_init, _features, algorithms.mse,
                             steps=steps, reg=reg, cg_steps=20, **how)
  meta_params = learner.init(jax.random.PRNGKey(0))
  tasks = jax.tree.map(lambda x: x.astype(jnp.float64),
                       tiny_tasks(jax.random.PRNGKey(1), 3))
  grads, metrics = jax.jit(learner.meta_grad)(meta_params, tasks, None)

  loss_fn = algorithms.supervised_loss(_features, algorithms.mse)
  regularised = proximal(loss_fn, reg)
  inner_how = (dict(lr=0.05) if optimizer is None else
               dict(optimizer=optax.sgd(0.02, momentum=0.5)))

  def unrolled(params, task):
    adapted = metajax.adapt(regularised, params, (task.support, params),
                            steps=steps, **inner_how)
    return loss_fn(adapted, task.query)
  expected = jax.grad(lambda p: jnp.mean(jax.vmap(
      unrolled, in_axes=(None, 0))(p, tasks)))(meta_params["params"])
  chex.assert_trees_all_close(grads["params"], expected, rtol=1e-8)
  assert float(jnp.abs(grads["params"]["w"]).max()) > 1e-3
  # The inner loop converged: the regularised gradient is ~0 at the
  # adapted parameters, so the two gradients had to agree.
  task = jax.tree.map(lambda x: x[0], tasks)
  phi = learner.adapt(meta_params, task.support)
  residual = jax.grad(regularised)(phi, (task.support, meta_params["params"]))
  assert max(float(jnp.abs(r).max()) for r in jax.tree.leaves(residual)) < 1e-9


@pytest.mark.parametrize("damping", [0.0, 3.0])
def test_meta_gradient_is_the_closed_form_of_the_paper(x64, damping):
  """((1 + damping) I + H / lam)^{-1} g with H the support Hessian at phi*,
  built as a dense matrix for the tiny MLP; damping 0 is the paper's."""
  reg = 2.0
  learner = algorithms.imaml(lambda k: tiny_mlp_params(k, jnp.float64),
                             tiny_mlp, algorithms.mse, steps=300, lr=0.1,
                             reg=reg, cg_steps=60, damping=damping)
  meta_params = learner.init(jax.random.PRNGKey(0))
  tasks = jax.tree.map(lambda x: x[:1].astype(jnp.float64),
                       tiny_tasks(jax.random.PRNGKey(2), 1))
  grads, _ = jax.jit(learner.meta_grad)(meta_params, tasks, None)
  task = jax.tree.map(lambda x: x[0], tasks)
  phi = jax.jit(learner.adapt)(meta_params, task.support)
  flat, unravel = jax.flatten_util.ravel_pytree(phi)
  loss_fn = algorithms.supervised_loss(tiny_mlp, algorithms.mse)
  # Compiled, because an eager Hessian compiles each of its many operations.
  hessian = jax.jit(jax.hessian(
      lambda v: loss_fn(unravel(v), task.support)))(flat)
  g = jax.jit(jax.grad(lambda v: loss_fn(unravel(v), task.query)))(flat)
  want = jnp.linalg.solve((1 + damping) * jnp.eye(flat.size) + hessian / reg,
                          g)
  np.testing.assert_allclose(
      jax.flatten_util.ravel_pytree(grads["params"])[0], want, rtol=1e-7,
      atol=1e-10)


def test_meta_gradient_memory_does_not_grow_with_inner_steps():
  """XLA's compiled temporary memory of one meta-gradient, 5 and 100 inner
  steps: iMAML keeps nothing of the inner loop, MAML keeps every step."""
  learner_of = {
      "imaml": lambda steps: algorithms.imaml(
          tiny_mlp_params, tiny_mlp, algorithms.mse, steps=steps, lr=0.1),
      "maml": lambda steps: algorithms.maml(
          tiny_mlp_params, tiny_mlp, algorithms.mse, steps=steps, lr=0.1)}
  tasks = tiny_tasks(jax.random.PRNGKey(1), 4)

  def temp_bytes(name, steps):
    learner = learner_of[name](steps)
    meta_params = learner.init(jax.random.PRNGKey(0))
    stats = jax.jit(learner.meta_grad).lower(
        meta_params, tasks, None).compile().memory_analysis()
    if stats is None:
      pytest.skip(f"memory_analysis() is not available on "
                  f"{jax.default_backend()}")
    return stats.temp_size_in_bytes

  imaml_bytes = [temp_bytes("imaml", s) for s in (5, 100)]
  maml_bytes = [temp_bytes("maml", s) for s in (5, 100)]
  assert imaml_bytes[1] == imaml_bytes[0]
  assert maml_bytes[1] > 5 * maml_bytes[0]


def test_adapt_solves_the_regularised_problem_from_the_meta_params(x64):
  learner = algorithms.imaml(_linear_init, _features, algorithms.mse,
                             steps=3, lr=0.05, reg=1.5)
  meta_params = learner.init(jax.random.PRNGKey(0))
  task = jax.tree.map(lambda x: x[0].astype(jnp.float64),
                      tiny_tasks(jax.random.PRNGKey(1), 1))
  loss_fn = algorithms.supervised_loss(_features, algorithms.mse)
  expected = metajax.adapt(
      proximal(loss_fn, 1.5), meta_params["params"],
      (task.support, meta_params["params"]), steps=5, lr=0.05)
  chex.assert_trees_all_close(
      learner.adapt(meta_params, task.support, steps=5), expected,
      rtol=1e-12)


def test_bad_options_are_named():
  build = lambda **kw: algorithms.imaml(tiny_mlp_params, tiny_mlp,
                                        algorithms.mse, **kw)
  with pytest.raises(ValueError, match=r"reg must be > 0 .* got 0.0"):
    build(reg=0.0)
  with pytest.raises(ValueError, match="either lr .* not both"):
    build(lr=0.1, inner_optimizer=optax.sgd(0.1))
  with pytest.raises(ValueError, match="steps must be >= 0"):
    build(cg_steps=-1)
  with pytest.raises(ValueError, match="damping must be finite and >= 0"):
    build(damping=-0.5)
