"""Relation Networks (Sung et al., 2018): a learned similarity between maps.

An embedding network `f` maps each image to feature maps. A class is
represented by the sum (the paper's choice for K-shot) or mean of its support
examples' maps; a relation module `g` scores each (class, query) pair from the
two maps concatenated along channels,

  r(c, x) = g([sum_{i: y_i = c} f(x_i), f(x)]) in [0, 1],

and both networks are trained together by regressing the scores onto the
one-hot query labels with the mean squared error, as in the paper.

As in `matching`, the number of classes is a static `ways` given to the
builder; labels are ints in `[0, ways)`, and the meta-parameters do not depend
on it. Classes without a support example in an episode score exactly 0, so
`ways` may exceed the classes an episode has; their (empty) pairs still pass
through the relation module, though, and with batch statistics
(`TaskBatchNorm`) they shift the other scores, so prefer `ways` equal to the
episode's.

As in `protonet`, support and query images are embedded in one batch, so batch
statistics (`TaskBatchNorm`) are the episode's, in training and at test time.
"""

from typing import Callable, Literal

import jax
import jax.numpy as jnp

from metajax import types
from metajax.algorithms.base import MetaLearner
from metajax.algorithms.base import batch_mean_grad
from metajax.algorithms.base import check_ways
from metajax.algorithms.base import classification_metrics
from metajax.algorithms.base import keep_support
from metajax.algorithms.base import mse

Reduce = Literal["sum", "mean"]


def class_maps(maps: jax.Array, labels: jax.Array, ways: int,
               reduce: Reduce = "sum") -> jax.Array:
  """Sum or mean of the support maps of each class.

  Args:
    maps: `[n, ...]` float support embeddings.
    labels: int `[n]` in `[0, ways)`.
    ways: number of classes.
    reduce: "sum" or "mean"; an absent class's map is zero either way.

  Returns:
    `[ways, ...]`, the dtype of `maps`.
  """
  one_hot = jax.nn.one_hot(labels, ways, dtype=maps.dtype)
  combined = jnp.tensordot(one_hot, maps, axes=(0, 0))
  if reduce == "sum":
    return combined
  counts = jnp.maximum(jnp.sum(one_hot, axis=0), 1)
  return combined / counts.reshape((ways,) + (1,) * (maps.ndim - 1))


def relation(init_fn: types.ModelInitFn, embed_fn: types.ApplyFn,
             relation_init_fn: types.ModelInitFn,
             relation_fn: Callable[[types.Params, jax.Array], jax.Array], *,
             ways: int, reduce: Reduce = "sum") -> MetaLearner:
  """Relation Networks.

  Example, with the models of `metajax.models.relation` on 28x28 images:

    embed, rel = RelationEmbedding(64), RelationModule(64, 8)
    x = jnp.zeros((1, 28, 28, 1))
    pairs = jnp.zeros((1, 7, 7, 128))  # two 7x7x64 maps, concatenated
    learner = relation(lambda k: embed.init(k, x), embed.apply,
                       lambda k: rel.init(k, pairs), rel.apply, ways=5)

  Args:
    init_fn: `init_fn(key) -> params` of the embedding network.
    embed_fn: `embed_fn(params, x) -> [n, H, W, C]` feature maps of inputs
      `[n, ...]` (any trailing shape works if `relation_fn` accepts it: pairs
      are concatenated along the last axis).
    relation_init_fn: `relation_init_fn(key) -> params` of the relation module.
    relation_fn: `relation_fn(params, pairs [m, H, W, 2C]) -> [m]` or `[m, 1]`
      scores in [0, 1].
    ways: the number of classes, and of score columns; a positive Python
      int.
    reduce: how a class's support maps are combined, "sum" or "mean". "mean"
      keeps the relation module's inputs on one scale when the number of shots
      differs between training and test.

  Returns:
    A `MetaLearner`: meta-parameters `{"params": {"embed": ..., "relation":
    ...}}`, the two networks' parameters as the model's; the task state is
    the support set itself (it is embedded with the queries, so `adapt`
    takes no `steps`);
    `predict` gives scores `[n_query, ways]` in [0, 1]; the loss is the MSE to
    one-hot labels, and `meta_grad` also reports the query "accuracy".
  """
  check_ways(ways)
  if reduce not in ("sum", "mean"):
    raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}.")

  def init(key):
    embed_key, relation_key = jax.random.split(key)
    return {"params": {"embed": init_fn(embed_key),
                       "relation": relation_init_fn(relation_key)}}

  def predict(meta_params, support, x):
    support_x, support_y = support
    n_support, n = support_x.shape[0], x.shape[0]
    params = meta_params["params"]
    maps = embed_fn(params["embed"],
                    jnp.concatenate([support_x, x], axis=0))
    per_class = class_maps(maps[:n_support], support_y, ways, reduce)
    grid = (n, ways)
    classes = jnp.broadcast_to(per_class[None], grid + per_class.shape[1:])
    queries = jnp.broadcast_to(maps[n_support:, None], grid + maps.shape[1:])
    # [n, ways, H, W, 2C], scored as one batch of n * ways pairs.
    pairs = jnp.concatenate([classes, queries], axis=-1)
    scores = relation_fn(params["relation"],
                         pairs.reshape((n * ways,) + pairs.shape[2:]))
    present = jnp.any(support_y[:, None] == jnp.arange(ways), axis=0)
    return jnp.where(present, scores.reshape(grid), 0.0)

  def task_loss(meta_params, task):
    x, y = task.query
    scores = predict(meta_params, task.support, x)
    loss = mse(scores, jax.nn.one_hot(y, ways, dtype=scores.dtype))
    return loss, classification_metrics(scores, y)

  return MetaLearner(init, batch_mean_grad(task_loss, has_aux=True),
                     keep_support("relation"), predict)
