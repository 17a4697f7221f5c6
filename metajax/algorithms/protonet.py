"""Prototypical Networks (Snell et al., 2017).

An embedding network maps images to vectors; a class's prototype is the mean
embedding of its support examples, and a query's logits are the negative
squared Euclidean distances to the prototypes. Nothing is adapted by
gradient, so any number of ways works at test time: `ways` only fixes the
shape of one learner's outputs, and a learner built with another `ways`
shares the same meta-parameters.

Support and query images are embedded in one batch. With batch norm on
per-batch statistics (`TaskBatchNorm`), this normalises every episode by its
own statistics the same way in training and at test time.
"""

import jax
import jax.numpy as jnp

from metajax import types
from metajax.algorithms.base import MetaLearner
from metajax.algorithms.base import batch_mean_grad
from metajax.algorithms.base import check_ways
from metajax.algorithms.base import classification_metrics
from metajax.algorithms.base import cross_entropy
from metajax.algorithms.base import keep_support


def prototypes(embeddings: jax.Array, labels: jax.Array,
               ways: int) -> jax.Array:
  """Mean embedding per class: `[n, d]`, int `[n]` -> `[ways, d]`."""
  one_hot = jax.nn.one_hot(labels, ways, dtype=embeddings.dtype)
  counts = jnp.maximum(one_hot.sum(0), 1.0)
  return (one_hot.T @ embeddings) / counts[:, None]


def squared_distances(a: jax.Array, b: jax.Array) -> jax.Array:
  """`[n, d]`, `[m, d]` -> `[n, m]` squared Euclidean distances."""
  return (jnp.sum(a * a, -1)[:, None] - 2.0 * a @ b.T +
          jnp.sum(b * b, -1)[None, :])


def protonet(init_fn: types.ModelInitFn, embed_fn: types.ApplyFn, *,
             ways: int) -> MetaLearner:
  """Prototypical Networks for `ways`-way episodes.

  Args:
    init_fn: `init_fn(key) -> params` of the embedding network.
    embed_fn: `embed_fn(params, x) -> [n, d]` embeddings.
    ways: classes per episode, a positive Python int; labels are ints in
      [0, ways).

  Returns:
    A `MetaLearner` with meta-parameters `{"params": params}`. Its task state
    is the support set itself, because the support is embedded together with
    the query set in `predict` (so `adapt` takes no `steps`); `predict`
    returns `[n_query, ways]` logits.
  """
  check_ways(ways)

  def logits(meta_params, support, query_x):
    support_x, support_y = support
    n = support_x.shape[0]
    z = embed_fn(meta_params["params"],
                 jnp.concatenate([support_x, query_x], axis=0))
    protos = prototypes(z[:n], support_y, ways)
    return -squared_distances(z[n:], protos)

  def task_loss(meta_params, task):
    out = logits(meta_params, task.support, task.query[0])
    return (cross_entropy(out, task.query[1]),
            classification_metrics(out, task.query[1]))

  return MetaLearner(
      init=lambda key: {"params": init_fn(key)},
      meta_grad=batch_mean_grad(task_loss, has_aux=True),
      adapt=keep_support("protonet"),
      predict=logits)
