"""Learners built from learners: `map_tasks` and `starting_from`."""

import chex
import jax
import numpy as np
import pytest

from metajax import algorithms
from conftest import tiny_mlp, tiny_mlp_params, tiny_tasks

mse = algorithms.mse


def _learner(build=algorithms.maml, width=6, **kw):
  return build(lambda k: tiny_mlp_params(k, width=width), tiny_mlp, mse, **kw)


@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_map_tasks_computes_the_batch_meta_gradient(chunk):
  learner = _learner(steps=2, lr=0.1)
  meta_params = learner.init(jax.random.PRNGKey(0))
  tasks = tiny_tasks(jax.random.PRNGKey(1), 6)
  key = jax.random.PRNGKey(2)
  grads, metrics = learner.meta_grad(meta_params, tasks, key)
  mapped = jax.jit(algorithms.map_tasks(learner, chunk).meta_grad)
  chunk_grads, chunk_metrics = mapped(meta_params, tasks, key)
  chex.assert_trees_all_close(chunk_grads, grads, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(chunk_metrics["loss"], metrics["loss"],
                             rtol=1e-6)


def test_map_tasks_errors_and_auto_chunk():
  learner = _learner(steps=1, lr=0.1)
  meta_params = learner.init(jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="6 tasks cannot be cut into chunks "
                     "of 4"):
    algorithms.map_tasks(learner, 4).meta_grad(
        meta_params, tiny_tasks(jax.random.PRNGKey(1), 6), None)
  with pytest.raises(ValueError, match="chunk must be an int >= 1"):
    algorithms.map_tasks(learner, 0)
  on_cpu = jax.default_backend() == "cpu"
  assert algorithms.resolve_task_chunk("auto") == (1 if on_cpu else None)
  assert algorithms.resolve_task_chunk(0) is None
  assert algorithms.resolve_task_chunk(None) is None
  assert algorithms.resolve_task_chunk(4) == 4
  with pytest.raises(ValueError, match="task chunk must be"):
    algorithms.resolve_task_chunk(-1)


def test_starting_from_keeps_the_model_and_initialises_the_rest_fresh():
  joint = _learner(algorithms.joint)
  trained = joint.init(jax.random.PRNGKey(1))
  learner = _learner(algorithms.maml_plus_plus, steps=2, lr=0.05)
  fresh = learner.init(jax.random.PRNGKey(0))
  started = algorithms.starting_from(learner, trained)
  meta_params = jax.jit(started.init)(jax.random.PRNGKey(0))
  chex.assert_trees_all_equal(algorithms.model_params(meta_params),
                              algorithms.model_params(trained))
  chex.assert_trees_all_equal(meta_params["lr"], fresh["lr"])
  assert set(meta_params) == set(fresh)
  for name in ("meta_grad", "adapt", "predict"):
    assert getattr(started, name) is getattr(learner, name)


def test_starting_from_takes_only_the_model_params_of_the_source():
  source = _learner(algorithms.meta_sgd).init(jax.random.PRNGKey(3))
  learner = algorithms.starting_from(_learner(algorithms.reptile), source)
  meta_params = learner.init(jax.random.PRNGKey(0))
  assert set(meta_params) == {"params"}  # not the source's rates
  chex.assert_trees_all_equal(meta_params["params"], source["params"])


def test_starting_from_another_model_is_named_at_init():
  wider = _learner(algorithms.joint, width=8).init(jax.random.PRNGKey(1))
  started = algorithms.starting_from(_learner(algorithms.maml), wider)
  with pytest.raises(ValueError, match=r"starting_from: params\['body'\]"
                     r"\['b'\] has shape \(8,\) and dtype float32, but the "
                     r"learner's has shape \(6,\) and dtype float32"):
    started.init(jax.random.PRNGKey(0))
  other = {"params": {"w": np.zeros((3,), np.float32)}}
  with pytest.raises(ValueError, match="starting_from: the model parameters "
                     "given have structure"):
    algorithms.starting_from(_learner(), other).init(jax.random.PRNGKey(0))
