"""The contract every builder of `metajax.algorithms` keeps.

Each learner of `LEARNERS` runs, with a tiny model, through its four
functions: `init`, `meta_grad` on a batch of tasks, `adapt` with its `steps`
option, and `predict`; compiled and not, and mapped over tasks with `vmap`
and with a Python loop. A new builder joins by adding one line.

On a small CPU compiling, not computing, takes the time, and an uncompiled
run compiles each operation alone: MAML's `meta_grad` costs twice its
compilation that way. So `meta_grad` is compiled once, for one shape, and
run on the batch and on each task repeated to fill a batch (the batch's
meta-gradient must be their mean); `adapt` and `predict` run uncompiled,
`vmap`ped over the batch, and are compared with a loop over tasks compiled
for one task, which shows both that compiling changes nothing and that the
batch is its tasks.
"""

import inspect
from typing import Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metajax
from metajax import algorithms
from metajax import types
from conftest import tiny_mlp, tiny_mlp_params
from fewshot import key

N_TASKS, WAYS, SHOTS, FEATURES, WIDTH = 3, 3, 2, 4, 8
TOLERANCE = dict(rtol=1e-5, atol=1e-6)


def _embed_init(rng):
  return {"w": jax.random.normal(rng, (FEATURES, WIDTH)) / 2}


def _embed(params, x):
  """`[n, FEATURES]` -> `[n, WIDTH]` embeddings."""
  return jnp.tanh(x @ params["w"])


def _relation_init(rng):
  return {"w": jax.random.normal(rng, (2 * WIDTH, 1)) / 4,
          "b": jnp.zeros((1,))}


def _relation(params, pairs):
  """`[m, 2 WIDTH]` pairs of embeddings -> `[m]` scores in (0, 1)."""
  return jax.nn.sigmoid(pairs @ params["w"] + params["b"])[:, 0]


def _curves():
  """`N_TASKS` sine curves to regress, drawn with NumPy (no compilation).

  Returns `Task((x, y), (x, y))` with float32 leaves `[N_TASKS, 5, 1]`
  (support) and `[N_TASKS, 7, 1]` (query).
  """
  rng = np.random.default_rng(0)
  amplitude = rng.uniform(1.0, 2.0, size=(N_TASKS, 1, 1))
  def draw(n):
    x = rng.uniform(-2.0, 2.0, size=(N_TASKS, n, 1))
    return (jnp.asarray(x, jnp.float32),
            jnp.asarray(amplitude * np.sin(x), jnp.float32))
  return metajax.Task(draw(5), draw(7))


def _episodes():
  """`N_TASKS` `WAYS`-way episodes of Gaussian classes in `FEATURES` dims.

  Returns `Task((x, y), (x, y))`: x float32 `[N_TASKS, WAYS * SHOTS,
  FEATURES]`, y int32 `[N_TASKS, WAYS * SHOTS]`, support and query drawn
  apart.
  """
  rng = np.random.default_rng(0)
  means = rng.normal(size=(N_TASKS, WAYS, 1, FEATURES))
  y = jnp.asarray(np.broadcast_to(
      np.repeat(np.arange(WAYS, dtype=np.int32), SHOTS),
      (N_TASKS, WAYS * SHOTS)))
  def draw():
    x = means + 0.3 * rng.normal(size=(N_TASKS, WAYS, SHOTS, FEATURES))
    return jnp.asarray(x.reshape(N_TASKS, WAYS * SHOTS, FEATURES), jnp.float32)
  return metajax.Task((draw(), y), (draw(), y))


class Case(NamedTuple):
  """A builder with a model, its tasks and what `predict` gives per query."""
  build: Callable[[], algorithms.MetaLearner]
  tasks: Callable[[], metajax.Task]
  output: tuple  # `predict`'s output shape after the query axis.
  by_gradient: bool  # whether `adapt` takes gradient steps


def _regression(build, **options):
  return Case(lambda: build(tiny_mlp_params, tiny_mlp, algorithms.mse,
                            steps=2, lr=0.1, **options),
              _curves, (1,), True)


def _metric(build, *networks):
  return Case(lambda: build(*networks, ways=WAYS), _episodes, (WAYS,), False)


LEARNERS = {
    "maml": _regression(algorithms.maml),
    "fomaml": _regression(algorithms.fomaml),
    "anil": _regression(algorithms.anil),
    "meta_sgd": _regression(algorithms.meta_sgd),
    "maml_plus_plus": _regression(algorithms.maml_plus_plus),
    "maml_adam": Case(lambda: algorithms.maml(
        tiny_mlp_params, tiny_mlp, algorithms.mse, steps=2,
        inner_optimizer=optax.adam(0.05)), _curves, (1,), True),
    "imaml": _regression(algorithms.imaml),
    "reptile": _regression(algorithms.reptile,
                           metrics=lambda p, y: {"mse": algorithms.mse(p, y)}),
    "joint": _regression(algorithms.joint),
    "protonet": _metric(algorithms.protonet, _embed_init, _embed),
    "matching": _metric(algorithms.matching, _embed_init, _embed),
    "relation": _metric(algorithms.relation, _embed_init, _embed,
                        _relation_init, _relation),
}


class Setup(NamedTuple):
  """One case's learner, its meta-parameters and a batch of its tasks."""
  case: Case
  learner: algorithms.MetaLearner
  meta_params: types.MetaParams
  tasks: metajax.Task


@pytest.fixture(scope="module", params=list(LEARNERS))
def setup(request):
  case = LEARNERS[request.param]
  learner = case.build()
  return Setup(case, learner, learner.init(key()), case.tasks())


def _task(tasks, i):
  return jax.tree.map(lambda x: x[i], tasks)


def _run_task(learner, meta_params, task):
  """`predict` on a task's query inputs after `adapt` on its support."""
  state = learner.adapt(meta_params, task.support)
  return learner.predict(meta_params, state, task.query[0])


def _signature(fn):
  """How `fn` is called: its positional arity and keyword-only defaults."""
  params = list(inspect.signature(fn).parameters.values())
  positional = sum(p.kind is p.POSITIONAL_OR_KEYWORD for p in params)
  return positional, {p.name: p.default for p in params
                      if p.kind is p.KEYWORD_ONLY}


def _protocol_signature(protocol):
  positional, keywords = _signature(protocol.__call__)
  return positional - 1, keywords  # less `self`


def test_functions_are_called_as_their_protocols(setup):
  protocols = dict(init=types.InitFn, meta_grad=types.MetaGradFn,
                   adapt=types.AdaptFn, predict=types.PredictFn)
  for name, protocol in protocols.items():
    assert _signature(getattr(setup.learner, name)) == (
        _protocol_signature(protocol)), name


def test_init_gives_finite_float_arrays_with_the_model_params(setup):
  meta_params = setup.meta_params
  assert isinstance(meta_params, dict) and "params" in meta_params
  assert algorithms.model_params(meta_params) is meta_params["params"]
  for leaf in jax.tree.leaves(meta_params):
    assert isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype,
                                                          jnp.floating)
  chex.assert_tree_all_finite(meta_params)
  chex.assert_trees_all_equal_shapes_and_dtypes(
      jax.eval_shape(setup.learner.init, key(7)), meta_params)


def test_meta_grad_is_finite_like_the_params_and_the_mean_over_tasks(setup):
  learner, meta_params, tasks = setup.learner, setup.meta_params, setup.tasks
  meta_grad = jax.jit(learner.meta_grad)
  grads, metrics = meta_grad(meta_params, tasks, key(2))
  chex.assert_trees_all_equal_shapes_and_dtypes(grads, meta_params)
  chex.assert_tree_all_finite(grads)
  assert "loss" in metrics
  for value in metrics.values():
    chex.assert_shape(value, ())
    assert jnp.issubdtype(value.dtype, jnp.floating)
  chex.assert_tree_all_finite(metrics)
  # Each task alone, repeated to the batch's shape so as to compile once.
  per_task = [meta_grad(meta_params, jax.tree.map(
      lambda x: jnp.repeat(x[i:i + 1], N_TASKS, axis=0), tasks), key(2))
              for i in range(N_TASKS)]
  chex.assert_trees_all_close(
      jax.tree.map(lambda *x: sum(x) / N_TASKS, *per_task), (grads, metrics),
      **TOLERANCE)


def test_adapt_then_predict_on_each_task(setup):
  learner, meta_params, tasks = setup.learner, setup.meta_params, setup.tasks
  run = jax.jit(lambda t: _run_task(learner, meta_params, t))
  looped = jnp.stack([run(_task(tasks, i)) for i in range(N_TASKS)])
  n_query = jax.tree.leaves(tasks.query)[0].shape[1]
  chex.assert_shape(looped, (N_TASKS, n_query) + setup.case.output)
  chex.assert_tree_all_finite(looped)
  mapped = jax.vmap(lambda t: _run_task(learner, meta_params, t))(tasks)
  chex.assert_trees_all_close(mapped, looped, **TOLERANCE)


def test_adapt_takes_steps_only_when_it_adapts_by_gradient(setup):
  learner, meta_params = setup.learner, setup.meta_params
  support = _task(setup.tasks, 0).support
  if not setup.case.by_gradient:
    chex.assert_trees_all_equal(
        learner.adapt(meta_params, support, steps=None), support)
    for steps in (0, 1):
      with pytest.raises(ValueError, match=r"adapts nothing by gradient: .* "
                         rf"takes steps=None only; got steps={steps}"):
        learner.adapt(meta_params, support, steps=steps)
    return

  @jax.jit  # `steps` is static: it sets the length of a scan.
  def adapt(meta_params, support):
    return [learner.adapt(meta_params, support)] + [
        learner.adapt(meta_params, support, steps=steps)
        for steps in (0, 1, 2)]

  default, zero, one, two = adapt(meta_params, support)
  params = algorithms.model_params(meta_params)
  chex.assert_trees_all_equal_shapes_and_dtypes(default, params)
  chex.assert_trees_all_equal(zero, params)
  assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, one, params)))
  # Every builder here is built with two steps.
  chex.assert_trees_all_close(two, default, **TOLERANCE)
