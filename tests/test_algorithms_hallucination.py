"""ProtoNets with hallucinated support examples: seeds, prototypes, and a
generator trained through the episode loss."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metajax import algorithms
from metajax.algorithms import hallucination
import fewshot

WAYS, EXTRA = 3, 2


def test_each_class_is_seeded_by_its_own_support_examples_in_turn():
  index, labels = hallucination.seeds(jnp.asarray([2, 0, 2, 1]), 4, 3)
  # Class 3 has no support example: its slots are labelled 4 (ignored).
  np.testing.assert_array_equal(index[:9], [1, 1, 1, 3, 3, 3, 0, 2, 0])
  np.testing.assert_array_equal(labels, [0, 0, 0, 1, 1, 1, 2, 2, 2, 4, 4, 4])


def _learners():
  init_fn, embed_fn = fewshot.conv4(width=8)
  hal = algorithms.hallucinating_protonet(init_fn, embed_fn, ways=WAYS,
                                          extra=EXTRA, embed_dim=8)
  return hal, algorithms.protonet(init_fn, embed_fn, ways=WAYS)


@pytest.mark.slow
def test_a_generator_at_zero_leaves_the_prototypes_of_protonets():
  hal, proto = _learners()
  meta = hal.init(fewshot.key())
  # Zero head: every generated example is its seed, and repeating each
  # class's support examples does not move its mean.
  meta["generator"] = jax.tree.map(jnp.zeros_like, meta["generator"])
  task = fewshot.one(fewshot.tiny_episodes(ways=WAYS, shots=2))
  x = task.query[0]
  np.testing.assert_allclose(
      hal.predict(meta, task.support, x),
      proto.predict({"params": meta["params"]}, task.support, x),
      rtol=1e-4, atol=1e-3)


@pytest.mark.slow
def test_the_generator_learns_through_the_episode_loss():
  hal, _ = _learners()
  tasks = fewshot.tiny_episodes(ways=WAYS, shots=1)
  meta = hal.init(fewshot.key())
  grads, metrics = jax.jit(hal.meta_grad)(meta, tasks, jax.random.PRNGKey(1))
  assert all(float(jnp.max(jnp.abs(g))) > 0
             for g in jax.tree.leaves(grads["generator"]))
  # The noise is drawn from the step's key; predictions use a fixed draw.
  _, other = jax.jit(hal.meta_grad)(meta, tasks, jax.random.PRNGKey(2))
  assert float(metrics["loss"]) != float(other["loss"])
  task = fewshot.one(tasks)
  np.testing.assert_array_equal(hal.predict(meta, task.support, task.query[0]),
                                hal.predict(meta, task.support, task.query[0]))
  metrics, initial, final = fewshot.meta_train(hal, tasks, optax.adam(1e-2),
                                               20)
  assert metrics["loss"][-1] < 0.5 * metrics["loss"][0]
  assert not np.allclose(jax.tree.leaves(initial["generator"])[0],
                         jax.tree.leaves(final["generator"])[0])


def test_bad_extra_counts_are_named():
  init_fn, embed_fn = fewshot.conv4(width=8)
  with pytest.raises(ValueError, match="extra must be an int >= 1, got 0"):
    algorithms.hallucinating_protonet(init_fn, embed_fn, ways=3, extra=0,
                                      embed_dim=8)
