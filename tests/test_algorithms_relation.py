"""Relation Networks: class maps, relation scores, and joint training."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metajax
from metajax.algorithms.relation import class_maps
from metajax.algorithms.relation import relation
from metajax.models.relation import RelationEmbedding
from metajax.models.relation import RelationModule
from fewshot import key, meta_train, one, tiny_episodes

WAYS, SHOTS, WIDTH = 3, 2, 8


def _learner(ways=WAYS, **kw):
  """A relation learner on small models; feature maps are 7x7xWIDTH."""
  embed = RelationEmbedding(width=WIDTH)
  module = RelationModule(width=WIDTH, hidden=8)
  x = jnp.zeros((2, 28, 28, 1))
  pairs = jnp.zeros((2, 7, 7, 2 * WIDTH))
  return relation(lambda k: embed.init(k, x), embed.apply,
                  lambda k: module.init(k, pairs), module.apply, ways=ways,
                  **kw)


def _classifier(learner, meta_params):
  """Compiled `(support, x) -> scores` of one episode."""
  return jax.jit(lambda support, x: learner.predict(
      meta_params, learner.adapt(meta_params, support), x))


@pytest.fixture(scope="module")
def setup():
  learner = _learner()
  meta_params = jax.jit(learner.init)(key())
  (xs, ys), _ = one(tiny_episodes(ways=WAYS, shots=SHOTS, n_tasks=1))
  # Queries unlike the support images: mirrored, in reverse order.
  task = metajax.Task((xs, ys), (xs[::-1, :, ::-1], ys[::-1]))
  return meta_params, task, _classifier(learner, meta_params)


def test_scores_are_one_per_query_and_class_in_the_unit_interval(setup):
  *_, task, classify = setup
  scores = classify(task.support, task.query[0])
  assert scores.shape == (WAYS * SHOTS, WAYS)
  assert np.all((scores >= 0) & (scores <= 1))


@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_a_class_map_combines_its_support_examples_maps(reduce):
  rng = np.random.default_rng(0)
  maps = rng.normal(size=(7, 3, 3, 2)).astype(np.float32)
  labels = np.array([2, 0, 2, 1, 0, 2, 2], np.int32)
  combined = jax.jit(class_maps, static_argnums=(2, 3))(maps, labels, 4,
                                                        reduce)
  combine = np.sum if reduce == "sum" else np.mean
  expected = [combine(maps[labels == c], axis=0) for c in range(3)]
  np.testing.assert_allclose(combined[:3], np.stack(expected), rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_array_equal(combined[3], 0.0)  # class 3 has no example


def test_invariant_to_support_order_and_equivariant_to_relabelling(setup):
  *_, task, classify = setup
  (xs, ys), (xq, _) = task.support, task.query
  scores = classify(task.support, xq)
  order = np.random.default_rng(0).permutation(xs.shape[0])
  np.testing.assert_allclose(classify((xs[order], ys[order]), xq), scores,
                             rtol=1e-5, atol=1e-6)
  relabel = np.array([2, 0, 1], np.int32)
  permuted = classify((xs, jnp.asarray(relabel)[ys]), xq)
  np.testing.assert_allclose(permuted[:, relabel], scores, rtol=1e-5,
                             atol=1e-6)


def test_classes_missing_from_the_support_set_score_zero(setup):
  meta_params, task, _ = setup
  wider = _learner(ways=WAYS + 1)
  scores = _classifier(wider, meta_params)(task.support, task.query[0])
  assert scores.shape == (WAYS * SHOTS, WAYS + 1)
  np.testing.assert_array_equal(scores[:, WAYS], 0.0)


def test_meta_training_lowers_the_mse_and_trains_both_networks():
  learner = _learner()
  metrics, initial, final = meta_train(learner, tiny_episodes(),
                                       optax.adam(1e-2), 6)
  losses = metrics["loss"]
  assert np.all(np.diff(losses) < 0) and losses[-1] < 0.7 * losses[0], losses
  assert metrics["accuracy"][-1] >= metrics["accuracy"][0], metrics
  assert set(final) == {"params"}
  assert set(final["params"]) == {"embed", "relation"}
  # Adam moves every parameter whose gradient is not exactly zero, so a
  # changed kernel in each network shows that the gradient reached it. (A
  # bias followed by batch norm has no effect, so only kernels count.)
  moved = jax.tree_util.tree_map_with_path(
      lambda path, a, b: ("kernel" not in jax.tree_util.keystr(path)
                          or not np.allclose(a, b)), initial, final)
  assert all(jax.tree.leaves(moved)), moved


def test_bad_options_are_rejected():
  with pytest.raises(ValueError, match="reduce"):
    _learner(reduce="max")
  with pytest.raises(ValueError, match="ways must be"):
    _learner(ways=-3)
