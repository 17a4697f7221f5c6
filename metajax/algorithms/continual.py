"""Meta-learned continual learners: OML and ANML, as options of MAML.

Both meta-train a network so that plain online SGD on part of it, one
example at a time, learns new classes without forgetting old ones:

* OML (Javed & White, NeurIPS 2019, "Meta-learning representations for
  continual learning") adapts the prediction network "pln" of an
  `metajax.models.continual.OMLNet`; the representation "rln" is trained by
  the outer loop only.
* ANML (Beaulieu et al., ECAI 2020, "Learning to continually learn") adapts
  the whole prediction network of an `ANMLNet`; the neuromodulatory network
  "nm", which gates the prediction features, is trained by the outer loop
  only.

A meta-training task (`metajax.data.vision.episodes.trajectory_sampler`)
is a trajectory of images of one class as support and, as query, the same
images and a "remember set" of images of all training classes. The inner
loop is one pass of online SGD over the trajectory (`maml(...,
online=True)`), after the output units of the trajectory's class are
zeroed (`reset_outputs`), so that every trajectory learns its class anew;
the meta-loss is the query loss after that pass, differentiated through
it exactly (second order unless `first_order`).

At meta-test the same online learner runs over a long stream of new
classes: `metajax.continual`.
"""

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from metajax import inner
from metajax import types
from metajax.algorithms.base import MetaLearner
from metajax.algorithms.maml import maml


def head_mask(params: types.Params, head: str, what: str):
  """Bools shaped like `params`: True on the leaves under a module named
  `head`.

  Raises:
    ValueError: no parameter path has that component; the message starts
      with `what` (the caller and what it does to the head).
  """
  mask = inner.mask_by_path(params, lambda path: head in path.split("/"))
  if not any(jax.tree.leaves(mask)):
    raise ValueError(f"{what} a module named head={head!r}, but no parameter "
                     f"path has that component.")
  return mask


def reset_outputs(params: types.Params, labels: jax.Array, *,
                  head: str = "head") -> types.Params:
  """`params` with the output units of the classes in `labels` zeroed.

  Args:
    params: model parameters; the leaves under a module named `head` (its
      kernel `[d, classes]` and bias `[classes]`) have the classes last.
    labels: int `[n]` class indices.
    head: the output module's name.

  Returns:
    `params` with column `c` of the head's kernel and entry `c` of its bias
    set to 0 for every `c` in `labels`; other leaves unchanged.

  Raises:
    ValueError: no parameter path has a component named `head`.
  """
  mask = head_mask(params, head, "reset_outputs zeroes the units of")

  def reset(leaf, is_head):
    if not is_head:
      return leaf
    hit = jnp.zeros(leaf.shape[-1], bool).at[labels].set(True)
    return jnp.where(hit, jnp.zeros((), leaf.dtype), leaf)
  return jax.tree.map(reset, params, mask)


def _reset_support_classes(params, support, head):
  _, labels = support
  return reset_outputs(params, labels, head=head)


def online_learner(init_fn: types.ModelInitFn, apply_fn: types.ApplyFn,
                   loss: types.Loss, *, adapted: Callable[[str], bool],
                   steps: int,
                   lr: float, reset: bool = True, head: str = "head",
                   first_order: bool = False,
                   metrics: Optional[types.MetricsFn] = None) -> MetaLearner:
  """MAML of one online pass over a trajectory, adapting part of the model.

  Args:
    init_fn, apply_fn, loss, metrics: as in `metajax.algorithms.maml`.
    adapted: `adapted(path) -> bool`, which parameters the online pass
      updates, by their path as `metajax.mask_by_path` gives it (e.g.
      "params/pln/head/kernel").
    steps: the trajectory's length divided by the images per online step
      (its length, for one image per step).
    lr: the online SGD rate.
    reset: zero the output units of the support's classes before the pass.
    head: the output module's name.
    first_order: drop second-order terms.

  Returns:
    A `MetaLearner` whose meta-parameters are `{"params": params}`;
    `adapt(meta_params, support, *, steps=None)` runs the online pass over
    `support` (x `[n, ...]`, int labels `[n]`) in `steps` slices (None: the
    builder's `steps`).
  """
  return maml(init_fn, apply_fn, loss, steps=steps, lr=lr,
              first_order=first_order,
              adapt_mask=lambda params: inner.mask_by_path(params, adapted),
              online=True,
              before_adapt=(functools.partial(_reset_support_classes,
                                              head=head) if reset else None),
              metrics=metrics)


def under(module: str) -> Callable[[str], bool]:
  """The paths of the parameters under a module named `module`."""
  return lambda path: module in path.split("/")


def outside(module: str) -> Callable[[str], bool]:
  """The paths of the parameters not under a module named `module`."""
  return lambda path: module not in path.split("/")


def oml(init_fn, apply_fn, loss, **kwargs) -> MetaLearner:
  """OML: the online pass updates "pln" of an `OMLNet`."""
  return online_learner(init_fn, apply_fn, loss, adapted=under("pln"),
                        **kwargs)


def anml(init_fn, apply_fn, loss, **kwargs) -> MetaLearner:
  """ANML: the online pass updates all of an `ANMLNet` but "nm"."""
  return online_learner(init_fn, apply_fn, loss, adapted=outside("nm"),
                        **kwargs)
