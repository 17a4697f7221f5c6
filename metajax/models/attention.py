"""Masked multi-head attention as plain functions over dicts of arrays.

The attentive neural process (Kim et al., 2019) attends over a *set* of
context points whose number varies from task to task. Here sets have a fixed
length with a float mask `[n]` (1 for a real point, 0 for padding), so every
function that reads keys takes that mask, and a masked-out key gets a weight
of exactly zero: its key and value, whatever they are, change nothing.

Attention is the scaled dot-product attention of Vaswani et al. (2017), with
learned projections of queries, keys and values, `num_heads` heads of width
`width // num_heads`, and an output projection. `attention_block` adds the
residual connection and layer normalisation of the ANP paper's multihead
attention, `layer_norm(queries + attention(queries, keys, values))`, and
nothing else (no feed-forward sublayer).

Parameters are dicts of arrays: `init_*` functions build them from a key,
and the apply functions are pure, so they run under `jit`, `vmap` and `grad`
like any other function of arrays. Every apply function works on one set
(no batch axis); `vmap` maps it over tasks.
"""

import math

import jax
import jax.numpy as jnp

from metajax import types


def dense_init(key: types.PRNGKey, fan_in: int, fan_out: int,
               dtype=jnp.float32) -> types.Params:
  """A fully connected layer `{"w": [fan_in, fan_out], "b": [fan_out]}`.

  Weights are normal with variance `1 / fan_in` (LeCun), so a layer keeps
  the scale of its inputs; biases start at zero.
  """
  w = jax.random.normal(key, (fan_in, fan_out), dtype) / math.sqrt(fan_in)
  return {"w": w, "b": jnp.zeros((fan_out,), dtype)}


def dense(params: types.Params, x: jax.Array) -> jax.Array:
  """`[..., fan_in]` -> `[..., fan_out]`: `x @ w + b`."""
  return x @ params["w"] + params["b"]


def layer_norm_init(width: int, dtype=jnp.float32) -> types.Params:
  """Layer norm's `{"scale": ones [width], "offset": zeros [width]}`."""
  return {"scale": jnp.ones((width,), dtype),
          "offset": jnp.zeros((width,), dtype)}


def layer_norm(params: types.Params, x: jax.Array,
               eps: float = 1e-5) -> jax.Array:
  """Normalises each row of `x` `[..., width]` over its last axis.

  Statistics are per point, so no point of a set influences another's.
  """
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps) * params["scale"] + (
      params["offset"])


def masked_softmax(logits: jax.Array, mask: jax.Array) -> jax.Array:
  """Softmax over the last axis that gives masked-out entries zero weight.

  Args:
    logits: float `[..., n]`.
    mask: float `[n]` (or broadcastable to `logits`), > 0 where the entry is
      real.

  Returns:
    Float weights shaped like `logits`: each row sums to 1 over its real
    entries and is exactly 0 at masked ones; a row with no real entry is all
    zeros (not NaN), so attending to an empty set gives a zero vector.
  """
  real = jnp.broadcast_to(mask > 0, logits.shape)
  # A finite stand-in for -inf: with -inf an all-masked row would compute
  # -inf - (-inf) = NaN.
  logits = jnp.where(real, logits, jnp.finfo(logits.dtype).min)
  # Softmax is unchanged by the shift, so its gradient needs no path through
  # the max.
  shift = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
  weights = jnp.exp(logits - shift) * real
  # With any real entry the largest term is exp(0) = 1, so the total is >= 1
  # and the floor changes nothing; with none it is 0 and the floor keeps the
  # weights at 0 without a division by zero.
  total = jnp.maximum(jnp.sum(weights, axis=-1, keepdims=True), 1.0)
  return weights / total


def check_heads(width: int, num_heads: int) -> None:
  """Raises a ValueError unless `num_heads` is a positive int dividing width."""
  if (isinstance(num_heads, bool) or not isinstance(num_heads, int) or
      num_heads < 1 or width % num_heads):
    raise ValueError(
        f"num_heads must be a positive int dividing the width {width}, got "
        f"{num_heads!r}.")


def attention_init(key: types.PRNGKey, width: int, num_heads: int,
                   dtype=jnp.float32) -> types.Params:
  """Parameters of `multihead_attention` and `attention_block`.

  Args:
    key: a PRNG key.
    width: the width of queries, keys, values and outputs.
    num_heads: heads, a positive int dividing `width`.
    dtype: the parameters' float dtype.

  Returns:
    `{"query", "key", "value", "output"}`, each a `dense_init` layer
    `width -> width`, and `"norm"`, a `layer_norm_init` (used by
    `attention_block` only).
  """
  check_heads(width, num_heads)
  # One draw for the four projections: XLA compiles every random operation
  # on its own, and on a CPU that compilation is what init costs.
  w = jax.random.normal(key, (4, width, width), dtype) / math.sqrt(width)
  params = {name: {"w": w[i], "b": jnp.zeros((width,), dtype)}
            for i, name in enumerate(("query", "key", "value", "output"))}
  params["norm"] = layer_norm_init(width, dtype)
  return params


def multihead_attention(params: types.Params, queries: jax.Array,
                        keys: jax.Array, values: jax.Array, mask: jax.Array, *,
                        num_heads: int) -> jax.Array:
  """Scaled dot-product attention with `num_heads` heads over masked keys.

  Args:
    params: from `attention_init`.
    queries: float `[m, width]`.
    keys: float `[n, width]`.
    values: float `[n, width]`.
    mask: float `[n]`, 1 for a real key/value pair and 0 for padding.
    num_heads: heads, a Python int dividing `width`.

  Returns:
    Float `[m, width]`: per head, `softmax(q k^T / sqrt(width / num_heads))
    v` over the real keys, heads concatenated and projected by "output".
    With no real key the attended vector is 0 and the output is the output
    projection's bias.
  """
  width = queries.shape[-1]
  check_heads(width, num_heads)
  head = width // num_heads

  def split_heads(x):
    return x.reshape(x.shape[0], num_heads, head)

  q = split_heads(dense(params["query"], queries))
  k = split_heads(dense(params["key"], keys))
  v = split_heads(dense(params["value"], values))
  logits = jnp.einsum("mhd,nhd->hmn", q, k) / math.sqrt(head)
  weights = masked_softmax(logits, mask)
  attended = jnp.einsum("hmn,nhd->mhd", weights, v)
  return dense(params["output"], attended.reshape(queries.shape[0], width))


def attention_block(params: types.Params, queries: jax.Array,
                    keys: jax.Array, values: jax.Array, mask: jax.Array, *,
                    num_heads: int) -> jax.Array:
  """`layer_norm(queries + multihead_attention(...))`, float `[m, width]`.

  Arguments as in `multihead_attention`. For self-attention over a set,
  pass the set as queries, keys and values: each point attends to the real
  points only, so the outputs at real points do not depend on the padding.
  """
  attended = multihead_attention(params, queries, keys, values, mask,
                                 num_heads=num_heads)
  return layer_norm(params["norm"], queries + attended)
