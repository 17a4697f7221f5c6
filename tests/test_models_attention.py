"""Masked multi-head attention against NumPy, and what masking guarantees."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metajax.models import attention

WIDTH, HEADS, M, N = 8, 2, 3, 5
MASK = np.array([1, 0, 1, 1, 0], np.float64)


def _params(seed=0):
  """Attention parameters drawn with NumPy (float64), biases nonzero."""
  rng = np.random.default_rng(seed)
  params = {name: {"w": jnp.asarray(rng.normal(size=(WIDTH, WIDTH)) / 3),
                   "b": jnp.asarray(0.1 * rng.normal(size=WIDTH))}
            for name in ("query", "key", "value", "output")}
  params["norm"] = {"scale": jnp.asarray(1 + 0.1 * rng.normal(size=WIDTH)),
                    "offset": jnp.asarray(0.1 * rng.normal(size=WIDTH))}
  return params


def _np_attention(params, q, k, v, mask):
  """Multi-head attention over the real keys, head by head, in NumPy."""
  p = jax.tree.map(np.asarray, params)
  proj = {name: x @ p[name]["w"] + p[name]["b"]
          for name, x in (("query", q), ("key", k), ("value", v))}
  head = WIDTH // HEADS
  real = mask > 0
  heads = []
  for h in range(HEADS):
    cols = slice(h * head, (h + 1) * head)
    qh, kh, vh = (proj[n][:, cols] for n in ("query", "key", "value"))
    logits = qh @ kh[real].T / np.sqrt(head)
    w = np.exp(logits - logits.max(axis=1, keepdims=True))
    heads.append((w / w.sum(axis=1, keepdims=True)) @ vh[real])
  return np.concatenate(heads, axis=1) @ p["output"]["w"] + p["output"]["b"]


def _np_layer_norm(params, x, eps=1e-5):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return ((x - mean) / np.sqrt(var + eps) * np.asarray(params["scale"]) +
          np.asarray(params["offset"]))


def test_masked_softmax_gives_masked_entries_zero_weight(x64):
  rng = np.random.default_rng(0)
  logits = 3.0 * rng.normal(size=(2, 3, N))

  @jax.jit
  def run(logits):
    weights = attention.masked_softmax(logits, jnp.asarray(MASK))
    empty = attention.masked_softmax(logits, jnp.zeros(N))
    # An empty set must not make the gradient NaN either.
    grad = jax.grad(lambda l: jnp.sum(
        attention.masked_softmax(l, jnp.zeros(N)) * l))(logits)
    return weights, empty, grad

  weights, empty, grad = map(np.asarray, run(jnp.asarray(logits)))
  real = MASK > 0
  expected = np.exp(logits[..., real])
  expected /= expected.sum(-1, keepdims=True)
  np.testing.assert_allclose(weights[..., real], expected, rtol=1e-12)
  np.testing.assert_array_equal(weights[..., ~real], 0.0)
  np.testing.assert_array_equal(empty, 0.0)
  assert np.all(np.isfinite(grad))


def test_attention_matches_numpy_and_ignores_masked_keys(x64):
  rng = np.random.default_rng(1)
  q, k, v = (rng.normal(size=(n, WIDTH)) for n in (M, N, N))
  params = _params()
  perm = np.array([4, 2, 0, 3, 1])
  garbage = (MASK == 0)[:, None] * 100.0 * rng.normal(size=(N, WIDTH))

  @jax.jit
  def run(params, q, k, v, mask):
    attend = lambda k, v, m: attention.multihead_attention(
        params, q, k, v, m, num_heads=HEADS)
    block = attention.attention_block(params, q, k, v, mask, num_heads=HEADS)
    # Gradients of the block with respect to keys and values.
    grads = jax.grad(lambda kv: jnp.sum(attention.attention_block(
        params, q, kv[0], kv[1], mask, num_heads=HEADS) ** 2))((k, v))
    return (attend(k, v, mask), attend(k[perm], v[perm], mask[perm]),
            attend(k + garbage, v - garbage, mask), block, grads)

  plain, permuted, with_garbage, block, (grad_k, grad_v) = jax.tree.map(
      np.asarray, run(params, q, k, v, jnp.asarray(MASK)))
  expected = _np_attention(params, q, k, v, MASK)
  assert plain.shape == (M, WIDTH)
  np.testing.assert_allclose(plain, expected, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(permuted, plain, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(with_garbage, plain, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(
      block, _np_layer_norm(params["norm"], q + expected), rtol=1e-10,
      atol=1e-12)
  # A masked-out key or value receives no gradient.
  np.testing.assert_array_equal(grad_k[MASK == 0], 0.0)
  np.testing.assert_array_equal(grad_v[MASK == 0], 0.0)
  assert np.any(grad_k[MASK > 0] != 0) and np.any(grad_v[MASK > 0] != 0)


def test_attention_to_an_empty_set_is_finite_with_finite_gradients(x64):
  rng = np.random.default_rng(2)
  q, k, v = (jnp.asarray(rng.normal(size=(n, WIDTH))) for n in (M, N, N))
  params = _params()

  def loss(params, q, k, v):
    return jnp.sum(attention.attention_block(params, q, k, v, jnp.zeros(N),
                                             num_heads=HEADS) ** 2)

  @jax.jit
  def run(params, q, k, v):
    value, grads = jax.value_and_grad(loss, argnums=(0, 1, 2, 3))(
        params, q, k, v)
    out = attention.multihead_attention(params, q, k, v, jnp.zeros(N),
                                        num_heads=HEADS)
    return value, grads, out

  value, grads, out = run(params, q, k, v)
  assert np.isfinite(value)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  # Attending to nothing adds the output bias alone.
  np.testing.assert_allclose(
      out, np.broadcast_to(params["output"]["b"], (M, WIDTH)), atol=1e-12)


def test_init_shapes_and_bad_heads():
  shapes = jax.eval_shape(lambda k: attention.attention_init(k, WIDTH, HEADS),
                          jax.random.key(0))
  assert shapes["query"]["w"].shape == (WIDTH, WIDTH)
  assert shapes["output"]["b"].shape == (WIDTH,)
  assert shapes["norm"]["scale"].shape == (WIDTH,)
  with pytest.raises(ValueError, match="num_heads"):
    attention.attention_init(jax.random.key(0), WIDTH, 3)
  with pytest.raises(ValueError, match="num_heads"):
    attention.multihead_attention(_params(), jnp.zeros((M, WIDTH)),
                                  jnp.zeros((N, WIDTH)),
                                  jnp.zeros((N, WIDTH)), jnp.ones(N),
                                  num_heads=0)
