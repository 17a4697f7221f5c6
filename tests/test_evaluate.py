"""Evaluation: confidence intervals and per-task scoring."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import metajax
from metajax import algorithms
from metajax.evaluate import accuracy
from metajax.data import sinusoid
from conftest import tiny_mlp, tiny_mlp_params


def test_mean_ci_is_the_normal_interval():
  values = np.array([1.0, 2.0, 4.0, 7.0])
  out = metajax.mean_ci(values)
  assert out["mean"] == pytest.approx(3.5)
  assert out["std"] == pytest.approx(np.std(values, ddof=1))
  assert out["ci95"] == pytest.approx(1.96 * np.std(values, ddof=1) / 2.0)
  assert out["n"] == 4


def test_mean_ci_rejects_bad_input():
  with pytest.raises(ValueError, match="at least 2"):
    metajax.mean_ci([1.0])
  with pytest.raises(ValueError, match="1 of 3 per-task values are not finite"):
    metajax.mean_ci([1.0, np.nan, 2.0])


def test_evaluate_scores_each_task_after_adaptation():
  learner = algorithms.maml(tiny_mlp_params, tiny_mlp, algorithms.mse,
                            steps=2, lr=0.1)
  meta_params = learner.init(jax.random.PRNGKey(0))
  sampler = sinusoid.sampler(8, 5, 10)
  values = metajax.evaluate(learner, meta_params, sampler, algorithms.mse,
                            key=jax.random.PRNGKey(1), num_tasks=20)
  assert values.shape == (20,) and values.dtype == np.float64
  # Recompute task 0 of the first batch by hand.
  _, sub = jax.random.split(jax.random.PRNGKey(1))
  task = jax.tree.map(lambda x: x[0], sampler(sub))
  adapted = metajax.adapt(algorithms.supervised_loss(tiny_mlp, algorithms.mse),
                          meta_params["params"], task.support, steps=2, lr=0.1)
  expected = algorithms.mse(tiny_mlp(adapted, task.query[0]), task.query[1])
  np.testing.assert_allclose(values[0], expected, rtol=1e-5)
  again = metajax.evaluate(learner, meta_params, sampler, algorithms.mse,
                           key=jax.random.PRNGKey(1), num_tasks=20)
  np.testing.assert_array_equal(values, again)


def test_accuracy():
  logits = jnp.array([[2.0, 1.0], [0.0, 3.0], [5.0, -1.0]])
  assert float(accuracy(logits, jnp.array([0, 1, 1]))) == pytest.approx(2 / 3)
