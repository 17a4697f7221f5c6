"""Neural processes: conditional, latent and attentive, as metajax learners.

A neural process (NP) maps a *context* set of labelled points to a
predictive distribution over the targets at any inputs, by a forward pass:
"adapting" to a task is encoding its context. Three models are built here:

* `conditional_np`: the CNP of Garnelo et al. (2018a), "Conditional Neural
  Processes": an MLP encodes each pair `(x_i, y_i)`, a mean over the context
  gives `r`, and a decoder MLP of `(r, x*)` gives a Gaussian for `y*`.
* `latent_np`: the NP of Garnelo et al. (2018b), "Neural Processes": a
  global latent `z` with a Gaussian `q(z | set)` from a mean over the set,
  a decoder of `(z, x*)`, and optionally the CNP's deterministic `r` too.
* `attentive_np`: the ANP of Kim et al. (2019), "Attentive Neural
  Processes": the deterministic path self-attends over the context and
  cross-attends from each target, so every target gets its own `r*`; with
  `latent=False` it is the deterministic "CANP".

Data. A task is `Task(support, query)` and each set is `(x, (y, mask))`:
x float `[n, dx]`, y float `[n, dy]`, mask float `[n]`, 1 for a real point
and 0 for padding (as `metajax.data.gp` writes them; padded x and y must be
finite, e.g. zeros). The support is the context, the query the target set.
Every aggregation over a set is masked, so a padded point changes nothing,
and an empty (all-masked) context gives finite outputs: its masked mean is
the zero vector and attention to it gives zero weights. Losses and
log-likelihoods average over the real target points only, as
`sum(ll * mask) / max(sum(mask), 1)`.

API. Each builder returns a `NeuralProcess`, a NamedTuple of the model's own
pure functions (`init`, `encode`, `latent`, `decode`); the functions of this
module read any of the three models:

* `as_learner(model)` is the `MetaLearner` (training and `adapt`/`predict`);
* `task_loss(model, meta_params, task, key)` is one task's training loss;
* `log_likelihood(model, meta_params, support, query, *, key, num_samples)`
  is one task's predictive log-likelihood per target point, the evaluation
  metric (`pointwise_log_likelihood` gives it point by point).

The model is a Python object of functions: close over it (it cannot be an
argument of `jax.jit`); `meta_params` are the arrays.

Task state and `predict`. `adapt(meta_params, support)` returns a
`ContextState`: the deterministic encoding of the context (`r [d]`, or for
the ANP the context's attention keys and values with their mask) and the
prior `q(z | context)` of latent models. `predict(meta_params, state, x)`
returns float `[n, 2 * dy]`, the predictive mean then the predictive std on
the last axis; latent models decode at `z` = the mean of `q(z | context)`,
so `predict` is deterministic (it is not the mean of the predictive mixture).

Standard deviations. The output std is `min_std + (1 - min_std) *
softplus(raw)` (the ANP paper's bound with `min_std=0.1`), the latent std
`min_latent_std + (1 - min_latent_std) * sigmoid(raw)`, in (0.1, 1) by
default as in the ANP paper.

Training objective (`task_loss`), per task, divided by the number `N_T` of
real target points:

* CNP: `-(1 / N_T) sum_t log N(y_t; mu(x_t), sigma(x_t))`, the negative
  mean Gaussian log-likelihood of the targets (`log N` sums over the `dy`
  output dimensions).
* Latent models: the negative conditional ELBO of the NP/ANP papers,
  `-(1 / N_T) [sum_t log p(y_t | z, x_t) - KL(q(z | C u T) || q(z | C))]`
  with one reparameterised sample `z ~ q(z | C u T)` per task per step.
  Both terms are divided by `N_T`, so the loss is the ELBO per target point.
  `C u T` is the concatenation of the support and query arrays along the
  point axis with their masks: a point real in either set is in it. If a
  sampler also puts the context points in the query set (as the NP papers'
  GP data do), they are then in the concatenation twice and count twice in
  the posterior's mean; nothing else changes.

Evaluation (`log_likelihood`). Deterministic models (CNP, CANP): the exact
Gaussian log-density per target point. Latent models: the Monte Carlo estimate of the NP literature
(e.g. the TNP paper's evaluation): draw `K = num_samples` latents
`z_k ~ q(z | C)` (the prior, no importance weighting), shared by all target
points of the task, and per point estimate
`log p(y_t | x_t, C) ~ logsumexp_k log N(y_t; mu(z_k, x_t), sigma(z_k, x_t))
- log K`; then average over the real target points. By Jensen's inequality
its expectation is a lower bound on the true log-likelihood that tightens as
`K` grows; it is a per-point (marginal) estimate, not the joint likelihood
of the target set.
"""

import math
from typing import Callable, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp

from metajax import tasks as tasks_lib
from metajax import types
from metajax.algorithms.base import MetaLearner
from metajax.algorithms.base import refuse_steps
from metajax.models import attention


class Gaussian(NamedTuple):
  """A diagonal Gaussian: `mean` and `std` with the same shape, std > 0."""
  mean: jax.Array
  std: jax.Array


class AttentionContext(NamedTuple):
  """The ANP's encoded context, what cross-attention reads.

  Attributes:
    keys: float `[n, d]`, the embedded context inputs.
    values: float `[n, d]`, the self-attended representations of the pairs.
    mask: float `[n]`, the context mask (1 real, 0 padding).
  """
  keys: jax.Array
  values: jax.Array
  mask: jax.Array


class ContextState(NamedTuple):
  """What `encode` (and the learner's `adapt`) returns for one context.

  Attributes:
    deterministic: the deterministic path's encoding: float `r [d]` (CNP,
      latent NP with `deterministic_path`), an `AttentionContext` (ANP), or
      None (latent NP without a deterministic path).
    prior: `q(z | context)`, a `Gaussian` with leaves `[latent_dim]`, for
      latent models; None for deterministic ones.
  """
  deterministic: types.PyTree
  prior: Optional[Gaussian]


class NeuralProcess(NamedTuple):
  """A neural process as pure functions; see the module docstring.

  Sets are `(x [n, dx], (y [n, dy], mask [n]))` of one task (no task axis);
  `meta_params` is what `init` returns.

  Attributes:
    init: `init(key) -> {"params": params}`.
    encode: `encode(meta_params, context) -> ContextState`.
    latent: `latent(meta_params, set) -> Gaussian` `q(z | set)` with leaves
      `[latent_dim]`; None for a model without a latent path.
    decode: `decode(meta_params, state, x, z) -> (mean, std)`, each float
      `[n, dy]` for inputs x `[n, dx]`; `z` is float `[latent_dim]`, or None
      for a model without a latent path.
    dx: the input width.
    dy: the output width.
    latent_dim: the width of `z`, 0 without a latent path.
    name: the model's name, for errors.
  """
  init: types.InitFn
  encode: Callable[[types.MetaParams, types.Examples], ContextState]
  latent: Optional[Callable[[types.MetaParams, types.Examples], Gaussian]]
  decode: Callable[..., Tuple[jax.Array, jax.Array]]
  dx: int
  dy: int
  latent_dim: int
  name: str


# Building blocks.


def mlp_init(key: types.PRNGKey, sizes: Sequence[int],
             dtype=jnp.float32) -> types.Params:
  """An MLP's layers: a list of `{"w": [fan_in, fan_out], "b": [fan_out]}`.

  Weights as in `attention.dense_init` (normal, variance `1 / fan_in`),
  biases zero.

  Args:
    key: a PRNG key.
    sizes: `(input width, hidden widths..., output width)`, at least two.
    dtype: the parameters' float dtype.
  """
  if len(sizes) < 2:
    raise ValueError(f"an MLP needs at least two sizes, got {sizes!r}.")
  shapes = list(zip(sizes[:-1], sizes[1:]))
  # One draw for all the layers: XLA compiles every random operation on its
  # own, and on a CPU that compilation, not the arithmetic, is what init
  # costs.
  flat = jax.random.normal(key, (sum(a * b for a, b in shapes),), dtype)
  layers, start = [], 0
  for fan_in, fan_out in shapes:
    w = flat[start:start + fan_in * fan_out].reshape(fan_in, fan_out)
    layers.append({"w": w / math.sqrt(fan_in),
                   "b": jnp.zeros((fan_out,), dtype)})
    start += fan_in * fan_out
  return layers


def mlp(params: types.Params, x: jax.Array) -> jax.Array:
  """`[..., in]` -> `[..., out]`: dense layers with ReLUs between them."""
  for layer in params[:-1]:
    x = jax.nn.relu(attention.dense(layer, x))
  return attention.dense(params[-1], x)


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of `values` `[n, ...]` over the rows where float `mask` `[n]` is 1.

  Padded rows are selected away rather than multiplied by 0, so that an inf
  or NaN there cannot leak into the mean.

  Returns:
    float `values.shape[1:]`; zeros when no row is real.
  """
  real = (mask > 0).reshape(mask.shape + (1,) * (values.ndim - 1))
  count = jnp.maximum(jnp.sum(mask), 1.0)
  return jnp.sum(jnp.where(real, values, 0.0), axis=0) / count


def gaussian_log_density(y: jax.Array, mean: jax.Array,
                         std: jax.Array) -> jax.Array:
  """Log-density of `y` under a diagonal Gaussian, summed over the last axis.

  `y`, `mean`, `std`: float `[..., dy]`; returns float `[...]`.
  """
  z = (y - mean) / std
  return jnp.sum(-0.5 * jnp.square(z) - jnp.log(std) -
                 0.5 * math.log(2.0 * math.pi), axis=-1)


def gaussian_kl(p: Gaussian, q: Gaussian) -> jax.Array:
  """`KL(p || q)` of two diagonal Gaussians in closed form, summed over dims.

  Leaves float `[..., d]`; returns float `[...]`.
  """
  var_ratio = jnp.square(p.std / q.std)
  mean_term = jnp.square((p.mean - q.mean) / q.std)
  return 0.5 * jnp.sum(var_ratio + mean_term - 1.0 - jnp.log(var_ratio),
                       axis=-1)


def bounded_std(raw: jax.Array, min_std: float) -> jax.Array:
  """The output std `min_std + (1 - min_std) * softplus(raw)`."""
  return min_std + (1.0 - min_std) * jax.nn.softplus(raw)


def bounded_latent_std(raw: jax.Array, min_std: float) -> jax.Array:
  """The latent std `min_std + (1 - min_std) * sigmoid(raw)`, in (min_std, 1).

  The lower bound keeps `q(z | set)` from collapsing to a point (and the KL
  finite); the upper one keeps samples of `z` on a unit scale, which the
  decoder's input layer was initialised for.
  """
  return min_std + (1.0 - min_std) * jax.nn.sigmoid(raw)


def _check_std(name: str, value: float) -> None:
  if not 0.0 <= value < 1.0:
    raise ValueError(f"{name} must be in [0, 1), got {value!r}.")


def _check_widths(name: str, widths: Sequence[int]) -> None:
  if not widths or any(isinstance(w, bool) or not isinstance(w, int) or w < 1
                       for w in widths):
    raise ValueError(
        f"{name} must be a non-empty sequence of positive ints, got "
        f"{widths!r}.")


def _check_set(examples: types.Examples, dx: int, dy: int, what: str) -> None:
  """Raises a ValueError unless `examples` is `(x [n, dx], (y [n, dy], m [n]))`.

  Shapes are static, so this runs once at trace time.
  """
  try:
    x, (y, mask) = examples
  except (TypeError, ValueError):
    raise ValueError(
        f"the {what} set must be (x, (y, mask)); got "
        f"{jax.tree.map(jnp.shape, examples)}.") from None
  n = jnp.shape(x)[0] if jnp.ndim(x) else None
  if (jnp.shape(x) != (n, dx) or jnp.shape(y) != (n, dy) or
      jnp.shape(mask) != (n,)):
    raise ValueError(
        f"the {what} set must have x [n, {dx}], y [n, {dy}] and mask [n] "
        f"(one task, no task axis); got x {jnp.shape(x)}, y {jnp.shape(y)}, "
        f"mask {jnp.shape(mask)}.")


def _pairs(examples: types.Examples) -> Tuple[jax.Array, jax.Array]:
  """`(x, (y, mask))` -> concatenated `[x, y]` `[n, dx + dy]` and the mask."""
  x, (y, mask) = examples
  return jnp.concatenate([x, y], axis=-1), mask


def union(context: types.Examples, target: types.Examples) -> types.Examples:
  """`C u T`: both sets concatenated along the point axis, masks included.

  A point is real in the union iff it is real in its own set; points in
  both sets appear twice.
  """
  return jax.tree.map(lambda c, t: jnp.concatenate([c, t], axis=0),
                      context, target)


def _latent_path_init(key, in_width, widths, latent_dim, dtype):
  """The latent path's parameters, as in the ANP paper.

  "points": the per-point MLP `in_width -> widths`; "head", applied to the
  masked mean: a dense ReLU layer of width `widths[-1]`, then a linear layer
  to the mean and raw std of `z`, `2 * latent_dim`.
  """
  k_points, k_head = jax.random.split(key)
  return {"points": mlp_init(k_points, (in_width,) + tuple(widths), dtype),
          "head": mlp_init(k_head, (widths[-1], widths[-1], 2 * latent_dim),
                           dtype)}


def _latent_path(params, examples, latent_dim, min_latent_std) -> Gaussian:
  pairs, mask = _pairs(examples)
  s = masked_mean(mlp(params["points"], pairs), mask)
  out = mlp(params["head"], s)
  return Gaussian(out[:latent_dim],
                  bounded_latent_std(out[latent_dim:], min_latent_std))


def _gaussian_output(out: jax.Array, dy: int,
                     min_std: float) -> Tuple[jax.Array, jax.Array]:
  return out[:, :dy], bounded_std(out[:, dy:], min_std)


def _tile(vector: Optional[jax.Array], n: int) -> Sequence[jax.Array]:
  """`[d]` -> `[[n, d]]` to concatenate with per-point inputs; None -> []."""
  if vector is None:
    return []
  return [jnp.broadcast_to(vector, (n,) + vector.shape)]


# The three models.


def conditional_np(dx: int, dy: int, *,
                   encoder_widths: Sequence[int] = (128, 128, 128),
                   decoder_widths: Sequence[int] = (128, 128),
                   min_std: float = 0.1,
                   dtype=jnp.float32) -> NeuralProcess:
  """The conditional neural process (CNP) of Garnelo et al. (2018a).

  `r = masked mean_i encoder([x_i, y_i])`, `(mu, raw) = decoder([r, x*])`,
  std `min_std + (1 - min_std) * softplus(raw)`.

  Args:
    dx: input width.
    dy: output width.
    encoder_widths: the encoder MLP's layer widths; the last is the width of
      `r`.
    decoder_widths: the decoder MLP's hidden widths (its output is `2 dy`).
    min_std: the output std's lower bound, in [0, 1).
    dtype: the parameters' float dtype.

  Returns:
    A `NeuralProcess` with meta-parameters `{"params": {"encoder",
    "decoder"}}`, each a list of dense layers; `as_learner` makes it a
    `MetaLearner`.
  """
  _check_widths("encoder_widths", encoder_widths)
  _check_widths("decoder_widths", decoder_widths)
  _check_std("min_std", min_std)
  r_width = encoder_widths[-1]

  def init(key):
    k_enc, k_dec = jax.random.split(key)
    return {"params": {
        "encoder": mlp_init(k_enc, (dx + dy,) + tuple(encoder_widths), dtype),
        "decoder": mlp_init(
            k_dec, (r_width + dx,) + tuple(decoder_widths) + (2 * dy,),
            dtype)}}

  def encode(meta_params, context):
    _check_set(context, dx, dy, "context")
    pairs, mask = _pairs(context)
    r = masked_mean(mlp(meta_params["params"]["encoder"], pairs), mask)
    return ContextState(deterministic=r, prior=None)

  def decode(meta_params, state, x, z=None):
    del z
    inputs = jnp.concatenate(_tile(state.deterministic, x.shape[0]) + [x],
                             axis=-1)
    out = mlp(meta_params["params"]["decoder"], inputs)
    return _gaussian_output(out, dy, min_std)

  return NeuralProcess(init=init, encode=encode, latent=None, decode=decode,
                       dx=dx, dy=dy, latent_dim=0, name="conditional_np")


def latent_np(dx: int, dy: int, *,
              latent_dim: int = 128,
              latent_widths: Sequence[int] = (128, 128, 128),
              deterministic_path: bool = False,
              encoder_widths: Sequence[int] = (128, 128, 128),
              decoder_widths: Sequence[int] = (128, 128),
              min_std: float = 0.1,
              min_latent_std: float = 0.1,
              dtype=jnp.float32) -> NeuralProcess:
  """The (latent) neural process (NP) of Garnelo et al. (2018b).

  Latent path: `s = masked mean_i MLP([x_i, y_i])`, then a dense ReLU layer
  and a linear layer give the mean and raw std of `q(z | set)`, std
  `min_latent_std + (1 - min_latent_std) * sigmoid(raw)`. The decoder maps
  `[z, x*]` (or `[r, z, x*]` with the deterministic path, `r` as in the CNP)
  to the mean and std of `y*`.

  Args:
    dx: input width.
    dy: output width.
    latent_dim: the width of `z`.
    latent_widths: the latent path's per-point MLP widths; the last is also
      the width of the hidden layer after the mean.
    deterministic_path: whether the decoder also reads the CNP's `r`.
    encoder_widths: the deterministic encoder's widths (used only with
      `deterministic_path`); the last is the width of `r`.
    decoder_widths: the decoder's hidden widths.
    min_std: the output std's lower bound, in [0, 1).
    min_latent_std: the latent std's lower bound, in [0, 1).
    dtype: the parameters' float dtype.

  Returns:
    A `NeuralProcess` with meta-parameters `{"params": {"latent",
    "decoder"[, "encoder"]}}`.
  """
  _check_widths("latent_widths", latent_widths)
  _check_widths("decoder_widths", decoder_widths)
  _check_widths("latent_dim", (latent_dim,))
  _check_std("min_std", min_std)
  _check_std("min_latent_std", min_latent_std)
  if deterministic_path:
    _check_widths("encoder_widths", encoder_widths)
  r_width = encoder_widths[-1] if deterministic_path else 0

  def init(key):
    k_lat, k_enc, k_dec = jax.random.split(key, 3)
    params = {
        "latent": _latent_path_init(k_lat, dx + dy, tuple(latent_widths),
                                    latent_dim, dtype),
        "decoder": mlp_init(
            k_dec,
            (r_width + latent_dim + dx,) + tuple(decoder_widths) + (2 * dy,),
            dtype)}
    if deterministic_path:
      params["encoder"] = mlp_init(
          k_enc, (dx + dy,) + tuple(encoder_widths), dtype)
    return {"params": params}

  def latent(meta_params, examples):
    return _latent_path(meta_params["params"]["latent"], examples, latent_dim,
                        min_latent_std)

  def encode(meta_params, context):
    _check_set(context, dx, dy, "context")
    r = None
    if deterministic_path:
      pairs, mask = _pairs(context)
      r = masked_mean(mlp(meta_params["params"]["encoder"], pairs), mask)
    return ContextState(deterministic=r, prior=latent(meta_params, context))

  def decode(meta_params, state, x, z):
    n = x.shape[0]
    inputs = jnp.concatenate(
        _tile(state.deterministic, n) + _tile(z, n) + [x], axis=-1)
    out = mlp(meta_params["params"]["decoder"], inputs)
    return _gaussian_output(out, dy, min_std)

  return NeuralProcess(init=init, encode=encode, latent=latent, decode=decode,
                       dx=dx, dy=dy, latent_dim=latent_dim, name="latent_np")


def attentive_np(dx: int, dy: int, *,
                 width: int = 128,
                 num_heads: int = 8,
                 self_attention_layers: int = 2,
                 encoder_widths: Sequence[int] = (128, 128),
                 latent: bool = True,
                 latent_dim: int = 128,
                 latent_widths: Sequence[int] = (128, 128, 128),
                 decoder_widths: Sequence[int] = (128, 128),
                 min_std: float = 0.1,
                 min_latent_std: float = 0.1,
                 dtype=jnp.float32) -> NeuralProcess:
  """The attentive neural process (ANP) of Kim et al. (2019).

  Deterministic path: `v_i = MLP([x_i, y_i])` (width `width`), then
  `self_attention_layers` masked self-attention blocks over the context
  (`attention.attention_block`, each `layer_norm(v + MHA(v, v, v))`); a
  target's `r* = layer_norm(q + MHA(q, K, V))` with queries `q = e(x*)`, keys
  `K = e(x_i)` for a shared two-layer MLP `e` of width `width`, and values
  `V` the self-attended `v_i`. Masked-out context points get zero attention.
  Latent path (with `latent`): as in `latent_np` (a masked mean, no
  attention). Decoder: `[r*, z, x*]` -> mean and std of `y*`.

  Args:
    dx: input width.
    dy: output width.
    width: the attention width (of `v_i`, keys, queries and `r*`).
    num_heads: attention heads, a positive int dividing `width`.
    self_attention_layers: self-attention blocks over the context, >= 0.
    encoder_widths: the hidden widths of the pair MLP before self-attention
      (its output is `width`).
    latent: whether there is a latent path; False gives the deterministic
      CANP, trained and evaluated like a CNP.
    latent_dim: the width of `z`.
    latent_widths: the latent path's per-point MLP widths.
    decoder_widths: the decoder's hidden widths.
    min_std: the output std's lower bound, in [0, 1).
    min_latent_std: the latent std's lower bound, in [0, 1).
    dtype: the parameters' float dtype.

  Returns:
    A `NeuralProcess` with meta-parameters `{"params": {"encoder",
    "self_attention", "embed", "cross_attention", "decoder"[, "latent"]}}`;
    its task state's `deterministic` is an `AttentionContext`.
  """
  _check_widths("width", (width,))
  attention.check_heads(width, num_heads)
  if (isinstance(self_attention_layers, bool) or
      not isinstance(self_attention_layers, int) or self_attention_layers < 0):
    raise ValueError(
        f"self_attention_layers must be an int >= 0, got "
        f"{self_attention_layers!r}.")
  _check_widths("decoder_widths", decoder_widths)
  _check_std("min_std", min_std)
  if latent:
    _check_widths("latent_widths", latent_widths)
    _check_widths("latent_dim", (latent_dim,))
    _check_std("min_latent_std", min_latent_std)
  z_width = latent_dim if latent else 0

  def init(key):
    k_enc, k_self, k_emb, k_cross, k_lat, k_dec = jax.random.split(key, 6)
    params = {
        "encoder": mlp_init(
            k_enc, (dx + dy,) + tuple(encoder_widths) + (width,), dtype),
        "self_attention": [
            attention.attention_init(k, width, num_heads, dtype)
            for k in jax.random.split(k_self, self_attention_layers)],
        "embed": mlp_init(k_emb, (dx, width, width), dtype),
        "cross_attention": attention.attention_init(k_cross, width,
                                                    num_heads, dtype),
        "decoder": mlp_init(
            k_dec, (width + z_width + dx,) + tuple(decoder_widths) + (2 * dy,),
            dtype)}
    if latent:
      params["latent"] = _latent_path_init(k_lat, dx + dy,
                                           tuple(latent_widths), latent_dim,
                                           dtype)
    return {"params": params}

  def latent_fn(meta_params, examples):
    return _latent_path(meta_params["params"]["latent"], examples, latent_dim,
                        min_latent_std)

  def encode(meta_params, context):
    _check_set(context, dx, dy, "context")
    params = meta_params["params"]
    pairs, mask = _pairs(context)
    values = mlp(params["encoder"], pairs)
    for block in params["self_attention"]:
      values = attention.attention_block(block, values, values, values, mask,
                                         num_heads=num_heads)
    keys = mlp(params["embed"], context[0])
    return ContextState(
        deterministic=AttentionContext(keys, values, mask),
        prior=latent_fn(meta_params, context) if latent else None)

  def decode(meta_params, state, x, z=None):
    params = meta_params["params"]
    ctx = state.deterministic
    r = attention.attention_block(
        params["cross_attention"], mlp(params["embed"], x), ctx.keys,
        ctx.values, ctx.mask, num_heads=num_heads)
    inputs = jnp.concatenate(
        [r] + (_tile(z, x.shape[0]) if latent else []) + [x], axis=-1)
    out = mlp(params["decoder"], inputs)
    return _gaussian_output(out, dy, min_std)

  return NeuralProcess(
      init=init, encode=encode, latent=latent_fn if latent else None,
      decode=decode, dx=dx, dy=dy, latent_dim=z_width,
      name="attentive_np" if latent else "attentive_cnp")


# Training and evaluation, for any of the models.


def _need_key(model: NeuralProcess, key, what: str) -> None:
  if key is None:
    raise ValueError(
        f"{model.name} has a latent path, so {what} samples z and needs a "
        f"PRNG key; got key=None.")


def _masked_point_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
  """`sum(values * mask) / max(sum(mask), 1)` over points `[n]`; scalar.

  `where`, not a product, so a padded point's value cannot be NaN * 0.
  """
  total = jnp.sum(jnp.where(mask > 0, values, 0.0))
  return total / jnp.maximum(jnp.sum(mask), 1.0)


def task_loss(model: NeuralProcess, meta_params: types.MetaParams,
              task: tasks_lib.Task,
              key: Optional[types.PRNGKey] = None
              ) -> Tuple[jax.Array, types.Metrics]:
  """One task's training loss, per real target point; see the module docstring.

  Args:
    model: a `NeuralProcess`.
    meta_params: its meta-parameters.
    task: one task `Task(context, target)`, sets `(x, (y, mask))` without a
      task axis.
    key: a PRNG key for the sample of `z ~ q(z | C u T)`, drawn as
      `mean + std * jax.random.normal(key, [latent_dim])`; needed by latent
      models, ignored (may be None) by deterministic ones.

  Returns:
    `(loss, metrics)`: the scalar loss (negative log-likelihood per target
    point for deterministic models, negative ELBO per target point for
    latent ones) and `{"nll": ..., "kl": ...}` per target point (the
    negative log-likelihood of the targets, under the sampled `z` for
    latent models, and the KL term, absent for deterministic models).
  """
  state = model.encode(meta_params, task.support)
  x, (y, mask) = task.query
  _check_set(task.query, model.dx, model.dy, "target")
  if model.latent is None:
    mean, std = model.decode(meta_params, state, x, None)
    nll = -_masked_point_mean(gaussian_log_density(y, mean, std), mask)
    return nll, {"nll": nll}
  _need_key(model, key, "the training loss")
  posterior = model.latent(meta_params, union(task.support, task.query))
  eps = jax.random.normal(key, posterior.mean.shape, posterior.mean.dtype)
  z = posterior.mean + posterior.std * eps
  mean, std = model.decode(meta_params, state, x, z)
  nll = -_masked_point_mean(gaussian_log_density(y, mean, std), mask)
  kl = gaussian_kl(posterior, state.prior) / jnp.maximum(jnp.sum(mask), 1.0)
  return nll + kl, {"nll": nll, "kl": kl}


def as_learner(model: NeuralProcess) -> MetaLearner:
  """The `MetaLearner` of a neural process.

  * `init(key) -> {"params": ...}`, the model's.
  * `meta_grad(meta_params, tasks, key)`: the gradient of the mean over the
    batch of `task_loss`, the tasks vmapped with one key each, split from
    `key` (`jax.random.split(key, B)[b]` for task `b`); latent models need
    a key, deterministic ones accept None. Metrics: "loss" and those of
    `task_loss`, averaged over the batch.
  * `adapt(meta_params, support, *, steps=None) -> ContextState`: encodes
    the context by a forward pass; any `steps` but None raises a
    ValueError.
  * `predict(meta_params, state, x) -> [n, 2 * dy]`: the predictive mean
    and std concatenated on the last axis, at `z` = the mean of
    `q(z | context)` for latent models.
  """
  def meta_grad(meta_params, tasks, key):
    if model.latent is not None:
      _need_key(model, key, "meta_grad")
    n = tasks_lib.num_tasks(tasks)

    def mean_loss(mp):
      if key is None:
        losses, metrics = jax.vmap(
            lambda t: task_loss(model, mp, t, None))(tasks)
      else:
        losses, metrics = jax.vmap(
            lambda t, k: task_loss(model, mp, t, k))(
                tasks, jax.random.split(key, n))
      return jnp.mean(losses), jax.tree.map(jnp.mean, metrics)

    (loss, metrics), grads = jax.value_and_grad(mean_loss, has_aux=True)(
        meta_params)
    return grads, dict(metrics, loss=loss)

  def adapt(meta_params, support, *, steps=None):
    refuse_steps(model.name, "adapting encodes the support set (the "
                 "context) by a forward pass", steps)
    return model.encode(meta_params, support)

  def predict(meta_params, state, inputs):
    z = None if state.prior is None else state.prior.mean
    mean, std = model.decode(meta_params, state, inputs, z)
    return jnp.concatenate([mean, std], axis=-1)

  return MetaLearner(init=model.init, meta_grad=meta_grad, adapt=adapt,
                     predict=predict)


def pointwise_log_likelihood(model: NeuralProcess,
                             meta_params: types.MetaParams,
                             support: types.Examples, query: types.Examples,
                             *, key: Optional[types.PRNGKey] = None,
                             num_samples: Optional[int] = None) -> jax.Array:
  """Per-point predictive log-likelihood of one task's target y's.

  Args:
    model: a `NeuralProcess`.
    meta_params: its meta-parameters.
    support: the context set `(x, (y, mask))`.
    query: the target set `(x, (y, mask))`.
    key: for latent models, the PRNG key of the samples `z_k =
      mean + std * jax.random.normal(key, [num_samples, latent_dim])` of
      `q(z | context)`; ignored by deterministic models.
    num_samples: for latent models, `K >= 1`, required; ignored by
      deterministic models.

  Returns:
    Float `[n_query]`: `log N(y_t; mu(x_t), sigma(x_t))` summed over the
    `dy` outputs, exact for deterministic models and for latent ones the
    Monte Carlo estimate `logsumexp_k log N(y_t; mu(z_k, x_t),
    sigma(z_k, x_t)) - log K` (see the module docstring); 0 at padded points.
  """
  _check_set(query, model.dx, model.dy, "target")
  if model.latent is not None:
    _need_key(model, key, "log_likelihood")
    if (isinstance(num_samples, bool) or not isinstance(num_samples, int) or
        num_samples < 1):
      raise ValueError(
          f"{model.name} estimates the log-likelihood by Monte Carlo: "
          f"num_samples must be an int >= 1, got {num_samples!r}.")
  state = model.encode(meta_params, support)
  x, (y, mask) = query
  if model.latent is None:
    mean, std = model.decode(meta_params, state, x, None)
    ll = gaussian_log_density(y, mean, std)
  else:
    prior = state.prior
    eps = jax.random.normal(key, (num_samples,) + prior.mean.shape,
                            prior.mean.dtype)
    zs = prior.mean + prior.std * eps

    def one(z):
      mean, std = model.decode(meta_params, state, x, z)
      return gaussian_log_density(y, mean, std)

    ll = (jax.nn.logsumexp(jax.vmap(one)(zs), axis=0) -
          math.log(num_samples))
  return jnp.where(mask > 0, ll, 0.0)


def log_likelihood(model: NeuralProcess, meta_params: types.MetaParams,
                   support: types.Examples, query: types.Examples, *,
                   key: Optional[types.PRNGKey] = None,
                   num_samples: Optional[int] = None) -> jax.Array:
  """One task's predictive log-likelihood per real target point; scalar.

  The mean over the real target points of `pointwise_log_likelihood` (same
  arguments): exact for deterministic models, the Monte Carlo estimate with
  `num_samples` samples of `q(z | context)` for latent ones. Map it over
  tasks with `jax.vmap` (a key per task) and average for a data set.
  """
  ll = pointwise_log_likelihood(model, meta_params, support, query, key=key,
                                num_samples=num_samples)
  return _masked_point_mean(ll, query[1][1])
