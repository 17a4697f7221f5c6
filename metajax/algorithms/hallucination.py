"""Prototypical Networks with hallucinated support examples.

After Wang, Girshick, Hebert & Hariharan (CVPR 2018, "Low-shot learning
from imaginary data"): a generator ("hallucinator") turns a real support
example and a noise vector into an extra example of the same class, and is
trained end to end through the meta-learner's loss, so that it learns to
produce the examples that help classification rather than realistic ones.

Here the generator works in the embedding space of a ProtoNets embedding
network: for each class of an episode it makes `extra` embeddings
`z_seed + g([z_seed, noise])`, `g` an MLP, each seeded by one of the class's
support embeddings in turn, and the class's prototype is the mean of its
real and hallucinated embeddings. The residual form is our choice: with `g`
at zero the prototypes are ProtoNets'.

The noise is drawn from the key `meta_grad` receives, anew for every task
and step. `predict` takes no key, so at test the noise is one fixed draw
(from `test_seed`): a prediction is a function of the episode alone.
"""

from typing import Optional

import jax
import jax.numpy as jnp

from metajax import types
from metajax.algorithms.base import MetaLearner
from metajax.algorithms.base import batch_mean_grad
from metajax.algorithms.base import check_ways
from metajax.algorithms.base import classification_metrics
from metajax.algorithms.base import cross_entropy
from metajax.algorithms.base import keep_support
from metajax.algorithms.protonet import prototypes
from metajax.algorithms.protonet import squared_distances
from metajax.models import MLP


def seeds(labels: jax.Array, ways: int, extra: int):
  """Which support example seeds each hallucinated example.

  Args:
    labels: int `[n]` support labels in [0, ways), in any order.
    ways: classes, a Python int.
    extra: hallucinated examples per class, a Python int >= 1.

  Returns:
    `(index, label)`, int `[ways * extra]` each: example j of class c is
    seeded by the (j mod k)-th support example of class c (k its support
    examples, in support order) and labelled c; a class with no support
    example gets label `ways`, which `prototypes` ignores.
  """
  counts = jnp.sum(jax.nn.one_hot(labels, ways, dtype=jnp.int32), 0)
  order = jnp.argsort(labels, stable=True)  # grouped by class
  start = jnp.cumsum(counts) - counts
  c = jnp.repeat(jnp.arange(ways), extra)
  j = jnp.tile(jnp.arange(extra), ways)
  index = order[start[c] + j % jnp.maximum(counts[c], 1)]
  return index, jnp.where(counts[c] > 0, c, ways).astype(labels.dtype)


def hallucinating_protonet(init_fn: types.ModelInitFn,
                           embed_fn: types.ApplyFn, *, ways: int,
                           extra: int, embed_dim: int,
                           hidden: Optional[int] = None,
                           noise_dim: Optional[int] = None,
                           test_seed: int = 0) -> MetaLearner:
  """ProtoNets whose prototypes also average `extra` generated examples.

  Args:
    init_fn, embed_fn, ways: as in `metajax.algorithms.protonet`;
      `embed_fn` returns float `[n, embed_dim]`.
    extra: hallucinated examples per class, a Python int >= 1.
    embed_dim: the embedding's size.
    hidden: width of the generator's two hidden layers (default
      `embed_dim`).
    noise_dim: size of its noise input (default `embed_dim`).
    test_seed: seed of the fixed noise `predict` uses.

  Returns:
    A `MetaLearner` with meta-parameters `{"params": embedding params,
    "generator": generator params}`; `predict` gives `[n_query, ways]`
    logits (negative squared distances to the prototypes).
  """
  check_ways(ways)
  if isinstance(extra, bool) or not isinstance(extra, int) or extra < 1:
    raise ValueError(f"extra must be an int >= 1, got {extra!r}.")
  hidden = hidden or embed_dim
  noise_dim = noise_dim or embed_dim
  generator = MLP((hidden, hidden), embed_dim)

  def init(key):
    k_embed, k_gen = jax.random.split(key)
    return {"params": init_fn(k_embed),
            "generator": generator.init(
                k_gen, jnp.zeros((1, embed_dim + noise_dim), jnp.float32))}

  def logits(meta_params, support, query_x, key):
    support_x, support_y = support
    n = support_x.shape[0]
    z = embed_fn(meta_params["params"],
                 jnp.concatenate([support_x, query_x], axis=0))
    index, labels = seeds(support_y, ways, extra)
    seed = z[index]
    noise = jax.random.normal(key, (seed.shape[0], noise_dim), z.dtype)
    fake = seed + generator.apply(meta_params["generator"],
                                  jnp.concatenate([seed, noise], -1))
    protos = prototypes(jnp.concatenate([z[:n], fake]),
                        jnp.concatenate([support_y, labels]), ways)
    return -squared_distances(z[n:], protos)

  def task_loss(meta_params, task, key):
    out = logits(meta_params, task.support, task.query[0], key)
    return (cross_entropy(out, task.query[1]),
            classification_metrics(out, task.query[1]))

  keyed_grad = batch_mean_grad(task_loss, has_aux=True, keyed=True)

  def meta_grad(meta_params, tasks, key):
    return keyed_grad(meta_params, tasks, jax.random.PRNGKey(test_seed)
                      if key is None else key)

  def predict(meta_params, support, query_x):
    return logits(meta_params, support, query_x,
                  jax.random.PRNGKey(test_seed))

  return MetaLearner(init, meta_grad, keep_support("hallucinating_protonet"),
                     predict)
