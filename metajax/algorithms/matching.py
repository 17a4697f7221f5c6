"""Matching Networks (Vinyals et al., 2016), without full-context embeddings.

A query `x` is classified by attention over the labelled support set:

  p(c | x) = sum_i a(x, x_i) [y_i = c],
  a(x, x_i) = softmax_i(scale * cos(f(x), f(x_i))),

with one embedding network `f` for both sets. This is the paper's model with
the plain embedding; the full-context embeddings (a bidirectional LSTM over the
support set and an attention LSTM for the query) are not implemented.

`predict` returns the log-probabilities `log p(c | x)`, so `argmax` is the
predicted class and the training loss is the cross-entropy of the true label.
They are computed as a log-sum-exp of the scaled similarities over each class's
support examples minus one over all of them, which stays finite however sharp
the attention.

The number of classes must be a static shape under `jit`, and the values of
the labels are not, so the builder takes `ways`: labels are ints in
`[0, ways)`, and `predict` returns `ways` columns. A class with no support
example in an episode gets probability 0 (log-probability -inf), so `ways` may
exceed the classes an episode has. The meta-parameters do not depend on it: a
learner trained on 5-way episodes is tested on 20-way ones by building a
second learner with `ways=20` and using the same meta-parameters.

As in `protonet`, support and query images are embedded in one batch, so batch
statistics (`TaskBatchNorm`) are the episode's, in training and at test time.
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


def _unit_rows(z: jax.Array) -> jax.Array:
  """Flattens `[n, ...]` embeddings to `[n, d]` rows of unit length."""
  z = z.reshape(z.shape[0], -1)
  # The small constant keeps the gradient finite at an all-zero embedding
  # (possible after a ReLU); such a row has similarity 0 to everything.
  return z * jax.lax.rsqrt(jnp.sum(jnp.square(z), axis=-1, keepdims=True)
                           + 1e-12)


def attention_log_probs(scores: jax.Array, one_hot: jax.Array) -> jax.Array:
  """`log(softmax(scores) @ one_hot)`, computed stably.

  Args:
    scores: `[n_query, n_support]` float attention logits.
    one_hot: `[n_support, ways]` one-hot support labels (0 or 1).

  Returns:
    `[n_query, ways]` log-probabilities, the dtype of `scores`; -inf in the
    columns of classes without a support example.
  """
  member = one_hot > 0
  present = jnp.any(member, axis=0)
  # An absent class pools over every support example instead: a finite
  # stand-in, replaced by -inf below, so that no 0 * inf reaches the gradient.
  member = member | ~present
  per_class = jnp.where(member[None], scores[:, :, None], -jnp.inf)
  log_probs = (jax.nn.logsumexp(per_class, axis=1)
               - jax.nn.logsumexp(scores, axis=1, keepdims=True))
  return jnp.where(present, log_probs, -jnp.inf)


def matching(init_fn: types.ModelInitFn, embed_fn: types.ApplyFn, *,
             ways: int, scale: float = 1.0) -> MetaLearner:
  """Matching Networks with cosine attention and no full-context embeddings.

  Args:
    init_fn: `init_fn(key) -> params` of the embedding network.
    embed_fn: `embed_fn(params, x) -> [n, ...]` float embeddings of the
      inputs `x` `[n, ...]` (flattened to vectors), e.g. `Conv4(None).apply`.
    ways: the number of classes, and of columns of the predictions; labels
      are int `[n]` in `[0, ways)` (see the module docstring).
    scale: multiplies the cosine similarities before the softmax. The paper
      uses 1, which bounds how peaked the attention can be (in 5-way 1-shot
      no class gets a probability above 0.65); larger values sharpen it.

  Returns:
    A `MetaLearner`: meta-parameters `{"params": params}`; the task state is
    the support set itself (it is embedded with the queries, so `adapt` takes
    no `steps`); `predict` gives
    log-probabilities `[n_query, ways]`; the loss is the query cross-entropy,
    and `meta_grad` also reports the query "accuracy".
  """
  check_ways(ways)

  def init(key):
    return {"params": init_fn(key)}

  def predict(meta_params, support, x):
    support_x, support_y = support
    n = support_x.shape[0]
    z = _unit_rows(embed_fn(meta_params["params"],
                            jnp.concatenate([support_x, x], axis=0)))
    one_hot = jax.nn.one_hot(support_y, ways, dtype=z.dtype)
    return attention_log_probs(scale * z[n:] @ z[:n].T, one_hot)

  def task_loss(meta_params, task):
    x, y = task.query
    log_probs = predict(meta_params, task.support, x)
    return cross_entropy(log_probs, y), classification_metrics(log_probs, y)

  return MetaLearner(init, batch_mean_grad(task_loss, has_aux=True),
                     keep_support("matching"), predict)
