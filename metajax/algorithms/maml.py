"""The MAML family as options of one learner built on `metajax.inner`.

* `maml`: exact second-order MAML (Finn et al., 2017), and every variant below
  through its keyword options;
* `fomaml`: `first_order=True`;
* `anil`: adapt only the parameters whose path contains the head's name;
* `meta_sgd`: learned per-parameter inner learning rates (Li et al., 2017);
* `maml_plus_plus`: learned per-layer, per-step learning rates and the
  multi-step loss (Antoniou et al., 2019);
* `inner_optimizer`: any optax optimiser in the inner loop (momentum, Adam,
  clipping...), differentiated through exactly; with `learn_hyperparams`,
  the numbers of an `optax.inject_hyperparams` optimiser (its learning rate,
  momentum...) are meta-learned, as Meta-SGD learns gradient descent's rates.

Meta-parameters are a dict: `{"params": model params}` plus `"lr"` when the
learning rates are learned, or `"hyperparams"` when the inner optimiser's
hyper-parameters are.
"""

from typing import Callable, Literal, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metajax import inner
from metajax import types
from metajax.algorithms.base import MetaLearner
from metajax.algorithms.base import apply_adapted
from metajax.algorithms.base import batch_mean_grad
from metajax.algorithms.base import supervised_loss

LearnLR = Optional[Literal["per_param", "per_step"]]
AdaptMask = Union[None, Callable, types.PyTree]


def maml(init_fn: types.ModelInitFn, apply_fn: types.ApplyFn,
         loss: types.Loss, *, steps: int = 1, lr: Optional[float] = None,
         inner_optimizer: Optional[optax.GradientTransformation] = None,
         learn_hyperparams: bool = False,
         first_order: bool = False, adapt_mask: AdaptMask = None,
         learn_lr: LearnLR = None,
         step_weights: Optional[Sequence[float]] = None,
         remat: bool = False, online: bool = False,
         before_adapt: Optional[Callable[[types.Params, types.Examples],
                                         types.Params]] = None,
         metrics: Optional[types.MetricsFn] = None) -> MetaLearner:
  """Model-agnostic meta-learning.

  Args:
    init_fn: `init_fn(key) -> params`, e.g. `lambda k: model.init(k, x)`.
    apply_fn: `apply_fn(params, x) -> predictions`, e.g. `model.apply`.
    loss: `loss(predictions, targets) -> scalar`, used in both loops.
    steps: inner steps, in `meta_grad` and by default in `adapt`.
    lr: gradient descent's inner learning rate, or the initial value of the
      learned rates; a finite real number (default 0.01 when there is no
      `inner_optimizer`).
    inner_optimizer: an optax `GradientTransformation` for the inner loop
      instead of gradient descent at `lr`, e.g. `optax.adam(1e-2)`; its
      state starts afresh for every task.
    learn_hyperparams: meta-learn the floating-point hyper-parameters of
      `inner_optimizer`, which must then be made by
      `optax.inject_hyperparams` (e.g. `optax.inject_hyperparams(
      optax.sgd)(learning_rate=0.1, momentum=0.9)`); their initial values
      are the ones it was built with.
    first_order: drop second-order terms (FOMAML).
    adapt_mask: which parameter arrays the inner loop adapts: None (all), a
      PyTree of bools with the structure of the params, or a function
      `adapt_mask(params) -> such a PyTree` (see `metajax.mask_by_path`);
      only True leaves adapt. Leaves are Python bools or numpy / jnp boolean
      scalars; a function runs eagerly even under `jax.jit`, so jnp bools it
      builds are concrete, but it must not depend on the params' values.
      Checked against the params by `init` and at every use.
    learn_lr: None (fixed `lr`), "per_param" (Meta-SGD: one rate per
      parameter element) or "per_step" (MAML++: one rate per parameter array
      and inner step; `adapt` may take fewer steps than `steps`, with the
      first rates, but not more).
    step_weights: MAML++ multi-step loss weights, one per inner step.
    remat: rematerialise inner steps in the backward pass.
    online: step t of the inner loop takes its gradient on the t-th of
      `steps` equal consecutive slices of the support set only (one pass
      over a stream; `metajax.inner.online_batches`), as OML and ANML
      learn; `steps` must divide the support set's size.
    before_adapt: optional `before_adapt(params, support) -> params`,
      applied to the model parameters before every inner loop, in
      `meta_grad` and in `adapt` (OML and ANML reset the output units of
      the support set's classes with it); differentiated through.
    metrics: optional `metrics(predictions, targets) -> dict of scalars` on
      the query set after adaptation, reported by `meta_grad` (e.g.
      accuracy).

  Returns:
    A `MetaLearner`; its task state is the adapted parameters, and
    `adapt(meta_params, support, *, steps=None)` takes `steps` gradient
    steps (a Python int; None: the `steps` above).
  """
  inner.check_steps(steps)
  if learn_lr not in (None, "per_param", "per_step"):
    raise ValueError(
        f"learn_lr must be None, 'per_param' or 'per_step', got {learn_lr!r}.")
  lr = inner.inner_rate(lr, inner_optimizer)
  if inner_optimizer is None and learn_hyperparams:
    raise ValueError("learn_hyperparams learns an inner_optimizer's "
                     "hyper-parameters; there is none (learn_lr learns "
                     "gradient descent's rates).")
  if inner_optimizer is not None and learn_lr is not None:
    raise ValueError(
        f"learn_lr={learn_lr!r} learns gradient descent's rates; with an "
        f"inner_optimizer, use learn_hyperparams=True and an "
        f"optax.inject_hyperparams optimizer.")
  if step_weights is not None:
    inner.check_step_weights(step_weights, steps)
  if adapt_mask is not None and not callable(adapt_mask):
    adapt_mask = inner.check_mask(adapt_mask, name="adapt_mask")
  loss_fn = supervised_loss(apply_fn, loss)

  def init(key):
    params = init_fn(key)
    inner.resolve_mask(adapt_mask, params)  # Mismatches show here, not later.
    meta_params = {"params": params}
    if learn_lr == "per_param":
      meta_params["lr"] = jax.tree.map(lambda p: jnp.full_like(p, lr), params)
    elif learn_lr == "per_step":
      meta_params["lr"] = jax.tree.map(
          lambda p: jnp.full((steps,), lr, p.dtype), params)
    if learn_hyperparams:
      adapted, _ = inner.partition(
          params, inner.resolve_mask(adapt_mask, params))
      meta_params["hyperparams"] = inner.inject_hyperparams_values(
          inner_optimizer, adapted)
    return meta_params

  def options(meta_params, num_steps):
    params = meta_params["params"]
    return dict(steps=num_steps, lr=meta_params.get("lr", lr),
                optimizer=inner_optimizer,
                hyperparams=meta_params.get("hyperparams"),
                first_order=first_order,
                mask=inner.resolve_mask(adapt_mask, params),
                per_step_lr=learn_lr == "per_step", remat=remat,
                online=online)

  def start(meta_params, support):
    if before_adapt is None:
      return meta_params["params"]
    return before_adapt(meta_params["params"], support)

  def task_loss(meta_params, task):
    loss, adapted = inner.maml_loss(
        loss_fn, start(meta_params, task.support), task,
        step_weights=step_weights, return_adapted=True,
        **options(meta_params, steps))
    if metrics is None:
      return loss, {}
    x, y = task.query
    return loss, metrics(jax.lax.stop_gradient(apply_fn(adapted, x)), y)

  default_steps = steps  # `adapt`'s own option shadows the name.

  def adapt(meta_params, support, *, steps=None):
    num_steps = default_steps if steps is None else inner.check_steps(steps)
    if learn_lr == "per_step":
      # Fewer steps than trained take the first rates. meta_grad takes the
      # rates whole, so that every learned rate is trained.
      meta_params = dict(meta_params,
                         lr=_first_rates(meta_params["lr"], num_steps))
    return inner.adapt(loss_fn, start(meta_params, support), support,
                       **options(meta_params, num_steps))

  return MetaLearner(init, batch_mean_grad(task_loss, has_aux=True), adapt,
                     apply_adapted(apply_fn))


def _first_rates(rates: types.PyTree, steps: int) -> types.PyTree:
  """The learned per-step rates of the first `steps` inner steps.

  Args:
    rates: MAML++'s rates, leaves `[trained_steps, ...]` (one rate per
      parameter array and step, as `maml` learns them).
    steps: the inner steps to take, a Python int >= 0.

  Returns:
    `rates` with leaves `[steps, ...]`.

  Raises:
    ValueError: `steps` is more than the steps the rates were learned for,
      which has no rate to take them at.
  """
  for leaf in jax.tree.leaves(rates):
    # A scalar leaf is left for `inner.adapt` to reject with its shape.
    if np.ndim(leaf) and steps > np.shape(leaf)[0]:
      raise ValueError(
          f"cannot adapt with steps={steps}: these meta-parameters have "
          f"learned rates for {np.shape(leaf)[0]} inner steps only (MAML++ "
          f"learns one rate per step); use steps <= {np.shape(leaf)[0]}.")
  return jax.tree.map(lambda l: l[:steps] if np.ndim(l) else l, rates)


def fomaml(init_fn, apply_fn, loss, **kwargs) -> MetaLearner:
  """First-order MAML: `maml(..., first_order=True)`."""
  return maml(init_fn, apply_fn, loss, first_order=True, **kwargs)


def anil(init_fn, apply_fn, loss, *, head: str = "head",
         **kwargs) -> MetaLearner:
  """ANIL: adapts only parameters under a module named `head`."""
  def head_only(params):
    mask = inner.mask_by_path(params, lambda path: head in path.split("/"))
    if not any(jax.tree.leaves(mask)):
      paths = ["params" + jax.tree_util.keystr(p) for p, _ in
               jax.tree_util.tree_flatten_with_path(params)[0]]
      raise ValueError(
          f"anil adapts the parameters under a module named head={head!r}, "
          f"but no parameter path has that component (the parameters: "
          f"{', '.join(paths[:6])}{' ...' if len(paths) > 6 else ''}); pass "
          f"head=<the output module's name>, or use maml.")
    return mask
  return maml(init_fn, apply_fn, loss, adapt_mask=head_only, **kwargs)


def meta_sgd(init_fn, apply_fn, loss, **kwargs) -> MetaLearner:
  """Meta-SGD: `maml(..., learn_lr="per_param")`."""
  return maml(init_fn, apply_fn, loss, learn_lr="per_param", **kwargs)


def maml_plus_plus(init_fn, apply_fn, loss, *, steps: int = 5,
                   **kwargs) -> MetaLearner:
  """MAML++ learned per-step rates with a uniform multi-step loss.

  Pass `step_weights` to weight the per-step query losses differently.
  `steps` must be at least 1.
  """
  if inner.check_steps(steps) == 0:
    raise ValueError(
        "maml_plus_plus learns one rate per inner step and weights the query "
        "loss after each step, so it needs steps >= 1; got steps=0.")
  kwargs.setdefault("step_weights", [1.0 / steps] * steps)
  return maml(init_fn, apply_fn, loss, steps=steps, learn_lr="per_step",
              **kwargs)
