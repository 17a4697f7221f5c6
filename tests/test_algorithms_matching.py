"""Matching Networks: the attention classifier and its symmetries."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metajax
from metajax.algorithms.base import cross_entropy
from metajax.algorithms.matching import attention_log_probs
from metajax.algorithms.matching import matching
from fewshot import conv4, key, meta_train, one, tiny_episodes

WAYS, SHOTS = 4, 2


def _classifier(learner, meta_params):
  """Compiled `(support, x) -> log-probabilities` of one episode."""
  return jax.jit(lambda support, x: learner.predict(
      meta_params, learner.adapt(meta_params, support), x))


@pytest.fixture(scope="module")
def setup():
  """Embedding, learner, meta-parameters, one episode and its classifier."""
  init_fn, embed_fn = conv4()
  learner = matching(init_fn, embed_fn, ways=WAYS)
  meta_params = jax.jit(learner.init)(key())
  (xs, ys), _ = one(tiny_episodes(ways=WAYS, shots=SHOTS, n_tasks=1))
  # Queries unlike the support images: mirrored, in reverse order.
  task = metajax.Task((xs, ys), (xs[::-1, :, ::-1], ys[::-1]))
  return (embed_fn, learner, meta_params, task,
          _classifier(learner, meta_params))


def test_predictions_are_the_attention_weighted_one_hot_labels(setup):
  embed_fn, _, meta_params, task, classify = setup
  (xs, ys), (xq, _) = task.support, task.query
  log_probs = classify(task.support, xq)
  assert log_probs.shape == (xq.shape[0], WAYS)
  # Support and query are embedded in one batch (one set of batch statistics).
  z = np.array(jax.jit(embed_fn)(meta_params["params"],
                                 jnp.concatenate([xs, xq])))
  z /= np.linalg.norm(z, axis=1, keepdims=True)
  cosine = z[len(xs):] @ z[:len(xs)].T
  attention = np.exp(cosine) / np.exp(cosine).sum(axis=1, keepdims=True)
  expected = attention @ np.eye(WAYS)[np.asarray(ys)]
  np.testing.assert_allclose(np.exp(log_probs), expected, rtol=1e-5)


def test_invariant_to_the_order_of_the_support_set(setup):
  *_, task, classify = setup
  (xs, ys), (xq, _) = task.support, task.query
  order = np.random.default_rng(0).permutation(xs.shape[0])
  np.testing.assert_allclose(classify((xs[order], ys[order]), xq),
                             classify(task.support, xq), rtol=1e-5, atol=1e-6)


def test_relabelling_the_classes_permutes_the_columns(setup):
  *_, task, classify = setup
  (xs, ys), (xq, _) = task.support, task.query
  relabel = np.array([2, 0, 3, 1], np.int32)
  permuted = classify((xs, jnp.asarray(relabel)[ys]), xq)
  np.testing.assert_allclose(permuted[:, relabel], classify(task.support, xq),
                             rtol=1e-5, atol=1e-6)


def test_a_support_example_given_as_query_gets_its_own_label():
  # One shot: a query's log-probability of class c is its scaled cosine to
  # the one example of c, up to a constant, and its own example's is 1.
  learner = matching(*conv4(), ways=5)
  task = one(tiny_episodes(seed=3, ways=5, shots=1, n_tasks=1))
  meta_params = jax.jit(learner.init)(key(1))
  log_probs = _classifier(learner, meta_params)(task.support, task.query[0])
  np.testing.assert_array_equal(np.argmax(log_probs, axis=1), task.query[1])


def test_classes_missing_from_the_support_set_get_probability_zero(setup):
  embed_fn, _, meta_params, task, classify = setup
  wider = matching(conv4()[0], embed_fn, ways=WAYS + 2)
  x = task.query[0]
  log_probs = _classifier(wider, meta_params)(task.support, x)
  assert np.all(np.isneginf(log_probs[:, WAYS:]))
  np.testing.assert_allclose(log_probs[:, :WAYS], classify(task.support, x),
                             rtol=1e-6)


def test_log_probs_are_exact_and_differentiable_in_the_extremes():
  # Attention so sharp that a plain softmax underflows, and a third class
  # with no support example: its -inf must not make the gradient NaN.
  scores = jnp.array([[1e4, -1e4, 0.0]])
  one_hot = jnp.eye(3)[jnp.array([0, 1, 1])]
  def loss(s):
    return cross_entropy(attention_log_probs(s, one_hot), jnp.array([1]))
  log_probs, (value, grad) = jax.jit(lambda s: (
      attention_log_probs(s, one_hot), jax.value_and_grad(loss)(s)))(scores)
  np.testing.assert_allclose(log_probs[:, :2], [[0.0, -1e4]], rtol=1e-6)
  assert np.isneginf(log_probs[0, 2])
  np.testing.assert_allclose(value, 1e4, rtol=1e-6)
  # d/ds of -log p(1): softmax(s) minus the attention within class 1.
  np.testing.assert_allclose(grad, [[1.0, 0.0, -1.0]], atol=1e-6)


def test_meta_training_lowers_the_query_cross_entropy():
  learner = matching(*conv4(), ways=3, scale=10.0)
  metrics, _, _ = meta_train(learner, tiny_episodes(), optax.adam(1e-2), 6)
  assert metrics["loss"][-1] < 0.5 * metrics["loss"][0], metrics
  assert metrics["accuracy"][-1] == 1.0, metrics


def test_ways_must_be_a_positive_int():
  with pytest.raises(ValueError, match="ways must be"):
    matching(*conv4(), ways=0)
  with pytest.raises(ValueError, match="ways must be"):
    matching(*conv4(), ways=jnp.int32(5))
