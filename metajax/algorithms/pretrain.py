"""Whole-class pretraining with a linear probe, and born-again distillation.

The baseline of Tian, Wang, Krishnan, Tenenbaum & Isola (ECCV 2020, "a good
embedding is all you need"): no episodes in training at all. One
classifier - an embedding network and a linear head over *every* training
class - is trained by ordinary cross-entropy on batches of labelled images.
A second generation, the same network trained afresh, learns from the
first's softened predictions as well as from the labels (born-again
self-distillation). At test, the head is dropped: each episode's support
and query images are embedded, the embeddings scaled to unit length, and a
multinomial logistic regression fitted on the support embeddings labels
the queries.

As a `MetaLearner` its `meta_grad` is the classifier's gradient on a batch
of images with their training-class labels (`metajax.data.vision.episodes.
class_batch_sampler` draws them; support and query are pooled), so
`metajax.train` runs it like any learner; `adapt` keeps the support set
and `predict` fits the probe, so `metajax.evaluate` scores it on episodes
like any metric learner.
"""

from typing import Optional

import jax
import jax.numpy as jnp
import optax

from metajax import tasks as tasks_lib
from metajax import types
from metajax.algorithms.base import MetaLearner
from metajax.algorithms.base import batch_mean_grad
from metajax.algorithms.base import check_ways
from metajax.algorithms.base import classification_metrics
from metajax.algorithms.base import cross_entropy
from metajax.algorithms.base import keep_support


def unit_length(z: jax.Array) -> jax.Array:
  """`[n, d]` embeddings scaled to L2 norm 1 (a zero row stays zero)."""
  return z * jax.lax.rsqrt(jnp.maximum(jnp.sum(z * z, -1, keepdims=True),
                                       1e-12))


def fit_probe(z: jax.Array, y: jax.Array, *, ways: int, steps: int,
              c: float) -> types.Params:
  """Multinomial logistic regression on embeddings, by L-BFGS.

  Minimises the summed cross-entropy of `z @ w + b` plus `|w|^2 / (2 c)`
  (the bias is not penalised), as scikit-learn's `LogisticRegression(C=c)`
  does, from zero weights for `steps` L-BFGS iterations with a zoom line
  search (`optax.lbfgs`). The objective is strictly convex, so the result
  is a function of the data alone.

  Args:
    z: float `[n, d]` support embeddings.
    y: int `[n]` labels in [0, ways).
    ways: classes, a Python int.
    steps: L-BFGS iterations, a Python int >= 1.
    c: inverse strength of the L2 penalty, > 0.

  Returns:
    `{"w": [d, ways], "b": [ways]}`.
  """
  def objective(p):
    log_p = jax.nn.log_softmax(z @ p["w"] + p["b"])
    nll = -jnp.sum(jnp.take_along_axis(log_p, y[:, None], axis=-1))
    return nll + jnp.sum(p["w"] ** 2) / (2.0 * c)

  solver = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(objective)
  start = {"w": jnp.zeros((z.shape[-1], ways), z.dtype),
           "b": jnp.zeros((ways,), z.dtype)}

  def step(carry, _):
    p, state = carry
    value, grad = value_and_grad(p, state=state)
    updates, state = solver.update(grad, state, p, value=value, grad=grad,
                                   value_fn=objective)
    return (optax.apply_updates(p, updates), state), None

  (p, _), _ = jax.lax.scan(step, (start, solver.init(start)), None,
                           length=steps)
  return p


def pretrain(init_fn: types.ModelInitFn, embed_fn: types.ApplyFn, *,
             num_classes: int, embed_dim: int, ways: int,
             probe_steps: int = 100, probe_c: float = 1.0,
             teacher: Optional[types.MetaParams] = None,
             distill_weight: float = 0.5,
             temperature: float = 4.0) -> MetaLearner:
  """Whole-class pretraining, optionally distilled from a teacher.

  Args:
    init_fn: `init_fn(key) -> params` of the embedding network.
    embed_fn: `embed_fn(params, x) -> [n, embed_dim]` embeddings.
    num_classes: training classes, the width of the training head.
    embed_dim: the embedding's width.
    ways: classes of a test episode (the probe's outputs).
    probe_steps: L-BFGS iterations of the test-time probe (`fit_probe`).
    probe_c: the probe's inverse L2 strength (scikit-learn's C).
    teacher: meta-parameters of a trained `pretrain` learner of the same
      shapes, or None. With one, the loss is `(1 - distill_weight)` times
      the cross-entropy with the labels plus `distill_weight * T^2` times
      KL(teacher's softmax at temperature T || the student's), T =
      `temperature`: the born-again student of Tian et al. (2020), whose
      defaults these are. The teacher is fixed (no gradient reaches it).
    distill_weight: in [0, 1].
    temperature: > 0.

  Returns:
    A `MetaLearner` with meta-parameters `{"params": embedding params,
    "head": {"w": [embed_dim, num_classes], "b": [num_classes]}}`. Its
    `meta_grad` takes batches whose support and query hold images with
    labels in [0, num_classes) (pooled), and reports "loss", "accuracy"
    (of the training head) and, with a teacher, "agreement" (the fraction
    of images where student and teacher pick the same class). `adapt` keeps
    the support set; `predict(meta_params, support, x)` embeds support and
    queries in one batch (as in training, batch statistics are the
    batch's), fits the probe on the support and returns `[n_query, ways]`
    logits. The probe enters `predict`'s gradient (an attack's) as fixed.
  """
  check_ways(ways)
  check_ways(num_classes)
  if not 0.0 <= distill_weight <= 1.0:
    raise ValueError(f"distill_weight must be in [0, 1], got "
                     f"{distill_weight}.")
  if not temperature > 0:
    raise ValueError(f"temperature must be > 0, got {temperature}.")
  if not probe_c > 0:
    raise ValueError(f"probe_c must be > 0, got {probe_c}.")
  if isinstance(probe_steps, bool) or not isinstance(probe_steps, int) or (
      probe_steps < 1):
    raise ValueError(f"probe_steps must be an int >= 1, got "
                     f"{probe_steps!r}.")

  def init(key):
    return {"params": init_fn(key),
            "head": {"w": jnp.zeros((embed_dim, num_classes)),
                     "b": jnp.zeros((num_classes,))}}

  def class_logits(meta_params, x):
    z = embed_fn(meta_params["params"], x)
    return z @ meta_params["head"]["w"] + meta_params["head"]["b"]

  def task_loss(meta_params, task):
    x, y = tasks_lib.merge_sets(task)
    logits = class_logits(meta_params, x)
    metrics = classification_metrics(logits, y)
    loss = cross_entropy(logits, y)
    if teacher is None:
      return loss, metrics
    target = jax.lax.stop_gradient(class_logits(teacher, x))
    soft_t = jax.nn.log_softmax(target / temperature)
    soft_s = jax.nn.log_softmax(logits / temperature)
    kl = jnp.mean(jnp.sum(jnp.exp(soft_t) * (soft_t - soft_s), -1))
    agreement = jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(target, -1))
    return ((1.0 - distill_weight) * loss
            + distill_weight * temperature ** 2 * kl,
            dict(metrics, agreement=agreement, distill_kl=kl))

  def logits(meta_params, support, query_x):
    support_x, support_y = support
    n = support_x.shape[0]
    z = unit_length(embed_fn(meta_params["params"],
                             jnp.concatenate([support_x, query_x], axis=0)))
    # The line search is a while loop, which reverse mode cannot cross.
    probe = fit_probe(jax.lax.stop_gradient(z[:n]), support_y, ways=ways,
                      steps=probe_steps, c=probe_c)
    return z[n:] @ probe["w"] + probe["b"]

  return MetaLearner(init, batch_mean_grad(task_loss, has_aux=True),
                     keep_support("pretrain"), logits)
