"""The types of the meta-learner contract.

Aliases name what a value is for, not a Python class: every one of them is a
PyTree of arrays to JAX. The Protocols are the signatures of the four pure
functions of a `metajax.algorithms.MetaLearner`, as optax's
`TransformInitFn` and `TransformUpdateFn` are those of a
`GradientTransformation`. Shapes below write `n` for the examples of a set,
`B` for the tasks of a batch.
"""

from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Protocol, Tuple

import jax
import jax.numpy as jnp
import numpy as np

if TYPE_CHECKING:
  # tasks.py imports this module, so `Task` is named for type checkers only.
  from metajax.tasks import Task

PyTree = Any
PRNGKey = jax.Array  # A key of `jax.random.key` or `jax.random.PRNGKey`.
Params = PyTree  # A model's parameters, as its `init_fn(key)` returns them.
# What the outer optimiser trains: a dict `{"params": Params, ...}` whose other
# entries belong to the learner (MAML's learned rates "lr"). Only
# `metajax.algorithms` reads inside it (`model_params`, `starting_from`).
MetaParams = Dict[str, PyTree]
TaskState = PyTree  # What `adapt` gives `predict`: adapted Params, a support.
Inputs = PyTree  # The inputs of a set, leaves `[n, ...]`.
Targets = PyTree  # The targets of a set, leaves `[n, ...]`.
Examples = PyTree  # A labelled set of one task, usually `(Inputs, Targets)`.
Metrics = Dict[str, jax.Array]  # Float scalars by name.

ModelInitFn = Callable[[PRNGKey], Params]
ApplyFn = Callable[[Params, Inputs], jax.Array]  # `apply_fn(params, x)`.
Loss = Callable[[jax.Array, Targets], jax.Array]  # `loss(predictions, y)`.
MetricsFn = Callable[[jax.Array, Targets], Metrics]
# `sample_tasks(key) -> Task` batch (leaves with a leading task axis);
# traceable, since it runs inside the compiled training step.
TaskSampler = Callable[[PRNGKey], "Task"]


class InitFn(Protocol):
  """The `init` of a `MetaLearner`: fresh meta-parameters."""

  def __call__(self, key: PRNGKey) -> MetaParams:
    """Initialises the meta-parameters.

    Args:
      key: a PRNG key.

    Returns:
      `{"params": model params, ...}`, a PyTree of float arrays whose shapes
      and dtypes do not depend on `key`.
    """


class MetaGradFn(Protocol):
  """The `meta_grad` of a `MetaLearner`: the outer gradient of a batch."""

  def __call__(self, meta_params: MetaParams, tasks: "Task",
               key: Optional[PRNGKey]) -> Tuple[MetaParams, Metrics]:
    """The meta-gradient of the mean task loss over a batch of tasks.

    Args:
      meta_params: the meta-parameters, as `init` returns them.
      tasks: a `Task` whose leaves carry a leading task axis `[B, n, ...]`.
      key: a PRNG key for stochastic learners; deterministic ones ignore it
        and accept None.

    Returns:
      `(grads, metrics)`: `grads` with the structure, shapes and dtypes of
      `meta_params` (a pseudo-gradient for Reptile-like learners), the mean
      over the batch of each task's own; `metrics`, float scalars averaged
      over the batch, at least "loss".
    """


class AdaptFn(Protocol):
  """The `adapt` of a `MetaLearner`: the state of one task."""

  def __call__(self, meta_params: MetaParams, support: Examples, *,
               steps: Optional[int] = None) -> TaskState:
    """Adapts to one task's support set (no task axis).

    Args:
      meta_params: the meta-parameters.
      support: one task's labelled set, leaves `[n_support, ...]`.
      steps: gradient steps, a static Python int >= 0 (it sets a scan
        length); None is the learner's own default. Learners that adapt
        nothing by gradient accept only None.

    Returns:
      The task state `predict` takes: adapted model parameters (with the
      structure, shapes and dtypes of `meta_params["params"]`), or the
      support set itself for metric-based learners.
    """


class PredictFn(Protocol):
  """The `predict` of a `MetaLearner`: outputs for one task's inputs."""

  def __call__(self, meta_params: MetaParams, task_state: TaskState,
               inputs: Inputs) -> jax.Array:
    """Predicts the outputs of one task's query inputs.

    Args:
      meta_params: the meta-parameters.
      task_state: what `adapt` returned for the task.
      inputs: query inputs, leaves `[n_query, ...]`.

    Returns:
      Float outputs `[n_query, ...]`: the model's predictions, or
      `[n_query, ways]` scores of classes for metric-based learners.
    """


def tree_mismatch(given: PyTree,
                  wanted: PyTree) -> Optional[Tuple[str, str, str]]:
  """The first difference in structure, shape or dtype between two PyTrees.

  Values are not compared, so traced leaves pass.

  Returns:
    None where they agree; otherwise `(where, given's, wanted's)`: `where`
    is "" and the two are "structure ..." when the structures differ, or
    the first differing leaf's path (`jax.tree_util.keystr`, e.g.
    "['body']['w']") and the two are "shape ... and dtype ...".
  """
  if jax.tree.structure(given) != jax.tree.structure(wanted):
    return ("", f"structure {jax.tree.structure(given)}",
            f"structure {jax.tree.structure(wanted)}")
  for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(given),
                          jax.tree.leaves(wanted)):
    kinds = [(np.shape(x), jnp.result_type(x)) for x in (g, w)]
    if kinds[0] != kinds[1]:
      return (jax.tree_util.keystr(path),
              *(f"shape {shape} and dtype {dtype}" for shape, dtype in kinds))
  return None
