"""Prototypical Networks: prototypes, distances, and any ways at test time."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metajax
from metajax.algorithms.protonet import prototypes
from metajax.algorithms.protonet import protonet
from metajax.algorithms.protonet import squared_distances
from fewshot import key, meta_train

FEATURES, DIM = 5, 4


def _init(rng):
  return {"w": jax.random.normal(rng, (FEATURES, DIM))}


def _embed(params, x):
  """`[n, FEATURES]` -> `[n, DIM]`, one example at a time (no batch terms)."""
  return jnp.tanh(x @ params["w"])


def _episode(ways, shots=3, queries=2, seed=0):
  """One `ways`-way episode of Gaussian classes, labels ordered by class.

  Returns `Task((x, y), (x, y))`: x float32 `[ways * shots, FEATURES]` and
  `[ways * queries, FEATURES]`, y int32.
  """
  rng = np.random.default_rng(seed)
  means = 2.0 * rng.normal(size=(ways, 1, FEATURES))
  def draw(n):
    x = means + 0.3 * rng.normal(size=(ways, n, FEATURES))
    y = np.repeat(np.arange(ways, dtype=np.int32), n)
    return (jnp.asarray(x.reshape(ways * n, FEATURES), jnp.float32),
            jnp.asarray(y))
  return metajax.Task(draw(shots), draw(queries))


def _classify(learner, meta_params, task):
  return jax.jit(lambda t: learner.predict(
      meta_params, learner.adapt(meta_params, t.support), t.query[0]))(task)


def test_prototypes_are_the_class_means_of_the_embeddings():
  rng = np.random.default_rng(0)
  z = rng.normal(size=(7, 3)).astype(np.float32)
  labels = np.array([2, 0, 2, 1, 0, 2, 2], np.int32)
  protos = jax.jit(prototypes, static_argnums=2)(z, labels, 4)
  np.testing.assert_allclose(
      protos[:3], np.stack([z[labels == c].mean(0) for c in range(3)]),
      rtol=1e-6)
  np.testing.assert_array_equal(protos[3], 0.0)  # class 3 has no example


def test_squared_distances_between_rows():
  rng = np.random.default_rng(1)
  a, b = rng.normal(size=(4, 3)), rng.normal(size=(5, 3))
  np.testing.assert_allclose(
      squared_distances(jnp.asarray(a), jnp.asarray(b)),
      np.sum((a[:, None] - b[None]) ** 2, axis=-1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("ways", [3, 5])
def test_logits_are_negative_squared_distances_for_any_ways(ways):
  """Meta-parameters are the embedding's, whatever `ways` is at test time."""
  meta_params = protonet(_init, _embed, ways=3).init(key())
  learner = protonet(_init, _embed, ways=ways)
  task = _episode(ways)
  logits = _classify(learner, meta_params, task)
  (xs, ys), (xq, yq) = jax.tree.map(np.asarray, task)
  w = np.asarray(meta_params["params"]["w"], np.float64)
  zs, zq = np.tanh(xs @ w), np.tanh(xq @ w)
  protos = np.stack([zs[ys == c].mean(0) for c in range(ways)])
  expected = -np.sum((zq[:, None] - protos[None]) ** 2, axis=-1)
  assert logits.shape == (ways * 2, ways)
  np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)


def test_invariant_to_support_order_and_equivariant_to_relabelling():
  learner = protonet(_init, _embed, ways=4)
  meta_params = learner.init(key())
  task = _episode(4)
  (xs, ys), query = task.support, task.query
  logits = _classify(learner, meta_params, task)
  order = np.random.default_rng(0).permutation(xs.shape[0])
  shuffled = metajax.Task((xs[order], ys[order]), query)
  np.testing.assert_allclose(_classify(learner, meta_params, shuffled),
                             logits, rtol=1e-5, atol=1e-5)
  relabel = np.array([2, 0, 3, 1], np.int32)
  relabelled = metajax.Task((xs, jnp.asarray(relabel)[ys]), query)
  np.testing.assert_allclose(
      _classify(learner, meta_params, relabelled)[:, relabel], logits,
      rtol=1e-5, atol=1e-5)


def test_meta_training_lowers_the_query_cross_entropy():
  learner = protonet(_init, _embed, ways=3)
  tasks = jax.tree.map(lambda *x: jnp.stack(x),
                       *[_episode(3, seed=s) for s in range(4)])
  metrics, _, _ = meta_train(learner, tasks, optax.adam(0.05), 20)
  assert metrics["loss"][-1] < 0.5 * metrics["loss"][0], metrics
  assert metrics["accuracy"][-1] == 1.0, metrics


def test_ways_must_be_a_positive_int():
  for ways in (0, jnp.int32(5), True):
    with pytest.raises(ValueError, match="ways must be a positive Python int"):
      protonet(_init, _embed, ways=ways)
