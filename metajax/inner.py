"""The inner loop: gradient-based adaptation as a `lax.scan` over steps.

Everything in the MAML family is an option of the one loop written here:

* exact second order (default): the inner gradient stays in the graph, so
  `jax.grad` of `maml_loss` differentiates through it (Finn et al., 2017);
* `first_order=True`: the inner gradient is a constant to the outer `jax.grad`
  (FOMAML);
* `mask`: adapt only a subset of parameters, e.g. the head (ANIL, Raghu et al.,
  2020); the frozen part is closed over, so no gradient is computed for it;
* `lr` as a PyTree: per-parameter learning rates that the outer loop can learn
  (Meta-SGD, Li et al., 2017); with `per_step_lr=True` every step has its own
  rate (the LSLR of MAML++, Antoniou et al., 2019);
* `step_weights`: the MAML++ multi-step loss, a weighted sum of the query loss
  after every inner step;
* `optimizer`: any optax `GradientTransformation` in place of plain gradient
  descent (momentum, Adam, clipping, chains of them), its state carried
  through the scan and differentiated through exactly like the parameters;
  `hyperparams` overrides the numbers an `optax.inject_hyperparams`
  optimiser holds in its state, so the outer loop can learn them, and
  `optimizer_state` starts it from a given state (moments carried over
  from earlier tasks) instead of a fresh one;
* `has_aux=True`: `loss_fn` returns `(loss, aux)`, and the aux of every step
  comes back stacked (metrics, or model state such as batch statistics);
* `model_state`: state that `loss_fn(params, batch, state)` updates and the
  next step reads (flax `batch_stats` running averages), carried through
  the scan and differentiated through;
* `online=True`: step t sees only the t-th of `steps` equal consecutive
  slices of the support set, so the loop is one pass over a stream of
  examples (one at a time when the slices hold one), as a continual learner
  meets them (OML, Javed & White, 2019; ANML, Beaulieu et al., 2020);
* `remat=True`: `jax.checkpoint` around each step and around equal segments of
  about sqrt(steps) steps (`_checkpointed_scan`), so the backward pass holds
  the activations of one step at a time and about 2 sqrt(steps) sets of
  parameters (`steps` of them when `steps` is prime), instead of every step's
  activations; the price is up to two more forward runs of every step.

A `loss_fn(params, batch) -> scalar` is all the loop needs to know of the model.
"""

import functools
from typing import Callable, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metajax import tasks as tasks_lib
from metajax import types
from metajax.types import Params
from metajax.types import PyTree

LossFn = Callable[[Params, PyTree], jax.Array]
LearningRate = Union[float, jax.Array, PyTree]


def check_steps(steps) -> int:
  if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)):
    raise TypeError(
        f"steps must be a Python int (it fixes the length of the scan), got "
        f"{type(steps).__name__}.")
  if steps < 0:
    raise ValueError(f"steps must be >= 0, got {steps}.")
  return int(steps)


def check_step_weights(step_weights: Sequence[float], steps: int) -> None:
  """Raises a ValueError unless `step_weights` has one weight per inner step.

  Shapes only, so traced weights are checked too.
  """
  steps = check_steps(steps)
  if steps == 0:
    raise ValueError(
        "step_weights weight the query loss after each inner step, so they "
        "need steps >= 1; got steps=0.")
  shape = np.shape(step_weights)
  if shape != (steps,):
    raise ValueError(
        f"step_weights must have one weight per inner step (shape "
        f"({steps},)), got shape {shape}.")


def check_scalar_loss(loss_fn: LossFn, params: PyTree, batch: PyTree,
                      has_aux: bool = False,
                      model_state: Optional[PyTree] = None) -> None:
  """Raises a ValueError unless `loss_fn(params, batch)` is a real scalar.

  With `has_aux`, it must be a pair `(scalar, aux)`. With `model_state`,
  `loss_fn(params, batch, model_state)` must be `(scalar, new_state)` (or
  `(scalar, (new_state, aux))` with `has_aux`), `new_state` of
  `model_state`'s structure, shapes and dtypes. Only shapes are traced
  (`jax.eval_shape`): no computation runs.
  """
  if model_state is not None:
    out = jax.eval_shape(loss_fn, params, batch, model_state)
    what = "(loss, (new_state, aux))" if has_aux else "(loss, new_state)"
    if not (isinstance(out, (tuple, list)) and len(out) == 2) or (
        has_aux and not (isinstance(out[1], (tuple, list))
                         and len(out[1]) == 2)):
      raise ValueError(f"with model_state, loss_fn(params, batch, state) "
                       f"must return {what}, but it returned {out}.")
    new_state = out[1][0] if has_aux else out[1]
    expected = jax.eval_shape(lambda s: s, model_state)
    if (jax.tree.structure(new_state) != jax.tree.structure(expected) or
        jax.tree.leaves(new_state) != jax.tree.leaves(expected)):
      raise ValueError(
          f"loss_fn's new model state must have the structure, shapes and "
          f"dtypes of model_state (it is carried from step to step): got "
          f"{new_state}, expected {expected}.")
    out = out[0]
  else:
    out = jax.eval_shape(loss_fn, params, batch)
  if has_aux and model_state is None:
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
      raise ValueError(
          f"with has_aux=True, loss_fn must return a pair (loss, aux), but "
          f"it returned {type(out).__name__}: {out}.")
    out = out[0]
  if not isinstance(out, jax.ShapeDtypeStruct):
    raise ValueError(
        f"loss_fn must return a scalar array, but it returned a "
        f"{type(out).__name__}: {out}. Return auxiliary values as "
        f"(loss, aux) with has_aux=True.")
  if out.shape != ():
    raise ValueError(
        f"loss_fn must return a scalar, but it returned shape {out.shape} "
        f"(dtype {out.dtype}); reduce it over the examples, e.g. with .mean().")
  if not jnp.issubdtype(out.dtype, jnp.floating):
    raise ValueError(
        f"loss_fn must return a floating-point scalar, got dtype {out.dtype}.")


def _paths(tree: PyTree) -> list:
  """The key path of every leaf of `tree`, as `keystr` writes it."""
  return [jax.tree_util.keystr(path)
          for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _listed(items: Sequence[str], limit: int = 4) -> str:
  shown = ", ".join(items[:limit])
  return shown + (f" and {len(items) - limit} more" if len(items) > limit
                  else "")


def _static_bool(name: str, path, leaf) -> bool:
  """One mask leaf as a Python bool; errors name `name` and the leaf's path.

  A mask decides which leaves the inner loop differentiates, i.e. the shape
  of the traced computation, so it must be known while tracing: a concrete
  numpy or jnp boolean scalar is read into a Python bool, a traced one can
  not be.
  """
  where = name + jax.tree_util.keystr(path)
  if isinstance(leaf, (bool, np.bool_)):
    return bool(leaf)
  if isinstance(leaf, jax.core.Tracer):
    raise TypeError(
        f"{where} is a traced value ({leaf.aval.str_short()}), but a mask must "
        f"be static: it decides which parameters are adapted while the "
        f"function is traced. Use Python bools (e.g. from "
        f"metajax.mask_by_path), or build the mask outside jax.jit and close "
        f"over it instead of passing it as a jit argument.")
  if isinstance(leaf, (np.ndarray, np.generic, jax.Array)):
    if np.shape(leaf) != ():
      raise ValueError(
          f"{where} has shape {np.shape(leaf)}; a mask has one bool per "
          f"parameter array (scalar leaves), not one per element.")
    if leaf.dtype != np.bool_:
      raise TypeError(
          f"{where} has dtype {leaf.dtype}; mask leaves must be bools.")
    return bool(leaf)
  raise TypeError(
      f"{where} is {leaf!r} of type {type(leaf).__name__}; mask leaves must "
      f"be bools.")


def check_mask(mask: PyTree, params: Optional[PyTree] = None,
               name: str = "mask") -> PyTree:
  """`mask` with Python bool leaves, checked against `params`'s structure.

  Args:
    mask: PyTree of bools, one per parameter array: Python bools, or
      concrete numpy / jnp boolean scalars (read into Python bools).
    params: the parameters the mask is for; None checks the leaves only.
    name: how errors call the mask, e.g. "adapt_mask".

  Returns:
    `mask` with every leaf a Python bool.

  Raises:
    ValueError: the structure differs from `params` (the error lists the
      paths that differ), or a leaf is not a scalar.
    TypeError: a leaf is not a bool, or is a traced value.
  """
  if params is not None and (jax.tree.structure(mask) !=
                             jax.tree.structure(params)):
    mask_paths, param_paths = _paths(mask), _paths(params)
    in_mask, in_params = set(mask_paths), set(param_paths)
    missing = [p for p in param_paths if p not in in_mask]
    extra = [p for p in mask_paths if p not in in_params]
    details = []
    if missing:
      details.append(
          f"{_listed(['params' + p for p in missing])} "
          f"{'have' if len(missing) > 1 else 'has'} no entry in {name}")
    if extra:
      details.append(
          f"{_listed([name + p for p in extra])} "
          f"{'are not' if len(extra) > 1 else 'is not a'} parameter "
          f"array{'s' if len(extra) > 1 else ''}")
    if not details:  # The same paths in other containers (tuple vs list...).
      details.append(f"got {jax.tree.structure(mask)}, expected "
                     f"{jax.tree.structure(params)}")
    raise ValueError(
        f"{name} must be a PyTree of Python bools with the structure of "
        f"params, one bool per parameter array: {'; '.join(details)}.")
  return jax.tree_util.tree_map_with_path(
      functools.partial(_static_bool, name), mask)


def resolve_mask(adapt_mask: Union[None, Callable, PyTree],
                 params: PyTree) -> Optional[PyTree]:
  """The static mask an `adapt_mask` option gives for `params`.

  Args:
    adapt_mask: None (adapt everything), a PyTree of bools with the
      structure of `params`, or a function `adapt_mask(params) -> such a
      PyTree` (e.g. built with `mask_by_path`).
    params: the model parameters (may be traced).

  Returns:
    None, or a PyTree of Python bools with the structure of `params`.
  """
  if adapt_mask is None:
    return None
  if not callable(adapt_mask):
    return check_mask(adapt_mask, params, "adapt_mask")
  # A mask depends on the parameters' structure, not their values: run the
  # function eagerly even under jax.jit, so that jnp booleans it builds (e.g.
  # `jnp.asarray(p.ndim == 2)`) are concrete instead of tracers.
  with jax.ensure_compile_time_eval():
    mask = adapt_mask(params)
  return check_mask(mask, params, "adapt_mask(params)")


def partition(params: PyTree, mask: Optional[PyTree]):
  """Splits `params` into (adapted, frozen) by a boolean `mask` PyTree.

  Leaves where `mask` is True go to `adapted`, the others to `frozen`; the
  missing leaves are `None` in each, so the two trees keep the structure of
  `params` and `combine` puts them back together. The mask's leaves are
  Python bools or concrete boolean scalars (see `check_mask`).
  """
  if mask is None:
    return params, jax.tree.map(lambda _: None, params)
  mask = check_mask(mask, params)
  adapted = jax.tree.map(lambda m, p: p if m else None, mask, params)
  frozen = jax.tree.map(lambda m, p: None if m else p, mask, params)
  if not jax.tree.leaves(adapted):
    raise ValueError("mask selects no parameter to adapt: every leaf is "
                     "False.")
  return adapted, frozen


def combine(adapted: PyTree, frozen: PyTree) -> PyTree:
  """Inverse of `partition`."""
  return jax.tree.map(lambda a, f: f if a is None else a, adapted, frozen,
                      is_leaf=lambda x: x is None)


def mask_by_path(params: PyTree, predicate: Callable[[str], bool]) -> PyTree:
  """A mask that is True where `predicate(path)` holds.

  `path` is the leaf's key path joined by "/", e.g. "params/Dense_2/kernel".
  ANIL adapts only the head: `mask_by_path(params, lambda p: "head" in p)`.
  """
  def name(path):
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
  return jax.tree_util.tree_map_with_path(
      lambda path, _: bool(predicate(name(path))), params)


def _check_finite_lr(where: str, lr) -> None:
  """Raises a ValueError if a host-side (Python or numpy) rate is not finite.

  jax arrays are left alone: they may be traced (learned rates), and reading
  a concrete one would wait for the device.
  """
  if isinstance(lr, (int, float, np.ndarray, np.generic)) and not isinstance(
      lr, bool):
    values = np.asarray(lr)
    if (np.issubdtype(values.dtype, np.number) and
        not np.all(np.isfinite(values))):
      found = (f"got {values.item()}" if values.ndim == 0 else
               f"but {np.sum(~np.isfinite(values))} of its {values.size} "
               f"values are not")
      raise ValueError(f"{where} must be finite, {found}.")


def check_scalar_lr(lr, name: str = "lr") -> None:
  """Raises unless `lr` is one finite real number (not a bool).

  For the learners' `lr` option: a fixed inner learning rate, or the initial
  value of learned ones. Traced values pass unchecked.
  """
  if isinstance(lr, jax.core.Tracer):
    return
  if isinstance(lr, (int, float)) and not isinstance(lr, bool):
    real = True
  else:
    real = (isinstance(lr, (np.ndarray, np.generic, jax.Array)) and
            np.shape(lr) == () and
            (jnp.issubdtype(lr.dtype, jnp.floating) or
             jnp.issubdtype(lr.dtype, jnp.integer)))
  if not real:
    found = (f"shape {np.shape(lr)} dtype {lr.dtype}" if hasattr(lr, "dtype")
             else repr(lr))
    raise TypeError(
        f"{name} must be a real number, got {type(lr).__name__} {found}.")
  if not np.isfinite(float(lr)):
    raise ValueError(f"{name} must be finite, got {float(lr)}.")


def _lr_tree(lr: LearningRate, adapted: PyTree, steps: int,
             per_step_lr: bool) -> PyTree:
  """Broadcasts `lr` to one array per adapted leaf, checking shapes.

  Returns a PyTree with the structure of `adapted` (None where it is None)
  whose leaves broadcast against the parameter, with a leading `steps` axis
  when `per_step_lr`.

  `lr` is read as one rate per parameter when its structure is that of
  `params`, and as a rate shared by all parameters otherwise. When `params`
  is a single array, both readings apply to a single-array `lr`: the
  per-parameter one accepts every shape the shared one does, with the same
  result, and also per-element rates (Meta-SGD), so it is the one taken.
  """
  is_none = lambda x: x is None
  expected = jax.tree.structure(adapted, is_leaf=is_none)
  if (jax.tree_util.treedef_is_leaf(jax.tree.structure(lr)) and
      jax.tree.structure(lr) != expected):
    _check_finite_lr("lr", lr)
    shared = jnp.asarray(lr)
    expected_shape = (steps,) if per_step_lr else ()
    if shared.shape != expected_shape:
      raise ValueError(
          f"a single lr must have shape {expected_shape} "
          f"({'one rate per inner step' if per_step_lr else 'a scalar'}), got "
          f"{shared.shape}; pass a PyTree like params for per-parameter rates.")
    return jax.tree.map(lambda p: None if p is None else shared, adapted,
                        is_leaf=is_none)

  def check(path, p, l):
    if p is None:
      return None
    where = "lr" + jax.tree_util.keystr(path)
    _check_finite_lr(where, l)
    l = jnp.asarray(l)
    if per_step_lr and (l.ndim == 0 or l.shape[0] != steps):
      raise ValueError(
          f"per-step {where} has shape {l.shape}; its leading axis must be "
          f"the number of inner steps ({steps}).")
    rest = l.shape[1:] if per_step_lr else l.shape
    try:
      ok = jnp.broadcast_shapes(rest, p.shape) == p.shape
    except ValueError:
      ok = False
    if not ok:
      raise ValueError(
          f"{where} has shape {l.shape}, which does not broadcast to the "
          f"parameter's shape {p.shape}.")
    return l

  if jax.tree.structure(lr) != expected:
    raise ValueError(
        "lr must be a scalar or a PyTree with the structure of params; got "
        f"{jax.tree.structure(lr)}, expected {expected}.")
  return jax.tree_util.tree_map_with_path(check, adapted, lr, is_leaf=is_none)


def _segment_length(length: int) -> int:
  """The divisor k of `length` that keeps fewest carries, `length // k + k`.

  About sqrt(length) when `length` has a divisor near its square root (10,
  25, 50, 100 steps: segments of 2, 5, 5, 10); 1 when it is prime.
  """
  return min((k for k in range(1, length + 1) if length % k == 0),
             key=lambda k: length // k + k, default=1)


def _checkpointed_scan(f: Callable, carry: PyTree, xs: Optional[PyTree],
                       length: int):
  """`lax.scan(f, carry, xs, length=length)` that keeps little for its gradient.

  Every step is a `jax.checkpoint`, so the backward pass keeps only the carry
  entering each step, not the step's activations; for the inner loop that is
  one set of parameters per step, which still grows with `length`. So the
  steps also run in `length // k` checkpointed segments of `k` steps (k from
  `_segment_length`): the backward pass keeps the carry entering each
  segment, and the carries within one segment while it differentiates that
  segment, `length // k + k` carries in all, about 2 sqrt(length) (Chen et
  al., 2016, "Training deep nets with sublinear memory cost"). The price is
  one more forward run of every step than per-step checkpoints alone. The
  segments are all equal, so the step is compiled into one loop only; with a
  prime `length` that leaves single steps. The same operations run on the
  same values as in the plain scan, so values and gradients are the same.

  Args:
    f: the scan body, `f(carry, x) -> (carry, y)`.
    carry: the initial carry.
    xs: PyTree with a leading axis of size `length`, or None.
    length: number of steps.

  Returns:
    `(final carry, ys)`, the leaves of `ys` with a leading axis of `length`.
  """
  f = jax.checkpoint(f)
  k = _segment_length(length)
  num_segments = length // k
  # Segments help only if they keep fewer carries than the steps themselves.
  if num_segments + k >= length:
    return jax.lax.scan(f, carry, xs, length=length)

  @jax.checkpoint
  def segment(c, segment_xs):
    return jax.lax.scan(f, c, segment_xs, length=k)

  # [length, ...] <-> [num_segments, k, ...] for the segments' scan.
  xs = jax.tree.map(lambda x: x.reshape(num_segments, k, *x.shape[1:]), xs)
  carry, ys = jax.lax.scan(segment, carry, xs, length=num_segments)
  return carry, jax.tree.map(lambda y: y.reshape(length, *y.shape[2:]), ys)


def check_optimizer(optimizer, lr, per_step_lr: bool,
                    hyperparams=None) -> None:
  """Raises unless exactly one of `lr` and `optimizer` is given, and the
  options that go with each are consistent."""
  if optimizer is None:
    if lr is None:
      raise ValueError("give the inner loop a learning rate lr (gradient "
                       "descent) or an optax optimizer; got neither.")
    if hyperparams is not None:
      raise ValueError("hyperparams override an optax.inject_hyperparams "
                       "optimizer's values; they need optimizer=..., not lr.")
    return
  if lr is not None:
    raise ValueError(
        "give the inner loop either lr (gradient descent) or an optax "
        "optimizer, not both: the optimizer's own learning rate applies "
        "(optax.sgd(lr) is gradient descent).")
  if per_step_lr:
    raise ValueError("per_step_lr schedules gradient descent's lr; with an "
                     "optax optimizer, give it a schedule instead.")
  if not isinstance(optimizer, optax.GradientTransformation):
    raise TypeError(
        f"optimizer must be an optax GradientTransformation (e.g. "
        f"optax.adam(1e-2)), got {type(optimizer).__name__}.")


def inner_rate(lr: Optional[float],
               optimizer: Optional[optax.GradientTransformation],
               default: float = 0.01) -> Optional[float]:
  """A learner's gradient-descent rate: `lr` (`default` if None) when there
  is no `optimizer`, else None; checked either way."""
  if optimizer is not None:
    check_optimizer(optimizer, lr, False)
    return None
  lr = default if lr is None else lr
  check_scalar_lr(lr)
  return lr


def _held_hyperparams(state) -> dict:
  """The hyper-parameters an `optax.inject_hyperparams` state holds."""
  held = getattr(state, "hyperparams", None)
  if not isinstance(held, dict):
    raise ValueError(
        "hyperparams need an optimizer made by optax.inject_hyperparams "
        "(e.g. optax.inject_hyperparams(optax.adam)(learning_rate=1e-2)), "
        "whose state holds its hyper-parameters; this optimizer's state is "
        f"a {type(state).__name__}.")
  return held


def _with_hyperparams(state, hyperparams: Optional[dict]):
  """`state` of an `optax.inject_hyperparams` optimiser with `hyperparams`
  in place of the values it was built with (which may be traced)."""
  if hyperparams is None:
    return state
  held = _held_hyperparams(state)
  unknown = sorted(set(hyperparams) - set(held))
  if unknown:
    raise ValueError(
        f"hyperparams {unknown} are not hyper-parameters of the optimizer; "
        f"it has {sorted(held)}.")
  values = {k: jnp.asarray(v, jnp.result_type(held[k]))
            for k, v in hyperparams.items()}
  return state._replace(hyperparams={**held, **values})


def inject_hyperparams_values(optimizer: optax.GradientTransformation,
                              params: PyTree) -> dict:
  """The numeric hyper-parameters an `inject_hyperparams` optimiser holds.

  What a learner can meta-learn: the same dict, as arrays, passed back to
  `adapt(..., hyperparams=)`.

  Args:
    optimizer: made by `optax.inject_hyperparams`.
    params: parameters of the structure the optimiser will adapt.

  Returns:
    `{name: float array}` of its floating-point hyper-parameters.
  """
  held = _held_hyperparams(optimizer.init(params))
  return {k: v for k, v in held.items()
          if jnp.issubdtype(jnp.asarray(v).dtype, jnp.floating)}


def online_batches(support: PyTree, steps: int) -> PyTree:
  """The support set as `steps` consecutive equal slices, one per step.

  Args:
    support: a set whose leaves have a leading example axis of one size n.
    steps: the inner steps, a Python int >= 1 that divides n.

  Returns:
    `support` with every leaf reshaped `[n, ...] -> [steps, n // steps,
    ...]`: slice t holds examples `t * n // steps` to `(t + 1) * n // steps
    - 1`, in their order.
  """
  sizes = {int(np.shape(leaf)[0]) for leaf in jax.tree.leaves(support)
           if np.ndim(leaf)}
  if len(sizes) != 1:
    raise ValueError(f"online adaptation needs one leading example axis on "
                     f"every support leaf; got sizes {sorted(sizes)}.")
  n = sizes.pop()
  if steps < 1 or n % steps:
    raise ValueError(
        f"online adaptation takes the support set's {n} examples in steps="
        f"{steps} equal consecutive slices, so steps must divide {n}.")
  return jax.tree.map(lambda x: x.reshape(steps, n // steps, *x.shape[1:]),
                      support)


def _run(loss_fn: LossFn, params: PyTree, support: PyTree,
         query: Optional[PyTree], *, steps: int, lr: Optional[LearningRate],
         optimizer: Optional[optax.GradientTransformation],
         hyperparams: Optional[dict], first_order: bool,
         mask: Optional[PyTree], per_step_lr: bool, remat: bool,
         query_every_step: bool, has_aux: bool,
         model_state: Optional[PyTree] = None, online: bool = False,
         optimizer_state: Optional[PyTree] = None):
  """Runs the inner loop.

  Returns:
    `(adapted params, model state after the last step (None without
    model_state), query losses per step or None, support aux per step or
    None, query aux per step or None, the optimizer's state after the last
    step (None without optimizer))`.
  """
  steps = check_steps(steps)
  check_optimizer(optimizer, lr, per_step_lr, hyperparams)
  if optimizer_state is not None and optimizer is None:
    raise ValueError("optimizer_state is an optax optimizer's state, but "
                     "the inner loop takes gradient descent steps (lr=...), "
                     "which have none; give optimizer=... as well.")
  batches = online_batches(support, steps) if online else None
  check_scalar_loss(loss_fn, params, support if batches is None else
                    jax.tree.map(lambda b: b[0], batches), has_aux,
                    model_state)
  adapted, frozen = partition(params, mask)
  stateful = model_state is not None

  def call(a, batch, m):
    """`(loss, (new model state or None, aux or None))`."""
    if not stateful:
      out = loss_fn(combine(a, frozen), batch)
      loss, aux = out if has_aux else (out, None)
      return loss, (None, aux)
    loss, rest = loss_fn(combine(a, frozen), batch, m)
    return loss, (rest if has_aux else (rest, None))

  def gradient(a, m, batch):
    batch = support if batch is None else batch
    grads, (m, aux) = jax.grad(call, has_aux=True)(a, batch, m)
    if first_order:
      grads = jax.lax.stop_gradient(grads)
    return grads, m, aux

  def outputs(a, m, aux):
    if not query_every_step:
      return None, aux, None
    q, (_, q_aux) = call(a, query, m)
    return q, aux, q_aux

  scan = _checkpointed_scan if remat else jax.lax.scan
  if optimizer is None:
    lrs = _lr_tree(lr, adapted, steps, per_step_lr)

    def sgd_step(carry, xs):
      a, m = carry
      step_lrs, batch = xs
      grads, m, aux = gradient(a, m, batch)
      a = jax.tree.map(lambda p, g, l: (p - l * g).astype(p.dtype), a, grads,
                       lrs if step_lrs is None else step_lrs)
      return (a, m), outputs(a, m, aux)

    (adapted, model_state), ys = scan(
        sgd_step, (adapted, model_state),
        (lrs if per_step_lr else None, batches), length=steps)
    state = None
  else:
    def optax_step(carry, batch):
      a, state, m = carry
      grads, m, aux = gradient(a, m, batch)
      updates, state = optimizer.update(grads, state, a)
      a = optax.apply_updates(a, updates)
      return (a, state, m), outputs(a, m, aux)

    fresh = optimizer.init(adapted)
    if optimizer_state is None:
      optimizer_state = fresh
    elif mismatch := types.tree_mismatch(optimizer_state, fresh):
      where, given, wanted = mismatch
      raise ValueError(f"optimizer_state{where} has {given}, but the "
                       f"optimizer's state of the adapted parameters has "
                       f"{wanted}.")
    state = _with_hyperparams(optimizer_state, hyperparams)
    (adapted, state, model_state), ys = scan(
        optax_step, (adapted, state, model_state), batches, length=steps)
  q_losses, support_aux, query_aux = ys
  return (combine(adapted, frozen), model_state, q_losses, support_aux,
          query_aux, state)


def adapt(loss_fn: LossFn, params: PyTree, batch: PyTree, *, steps: int,
          lr: Optional[LearningRate] = None,
          optimizer: Optional[optax.GradientTransformation] = None,
          hyperparams: Optional[dict] = None, first_order: bool = False,
          mask: Optional[PyTree] = None, per_step_lr: bool = False,
          remat: bool = False, has_aux: bool = False,
          model_state: Optional[PyTree] = None, online: bool = False,
          optimizer_state: Optional[PyTree] = None):
  """Adapts `params` to `batch` with `steps` steps of an inner optimiser.

  Gradient descent, `theta_{t+1} = theta_t - lr_t * grad(loss_fn)(theta_t,
  batch)`, or the steps of an optax `optimizer`, written as a `lax.scan`, so
  it is differentiable (exactly, to all orders) and jit-able.

  Args:
    loss_fn: `loss_fn(params, batch) -> scalar`, or `-> (scalar, aux)` with
      `has_aux`.
    params: PyTree of parameters (e.g. flax `variables`).
    batch: whatever `loss_fn` takes, e.g. `(x [n, ...], y [n, ...])`.
    steps: number of inner steps, a Python int >= 0.
    lr: gradient descent's rate: a scalar, or a PyTree with the structure of
      `params` whose leaves broadcast against each parameter (Meta-SGD; when
      `params` is a single array, `lr` is a single array broadcasting
      against it). With `per_step_lr`, every leaf (or the scalar) has a
      leading axis of length `steps`. Python and numpy rates must be finite.
      Give `lr` or `optimizer`, not both.
    optimizer: an optax `GradientTransformation` to take the steps instead
      (e.g. `optax.adam(1e-2)`, `optax.chain(optax.clip(1.0),
      optax.sgd(0.1, momentum=0.9))`); its state starts from
      `optimizer.init` of the adapted parameters at every call. Its
      hyper-parameters may be traced values (`optax.adam(meta["lr"])`), so
      a caller can differentiate through them.
    hyperparams: with an `optax.inject_hyperparams` optimizer, values that
      replace the hyper-parameters it holds (`{"learning_rate": x}`), e.g.
      meta-learned ones; see `inject_hyperparams_values`.
    first_order: stop gradients through the inner gradient (FOMAML).
    mask: optional PyTree of bools with the structure of `params`, one per
      parameter array; only leaves marked True are adapted (ANIL). Leaves are
      Python bools or concrete numpy / jnp boolean scalars, never traced
      values: the mask fixes what is traced (see `check_mask`). Leaves of
      `lr` where the mask is False are ignored; the optimizer sees only the
      adapted leaves.
    per_step_lr: whether `lr` has a leading per-step axis (MAML++ LSLR).
    remat: rematerialise the inner steps in the backward pass, which then
      holds about 2 sqrt(steps) sets of parameters (and optimizer states)
      instead of every step's activations, for up to two more forward runs
      of every step.
    has_aux: `loss_fn` returns `(loss, aux)`.
    model_state: model state carried from step to step, e.g. flax
      `batch_stats`: `loss_fn(params, batch, state)` then returns `(loss,
      new_state)` (`(loss, (new_state, aux))` with `has_aux`), `new_state`
      of `model_state`'s structure, shapes and dtypes, and step t + 1 gets
      step t's `new_state`. It is differentiated through like the
      parameters.
    online: step t takes its gradient on the t-th of `steps` equal
      consecutive slices of `batch` (`online_batches`) rather than on all
      of it: one pass over a stream, e.g. one example per step when
      `steps` is the number of examples. `steps` must divide that number.
    optimizer_state: with `optimizer`, the state its first step starts
      from instead of `optimizer.init` of the adapted parameters (whose
      structure, shapes and dtypes it must have), e.g. moments carried over
      from earlier tasks as Reptile's released code does; `adapt` then
      returns the state after the last step as well.

  Returns:
    The adapted parameters, a PyTree with the structure and dtypes of
    `params`; with `model_state`, `(adapted, final_state)`; with
    `optimizer_state`, the optimizer's state after the last step follows
    (`(adapted, optimizer_state)` or `(adapted, final_state,
    optimizer_state)`); with `has_aux`, the support set's aux at every step
    comes last, leaves `[steps, ...]` (step t's aux is computed at the
    parameters before step t's update): e.g. `(adapted, aux)` or
    `(adapted, final_state, aux)`.
  """
  adapted, final_state, _, support_aux, _, opt_state = _run(
      loss_fn, params, batch, None, steps=steps, lr=lr, optimizer=optimizer,
      hyperparams=hyperparams, first_order=first_order, mask=mask,
      per_step_lr=per_step_lr, remat=remat, query_every_step=False,
      has_aux=has_aux, model_state=model_state, online=online,
      optimizer_state=optimizer_state)
  result = (adapted,)
  if model_state is not None:
    result += (final_state,)
  if optimizer_state is not None:
    result += (opt_state,)
  if has_aux:
    result += (support_aux,)
  return result if len(result) > 1 else adapted


class InnerAux(NamedTuple):
  """`maml_loss`'s auxiliary outputs with `has_aux=True`.

  Attributes:
    support: the support set's aux at every inner step, leaves
      `[steps, ...]`, each at the parameters before that step's update.
    query: the query set's aux at the adapted parameters; with
      `step_weights`, after every step, leaves `[steps, ...]`.
  """
  support: PyTree
  query: PyTree


def maml_loss(loss_fn: LossFn, params: PyTree, task: tasks_lib.Task, *,
              steps: int, lr: Optional[LearningRate] = None,
              optimizer: Optional[optax.GradientTransformation] = None,
              hyperparams: Optional[dict] = None, first_order: bool = False,
              mask: Optional[PyTree] = None, per_step_lr: bool = False,
              remat: bool = False,
              step_weights: Optional[Sequence[float]] = None,
              has_aux: bool = False, return_adapted: bool = False,
              model_state: Optional[PyTree] = None, online: bool = False):
  """Query loss of one task after adapting on its support set.

  `jax.grad(maml_loss, argnums=1)` is the exact MAML meta-gradient (second
  order unless `first_order`). Vmap it over a batch of tasks and average for
  the meta-objective; learned learning rates (or optimiser
  hyper-parameters) get gradients when they are passed in as part of what is
  differentiated.

  Args:
    loss_fn: `loss_fn(params, batch) -> scalar` (or `(scalar, aux)` with
      `has_aux`), used on both sets.
    params: PyTree of meta-parameters (the initialisation).
    task: a `Task(support, query)` of one task (no task axis).
    steps, lr, optimizer, hyperparams: as in `adapt`.
    first_order, mask, per_step_lr, remat, has_aux, model_state, online: as in
      `adapt`; with `model_state`, the query loss is computed with the
      state the last inner step left (the query set's own new state is
      dropped).
    step_weights: optional sequence of `steps` weights for the MAML++ multi-step
      loss `sum_t w_t * L_query(theta_t)`, t = 1..steps. By default only the
      final query loss counts.
    return_adapted: also return the adapted parameters (with
      `model_state`, the pair `(adapted, final_state)`).

  Returns:
    The scalar query loss (dtype of `loss_fn`'s output); with `has_aux`,
    `(loss, InnerAux)`; with `return_adapted`, the adapted parameters come
    last: `(loss, adapted)` or `(loss, InnerAux, adapted)`.
  """
  tasks_lib.validate_task(task)
  run = functools.partial(
      _run, loss_fn, params, task.support, task.query, steps=steps, lr=lr,
      optimizer=optimizer, hyperparams=hyperparams, first_order=first_order,
      mask=mask, per_step_lr=per_step_lr, remat=remat, has_aux=has_aux,
      model_state=model_state, online=online)
  if step_weights is None:
    adapted, final_state, _, support_aux, _, _ = run(query_every_step=False)
    if model_state is None:
      out = loss_fn(adapted, task.query)
      loss, query_aux = out if has_aux else (out, None)
    else:
      loss, rest = loss_fn(adapted, task.query, final_state)
      query_aux = rest[1] if has_aux else None
  else:
    check_step_weights(step_weights, steps)
    weights = jnp.asarray(step_weights)
    adapted, final_state, q_losses, support_aux, query_aux, _ = run(
        query_every_step=True)
    loss = jnp.sum(weights.astype(q_losses.dtype) * q_losses)
  result = (loss,)
  if has_aux:
    result += (InnerAux(support_aux, query_aux),)
  if return_adapted:
    result += ((adapted, final_state) if model_state is not None
               else adapted,)
  return result if len(result) > 1 else loss
