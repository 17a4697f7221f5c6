"""The continual-learning protocol of OML and ANML: one pass over new classes.

A trained network meets a stream of classes it has never seen, class after
class, each class's training images one at a time, and learns them by
online gradient steps on part of its parameters (`adapted`), in a single
pass. After the first k classes of the stream it is scored on the training
images it has seen so far and on held-out images of the same k classes.
This is the meta-test of Javed & White (2019) and Beaulieu et al. (2020)
on Omniglot: classes of the evaluation alphabets, 15 training and 5
held-out drawings each, batch size 1, the output layer reset (zeroed, or
drawn afresh as OML's released evaluation does), the online rate picked
from a grid. The papers learn online by plain SGD, the default here; OML's
released evaluation script uses Adam (`optimizer=optax.adam`).

* `make_stream` draws the classes and splits their drawings;
* `learn_stream` runs the online pass for a grid of rates at once (the
  rates are a `vmap`ped axis) and returns the accuracies at every
  checkpoint;
* `protocol` repeats that over independent streams, picks the rate on
  separate selection streams by their accuracy on the images they trained
  on (no held-out image is used to pick it), and reports each checkpoint's
  mean accuracies with 95% intervals.

The stream is ordered: the images of its i-th class are learnt only after
all those of the classes before it, and the network is scored after the
k-th class on the first k classes only.
"""

import functools
from typing import Callable, Dict, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metajax import inner
from metajax import types
from metajax.algorithms.continual import head_mask
from metajax.data.vision import episodes
from metajax.data.vision.episodes import ClassDataset
from metajax.evaluation import mean_ci

# The papers' checkpoints: classes learnt when the network is scored.
CHECKPOINTS = (10, 50, 75, 100, 200, 300, 400, 500, 600)


class Stream(NamedTuple):
  """A stream of classes and their images, in the order they are learnt.

  Attributes:
    train: uint8 `[classes, train_per_class, H, W, C]`; row i is the i-th
      class of the stream, labelled i.
    test: uint8 `[classes, test_per_class, H, W, C]`, held-out images of the
      same classes (never learnt from).
    classes: int `[classes]`, each stream class's index in the dataset.
  """
  train: np.ndarray
  test: np.ndarray
  classes: np.ndarray


def make_stream(dataset: ClassDataset, key: jax.Array, *, num_classes: int,
                train_per_class: int = 15, test_per_class: int = 5
                ) -> Stream:
  """Draws `num_classes` classes in random order and splits their images.

  Args:
    dataset: the classes to draw from (for Omniglot, the evaluation
      alphabets, which meta-training never saw).
    key: PRNG key; it fixes the classes, their order and the split.
    num_classes: classes in the stream.
    train_per_class, test_per_class: distinct images of each class to learn
      from and to hold out.

  Returns:
    A `Stream`.

  Raises:
    ValueError: the dataset has fewer classes than asked for, or a class
      fewer images (naming it).
  """
  if num_classes > dataset.num_classes:
    raise ValueError(f"a stream of {num_classes} classes needs that many; "
                     f"the dataset has {dataset.num_classes}.")
  k_cls, k_img = jax.random.split(key)
  classes = np.asarray(jax.random.permutation(
      k_cls, dataset.num_classes))[:num_classes]
  # Any class may be drawn, so every class must have enough.
  episodes.check_class_sizes(dataset, train_per_class + test_per_class,
                             "train_per_class + test_per_class")
  keys = jax.random.split(k_img, num_classes)
  need = train_per_class + test_per_class
  picks = np.stack([np.asarray(jax.random.permutation(
      k, int(dataset.counts[c])))[:need] for k, c in zip(keys, classes)])
  images = dataset.images[classes[:, None], picks]
  return Stream(images[:, :train_per_class], images[:, train_per_class:],
                classes)


def _flat(images: np.ndarray):
  """`[k, n, ...]` images of classes 0..k-1 -> (x `[k * n, ...]`, y)."""
  k, n = images.shape[:2]
  return (images.reshape((k * n,) + images.shape[2:]),
          np.repeat(np.arange(k, dtype=np.int32), n))


HEAD_INITS = ("zeros", "kaiming")


def reset_head(params: types.Params, how: str, key: Optional[jax.Array] = None,
               *, head: str = "head") -> types.Params:
  """`params` with every leaf under a module named `head` started afresh.

  Args:
    params: model parameters.
    how: "zeros" zeroes every leaf of the head (all output units);
      "kaiming" draws each weight array (2 or more axes) from a normal of
      variance 2 / fan-in, fan-in being the product of all axes but the
      last (He et al. 2015, as OML's released evaluation draws its output
      layer), and zeroes the biases.
    key: PRNG key of the "kaiming" draw.
    head: the output module's name.

  Raises:
    ValueError: an unknown `how`, "kaiming" without a key, or no parameter
      path under `head`.
  """
  if how not in HEAD_INITS:
    raise ValueError(f"how must be one of {HEAD_INITS}, got {how!r}.")
  if how == "kaiming" and key is None:
    raise ValueError("reset_head(how='kaiming') draws the head's weights "
                     "and needs a key.")
  mask = head_mask(params, head, "reset_head starts afresh")
  leaves, treedef = jax.tree.flatten(params)
  keys = (jax.random.split(key, len(leaves)) if how == "kaiming"
          else [None] * len(leaves))
  draw = jax.nn.initializers.variance_scaling(2.0, "fan_in", "normal")

  def start(leaf, is_head, k):
    if not is_head:
      return leaf
    if how == "zeros" or leaf.ndim < 2:
      return jnp.zeros_like(leaf)
    fan_in = int(np.prod(leaf.shape[:-1]))
    return draw(k, (fan_in, leaf.shape[-1]), leaf.dtype).reshape(leaf.shape)

  return jax.tree.unflatten(treedef, [
      start(leaf, m, k) for leaf, m, k in zip(
          leaves, jax.tree.leaves(mask), keys)])


def learn_stream(apply_fn: types.ApplyFn, loss: types.Loss,
                 params: types.Params, stream: Stream, *,
                 adapted: Callable[[str], bool], lrs: Sequence[float],
                 checkpoints: Sequence[int] = CHECKPOINTS,
                 optimizer: Callable[[jax.Array],
                                     optax.GradientTransformation] = (
                                         optax.sgd),
                 head: str = "head", head_init: str = "zeros",
                 key: Optional[jax.Array] = None, eval_batch: int = 1000,
                 progress: Optional[Callable[[int], None]] = None
                 ) -> Dict[str, np.ndarray]:
  """One online pass over `stream` for every rate of `lrs`, scored as it goes.

  The output layer under `head` is started afresh first (the stream's
  classes are new): zeroed, or drawn (`reset_head`; the same draw for every
  rate). Then, for each class of the stream in order, each of its training
  images in order takes one step of `optimizer(lr)` on the parameters that
  `adapted` selects, with the optimiser's state carried over the whole
  stream. After the k-th class, for every k in `checkpoints`, the network
  labels the training images and the held-out images of the first k
  classes by the argmax over all its output units.

  Args:
    apply_fn: `apply_fn(params, x) -> logits [n, outputs]` on uint8 images
      (outputs >= the stream's classes).
    loss: `loss(logits, labels) -> scalar`.
    params: the trained parameters the pass starts from.
    stream: the `Stream`.
    adapted: `adapted(path) -> bool`, the parameters that learn online (by
      their `metajax.mask_by_path` path).
    lrs: the grid of online rates, run side by side.
    checkpoints: class counts at which to score, increasing, each at most
      the stream's classes.
    optimizer: `optimizer(lr) -> optax.GradientTransformation`; plain SGD
      by default, as in the OML and ANML papers.
    head: the output module's name.
    head_init: how the head starts, "zeros" or "kaiming" (`reset_head`).
    key: PRNG key of a "kaiming" head.
    eval_batch: images per scoring pass.
    progress: called with the number of classes learnt after each class.

  Returns:
    {"train": float `[len(lrs), len(checkpoints)]`, "test": the same}, the
    accuracies on seen training images and on held-out images.
  """
  num_classes = stream.train.shape[0]
  checkpoints = [int(c) for c in checkpoints]
  if (not checkpoints or checkpoints != sorted(set(checkpoints)) or
      checkpoints[0] < 1 or checkpoints[-1] > num_classes):
    raise ValueError(f"checkpoints must increase within [1, {num_classes}] "
                     f"(the stream's classes); got {checkpoints}.")
  outputs = int(jax.eval_shape(apply_fn, params,
                               stream.train[:1, 0]).shape[-1])
  if outputs < num_classes:
    raise ValueError(f"the network has {outputs} output units, fewer than "
                     f"the stream's {num_classes} classes.")
  params = reset_head(params, head_init, key, head=head)
  mask = inner.mask_by_path(params, adapted)
  if not any(jax.tree.leaves(mask)):
    raise ValueError("adapted selects no parameter: nothing would learn.")
  start, frozen = inner.partition(params, mask)
  lrs = jnp.asarray(lrs, jnp.float32)

  a = jax.vmap(lambda _: start)(lrs)
  state = jax.vmap(lambda lr: optimizer(lr).init(start))(lrs)

  def score(a, images):
    x, y = _flat(images)
    hits = np.zeros(len(lrs))
    for i in range(0, len(y), eval_batch):
      # A fixed batch shape (the last one padded, its padding labelled -1
      # and never counted) compiles the scoring once.
      xb, yb = x[i:i + eval_batch], y[i:i + eval_batch]
      pad = eval_batch - len(yb)
      xb = np.concatenate([xb, np.zeros((pad,) + xb.shape[1:], xb.dtype)])
      yb = np.concatenate([yb, np.full((pad,), -1, yb.dtype)])
      hits += np.asarray(_count(apply_fn, a, frozen, xb, yb))
    return hits / len(y)

  result = {"train": [], "test": []}
  for c in range(num_classes):
    label = np.full((stream.train.shape[1],), c, np.int32)
    a, state = _learn_class(apply_fn, loss, optimizer, a, state, frozen,
                            lrs, stream.train[c], label)
    if progress is not None:
      progress(c + 1)
    if c + 1 in checkpoints:
      result["train"].append(score(a, stream.train[:c + 1]))
      result["test"].append(score(a, stream.test[:c + 1]))
  return {k: np.stack(v, axis=1) for k, v in result.items()}


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
@functools.partial(jax.vmap, in_axes=(None, None, None, 0, 0, None, 0, None,
                                      None))
def _learn_class(apply_fn, loss, optimizer, a, state, frozen, lr, x, y):
  """Online steps on the images `x` `[n, ...]` of one class, in order, for
  one rate of the grid (vmapped over the grid's rates, `a` and `state`)."""
  opt = optimizer(lr)

  def step(carry, example):
    a, state = carry
    ex, ey = example
    grads = jax.grad(lambda a: loss(
        apply_fn(inner.combine(a, frozen), ex[None]), ey[None]))(a)
    updates, state = opt.update(grads, state, a)
    return (optax.apply_updates(a, updates), state), None
  return jax.lax.scan(step, (a, state), (x, y))[0]


@functools.partial(jax.jit, static_argnums=0)
@functools.partial(jax.vmap, in_axes=(None, 0, None, None, None))
def _count(apply_fn, a, frozen, x, y):
  """Correct argmax labels of `x` for each rate's parameters `a`."""
  logits = apply_fn(inner.combine(a, frozen), x)
  return jnp.sum(jnp.argmax(logits, -1) == y)


def protocol(apply_fn: types.ApplyFn, loss: types.Loss,
             params: types.Params, dataset: ClassDataset, key: jax.Array, *,
             adapted: Callable[[str], bool], lrs: Sequence[float],
             runs: int, selection_runs: int,
             checkpoints: Sequence[int] = CHECKPOINTS,
             train_per_class: int = 15, test_per_class: int = 5,
             optimizer=optax.sgd, head: str = "head",
             head_init: str = "zeros",
             progress: Optional[Callable[[int], None]] = None) -> Dict:
  """The continual protocol: rate picked on some streams, scored on others.

  Every stream draws its own classes and order (`make_stream`) with
  `max(checkpoints)` classes. The first `selection_runs` streams pick, for
  every checkpoint, the rate of `lrs` whose mean accuracy on the training
  images it has seen is highest; the next `runs` streams report, at that
  rate, the mean and 95% interval of the accuracies on seen training images
  and on held-out images.

  Args:
    apply_fn, loss, params, adapted, lrs, checkpoints, optimizer: as in
      `learn_stream`.
    head, head_init: as in `learn_stream`; a "kaiming" head is drawn afresh
      for every stream, from the stream's key.
    dataset: the classes streams are drawn from.
    key: PRNG key of the streams.
    runs: reported streams, >= 2.
    selection_runs: streams that pick the rate, >= 1.
    train_per_class, test_per_class: as in `make_stream`.
    progress: called with the number of classes learnt so far, over all
      streams.

  Returns:
    {"checkpoints", "lrs", "selected_lr" (per checkpoint), "train" and
    "test" (per checkpoint, `mean_ci` dicts at the selected rate),
    "per_lr" ({"train", "test"}: mean accuracy of the reported streams,
    `[len(lrs)][len(checkpoints)]`), "runs", "selection_runs"}.
  """
  if runs < 2 or selection_runs < 1:
    raise ValueError(f"need runs >= 2 and selection_runs >= 1, got {runs} "
                     f"and {selection_runs}.")
  checkpoints = [int(c) for c in checkpoints]
  num_classes = max(checkpoints)
  curves = []
  for i, k in enumerate(jax.random.split(key, selection_runs + runs)):
    stream = make_stream(dataset, k, num_classes=num_classes,
                         train_per_class=train_per_class,
                         test_per_class=test_per_class)
    # Classes learnt over all streams: this stream's, after the earlier ones.
    counted = None if progress is None else (
        lambda c, before=i * num_classes: progress(before + c))
    curves.append(learn_stream(
        apply_fn, loss, params, stream, adapted=adapted, lrs=lrs,
        checkpoints=checkpoints, optimizer=optimizer, head=head,
        head_init=head_init, key=jax.random.fold_in(k, 1),
        progress=counted))
  pick = np.mean([c["train"] for c in curves[:selection_runs]], axis=0)
  chosen = np.argmax(pick, axis=0)  # [len(checkpoints)]
  reported = curves[selection_runs:]
  summary = {
      split: [mean_ci([c[split][chosen[j], j] for c in reported])
              for j in range(len(checkpoints))]
      for split in ("train", "test")}
  return {
      "checkpoints": checkpoints,
      "lrs": [float(lr) for lr in lrs],
      "selected_lr": [float(lrs[i]) for i in chosen],
      **summary,
      "per_lr": {split: np.mean([c[split] for c in reported],
                                axis=0).tolist()
                 for split in ("train", "test")},
      "runs": runs, "selection_runs": selection_runs,
  }
