"""The MAML family and joint training through the MetaLearner interface."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metajax
from metajax import algorithms
from conftest import tiny_mlp, tiny_mlp_params, tiny_tasks

mse = algorithms.mse


def _init(key):
  return tiny_mlp_params(key)


def _learner(build=algorithms.maml, **kw):
  return build(_init, tiny_mlp, mse, **kw)


def test_maml_meta_grad_is_the_gradient_of_the_mean_task_loss():
  learner = _learner(steps=2, lr=0.1)
  meta_params = learner.init(jax.random.PRNGKey(0))
  tasks = tiny_tasks(jax.random.PRNGKey(1), 5)
  grads, metrics = learner.meta_grad(meta_params, tasks, jax.random.PRNGKey(2))
  loss_fn = algorithms.supervised_loss(tiny_mlp, mse)
  per_task = [jax.tree.map(lambda x: x[i], tasks) for i in range(5)]
  expected = jax.tree.map(lambda *g: sum(g) / 5, *[
      jax.grad(lambda p: metajax.maml_loss(loss_fn, p, t, steps=2, lr=0.1))(
          meta_params["params"]) for t in per_task])
  chex.assert_trees_all_close(grads["params"], expected, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(metrics["loss"], np.mean([
      metajax.maml_loss(loss_fn, meta_params["params"], t, steps=2, lr=0.1)
      for t in per_task]), rtol=1e-6)


def test_adapt_then_predict_lowers_the_support_loss():
  learner = _learner(steps=5, lr=0.1)
  meta_params = learner.init(jax.random.PRNGKey(0))
  task = jax.tree.map(lambda x: x[0], tiny_tasks(jax.random.PRNGKey(1), 1))
  x, y = task.support
  adapted = learner.adapt(meta_params, task.support)
  before = mse(tiny_mlp(meta_params["params"], x), y)
  after = mse(learner.predict(meta_params, adapted, x), y)
  assert float(after) < float(before)


def test_anil_adapts_only_the_head():
  learner = _learner(algorithms.anil, steps=3, lr=0.1)
  meta_params = learner.init(jax.random.PRNGKey(0))
  task = jax.tree.map(lambda x: x[0], tiny_tasks(jax.random.PRNGKey(1), 1))
  adapted = learner.adapt(meta_params, task.support)
  chex.assert_trees_all_equal(adapted["body"], meta_params["params"]["body"])
  assert not np.allclose(adapted["head"]["w"], meta_params["params"]["head"]["w"])
  grads, _ = learner.meta_grad(meta_params, tiny_tasks(jax.random.PRNGKey(1), 3),
                               None)
  assert float(jnp.abs(grads["params"]["body"]["w"]).max()) > 0


@pytest.mark.parametrize("build,lr_shape", [
    (algorithms.meta_sgd, lambda p, steps: p.shape),
    (algorithms.maml_plus_plus, lambda p, steps: (steps,))])
def test_learned_learning_rates_are_meta_parameters_with_gradients(build,
                                                                   lr_shape):
  learner = _learner(build, steps=3, lr=0.05)
  meta_params = learner.init(jax.random.PRNGKey(0))
  jax.tree.map(lambda p, l: chex.assert_shape(l, lr_shape(p, 3)),
               meta_params["params"], meta_params["lr"])
  grads, _ = learner.meta_grad(meta_params, tiny_tasks(jax.random.PRNGKey(1), 4),
                               None)
  for leaf in jax.tree.leaves(grads["lr"]):
    assert float(jnp.abs(leaf).max()) > 0


def test_maml_plus_plus_adapts_with_the_first_of_its_learned_rates():
  learner = _learner(algorithms.maml_plus_plus, steps=3, lr=0.05)
  meta_params = learner.init(jax.random.PRNGKey(0))
  # Distinct rates per step, so that taking the wrong ones shows.
  meta_params["lr"] = jax.tree.map(
      lambda l: l * jnp.array([1.0, 2.0, 3.0]), meta_params["lr"])
  task = jax.tree.map(lambda x: x[0], tiny_tasks(jax.random.PRNGKey(1), 1))
  loss_fn = algorithms.supervised_loss(tiny_mlp, mse)
  for steps in (0, 2, 3):
    expected = metajax.adapt(
        loss_fn, meta_params["params"], task.support, steps=steps,
        lr=jax.tree.map(lambda l: l[:steps], meta_params["lr"]),
        per_step_lr=True)
    chex.assert_trees_all_close(
        learner.adapt(meta_params, task.support, steps=steps), expected)
  chex.assert_trees_all_equal(learner.adapt(meta_params, task.support),
                              learner.adapt(meta_params, task.support,
                                            steps=3))
  with pytest.raises(ValueError, match=r"cannot adapt with steps=4: these "
                     r"meta-parameters have learned rates for 3 inner steps "
                     r"only"):
    learner.adapt(meta_params, task.support, steps=4)


def test_maml_plus_plus_rejects_params_trained_for_another_step_count():
  trained = _learner(algorithms.maml_plus_plus, steps=3).init(
      jax.random.PRNGKey(0))
  longer = _learner(algorithms.maml_plus_plus, steps=5)
  tasks = tiny_tasks(jax.random.PRNGKey(1), 1)
  task = jax.tree.map(lambda x: x[0], tasks)
  with pytest.raises(ValueError, match=r"steps=5: .* learned rates for 3 "
                     r"inner steps only"):
    longer.adapt(trained, task.support)
  # Training takes every learned rate: fewer steps than rates are an error.
  with pytest.raises(ValueError, match=r"leading axis must be the number of "
                     r"inner steps \(2\)"):
    _learner(algorithms.maml_plus_plus, steps=2).meta_grad(trained, tasks,
                                                           None)


@pytest.mark.parametrize("build", [algorithms.maml, algorithms.meta_sgd,
                                   algorithms.joint])
def test_adapt_steps_overrides_the_learners_own(build):
  learner = _learner(build, steps=1, lr=0.1)
  reference = _learner(build, steps=3, lr=0.1)
  meta_params = learner.init(jax.random.PRNGKey(0))
  task = jax.tree.map(lambda x: x[0], tiny_tasks(jax.random.PRNGKey(1), 1))
  adapt = jax.jit(learner.adapt, static_argnames="steps")
  chex.assert_trees_all_close(adapt(meta_params, task.support, steps=3),
                              reference.adapt(meta_params, task.support),
                              rtol=1e-6)
  with pytest.raises(TypeError, match="steps must be a Python int"):
    learner.adapt(meta_params, task.support, steps=jnp.int32(2))


def test_fomaml_gradient_is_the_query_gradient_at_the_adapted_params():
  learner = _learner(algorithms.fomaml, steps=2, lr=0.1)
  meta_params = learner.init(jax.random.PRNGKey(0))
  tasks = tiny_tasks(jax.random.PRNGKey(1), 1)
  task = jax.tree.map(lambda x: x[0], tasks)
  grads, _ = learner.meta_grad(meta_params, tasks, None)
  adapted = learner.adapt(meta_params, task.support)
  expected = jax.grad(algorithms.supervised_loss(tiny_mlp, mse))(adapted,
                                                                 task.query)
  chex.assert_trees_all_close(grads["params"], expected, rtol=1e-5, atol=1e-7)


def test_joint_trains_on_pooled_sets_and_fine_tunes_at_test():
  learner = algorithms.joint(_init, tiny_mlp, mse, steps=2, lr=0.1)
  meta_params = learner.init(jax.random.PRNGKey(0))
  tasks = tiny_tasks(jax.random.PRNGKey(1), 3)
  grads, metrics = learner.meta_grad(meta_params, tasks, None)
  def pooled(p):
    return jnp.mean(jnp.stack([
        mse(tiny_mlp(p, jnp.concatenate([tasks.support[0][i], tasks.query[0][i]])),
            jnp.concatenate([tasks.support[1][i], tasks.query[1][i]]))
        for i in range(3)]))
  chex.assert_trees_all_close(grads["params"],
                              jax.grad(pooled)(meta_params["params"]),
                              rtol=1e-5, atol=1e-7)
  task = jax.tree.map(lambda x: x[0], tasks)
  expected = metajax.adapt(algorithms.supervised_loss(tiny_mlp, mse),
                           meta_params["params"], task.support, steps=2, lr=0.1)
  chex.assert_trees_all_close(learner.adapt(meta_params, task.support),
                              expected)


def test_bad_options_are_rejected():
  with pytest.raises(ValueError, match="learn_lr"):
    _learner(learn_lr="per_layer")
  with pytest.raises(ValueError, match="steps must be >= 0"):
    _learner(steps=-2)


# One parameter array instead of a dict of them.

def _curve_init(key):
  return jax.random.normal(key, (3,))


def _curve(w, x):
  return w[0] * jnp.tanh(w[1] * x) + w[2]


@pytest.mark.parametrize("build", [algorithms.meta_sgd,
                                   algorithms.maml_plus_plus, algorithms.maml,
                                   algorithms.fomaml])
def test_a_single_array_of_params_trains_like_the_same_array_in_a_dict(build):
  single = build(_curve_init, _curve, mse, steps=3, lr=0.05)
  wrapped = build(lambda k: {"w": _curve_init(k)},
                  lambda p, x: _curve(p["w"], x), mse, steps=3, lr=0.05)
  meta_params = single.init(jax.random.PRNGKey(0))
  tasks = tiny_tasks(jax.random.PRNGKey(1), 4)
  grads, metrics = single.meta_grad(meta_params, tasks, None)
  as_dict = jax.tree.map(lambda x: {"w": x}, meta_params)
  chex.assert_trees_all_equal(as_dict, wrapped.init(jax.random.PRNGKey(0)))
  expected, expected_metrics = wrapped.meta_grad(as_dict, tasks, None)
  chex.assert_trees_all_close(jax.tree.map(lambda x: {"w": x}, grads),
                              expected, rtol=1e-6)
  np.testing.assert_allclose(metrics["loss"], expected_metrics["loss"],
                             rtol=1e-6)
  for leaf in jax.tree.leaves(grads):
    assert float(jnp.abs(leaf).max()) > 0
  jitted, _ = jax.jit(single.meta_grad)(meta_params, tasks, None)
  chex.assert_trees_all_close(jitted, grads, rtol=1e-5, atol=1e-7)
  task = jax.tree.map(lambda x: x[0], tasks)
  chex.assert_trees_all_close(single.adapt(meta_params, task.support),
                              wrapped.adapt(as_dict, task.support)["w"],
                              rtol=1e-6)


def test_anil_without_a_head_is_named_at_init():
  learner = algorithms.anil(_curve_init, _curve, mse)
  with pytest.raises(ValueError, match=r"anil adapts the parameters under a "
                     r"module named head='head', but no parameter path has "
                     r"that component \(the parameters: params\)"):
    learner.init(jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match=r"head='decoder'.*params\['body'\]"
                     r"\['b'\], params\['body'\]\['w'\]"):
    _learner(algorithms.anil, head="decoder").init(jax.random.PRNGKey(0))


def _head_mask(params):
  return metajax.mask_by_path(params, lambda path: path.startswith("head"))


def _jnp_head_mask(params):
  """The head mask as jnp booleans, which are tracers when built under jit."""
  return jax.tree.map(jnp.asarray, _head_mask(params))


HEAD_TREE = {"body": {"b": False, "w": False}, "head": {"b": True, "w": True}}


@pytest.mark.parametrize("adapt_mask", [_jnp_head_mask, HEAD_TREE,
                                        jax.tree.map(np.bool_, HEAD_TREE)])
def test_adapt_mask_may_be_jnp_bools_or_a_pytree(adapt_mask):
  """Each is the head mask: under jit too, for maml and joint alike."""
  tasks = tiny_tasks(jax.random.PRNGKey(1), 3)
  task = jax.tree.map(lambda x: x[0], tasks)
  for build, kw in ((algorithms.maml, dict(steps=2, lr=0.1)),
                    (algorithms.joint, dict(steps=2, lr=0.1))):
    learner = _learner(build, adapt_mask=adapt_mask, **kw)
    reference = _learner(build, adapt_mask=_head_mask, **kw)
    meta_params = learner.init(jax.random.PRNGKey(0))
    expected, _ = reference.meta_grad(meta_params, tasks, None)
    grads, _ = jax.jit(learner.meta_grad)(meta_params, tasks, None)
    chex.assert_trees_all_close(grads, expected, rtol=1e-5, atol=1e-7)
    adapted = jax.jit(learner.adapt)(meta_params, task.support)
    chex.assert_trees_all_close(
        adapted, reference.adapt(meta_params, task.support), rtol=1e-5)
    chex.assert_trees_all_equal(adapted["body"],
                                meta_params["params"]["body"])
    assert not np.allclose(adapted["head"]["w"],
                           meta_params["params"]["head"]["w"])


@pytest.mark.parametrize("build", [algorithms.maml, algorithms.joint])
def test_bad_adapt_masks_are_named_when_built_or_at_init(build):
  with pytest.raises(ValueError, match=r"params\['body'\]\['b'\], "
                     r"params\['body'\]\['w'\], params\['head'\]\['b'\], "
                     r"params\['head'\]\['w'\] have no entry in adapt_mask; "
                     r"adapt_mask\['head'\] is not a parameter array"):
    _learner(build, adapt_mask={"head": True}).init(jax.random.PRNGKey(0))
  # Leaves are checked when the learner is built, before any params exist.
  with pytest.raises(TypeError, match=r"adapt_mask\['head'\]\['w'\] is 1 of "
                     r"type int; mask leaves must be bools"):
    _learner(build, adapt_mask={"body": {"b": False, "w": False},
                                "head": {"b": True, "w": 1}})
  # A function's mask is checked against the params at init.
  with pytest.raises(ValueError, match=r"adapt_mask\(params\) must be a "
                     r"PyTree.*params\['body'\]\['b'\]"):
    _learner(build, adapt_mask=lambda p: {"head": True}).init(
        jax.random.PRNGKey(0))


def test_bad_options_are_rejected_when_the_learner_is_built():
  with pytest.raises(TypeError, match="steps must be a Python int"):
    _learner(algorithms.maml_plus_plus, steps=2.0)
  with pytest.raises(ValueError, match=r"maml_plus_plus .* needs steps >= 1; "
                     r"got steps=0"):
    _learner(algorithms.maml_plus_plus, steps=0)
  with pytest.raises(ValueError, match=r"step_weights must have one weight "
                     r"per inner step \(shape \(3,\)\), got shape \(2,\)"):
    _learner(steps=3, step_weights=[0.5, 0.5])
  with pytest.raises(ValueError, match=r"step_weights .* need steps >= 1; "
                     r"got steps=0"):
    _learner(steps=0, step_weights=[])
  for build in (algorithms.maml, algorithms.joint, algorithms.reptile):
    with pytest.raises(ValueError, match=r"lr must be finite, got nan"):
      _learner(build, lr=float("nan"))
    with pytest.raises(TypeError, match=r"lr must be a real number, got str "
                       r"'0.1'"):
      _learner(build, lr="0.1")
  with pytest.raises(TypeError, match=r"lr must be a real number, got ndarray "
                     r"shape \(2,\)"):
    _learner(algorithms.meta_sgd, lr=np.array([0.1, 0.2]))


# An optax optimiser in the inner loop.

def test_maml_with_an_adam_inner_loop_is_maml_loss_with_that_optimizer():
  opt = optax.adam(0.05)
  learner = _learner(steps=3, inner_optimizer=opt)
  meta_params = learner.init(jax.random.PRNGKey(0))
  assert set(meta_params) == {"params"}
  tasks = tiny_tasks(jax.random.PRNGKey(1), 4)
  grads, metrics = learner.meta_grad(meta_params, tasks, None)
  loss_fn = algorithms.supervised_loss(tiny_mlp, mse)
  per_task = [jax.tree.map(lambda x: x[i], tasks) for i in range(4)]
  expected = jax.tree.map(lambda *g: sum(g) / 4, *[
      jax.grad(lambda p: metajax.maml_loss(loss_fn, p, t, steps=3,
                                           optimizer=opt))(
          meta_params["params"]) for t in per_task])
  chex.assert_trees_all_close(grads["params"], expected, rtol=1e-5, atol=1e-7)
  chex.assert_trees_all_close(
      learner.adapt(meta_params, per_task[0].support),
      metajax.adapt(loss_fn, meta_params["params"], per_task[0].support,
                    steps=3, optimizer=opt))


def test_learned_inner_hyperparams_are_meta_parameters_and_train():
  opt = optax.inject_hyperparams(optax.sgd)(learning_rate=0.05, momentum=0.5)
  learner = _learner(steps=3, inner_optimizer=opt, learn_hyperparams=True)
  meta_params = learner.init(jax.random.PRNGKey(0))
  assert set(meta_params["hyperparams"]) == {"learning_rate", "momentum"}
  np.testing.assert_allclose(meta_params["hyperparams"]["learning_rate"],
                             0.05)
  tasks = tiny_tasks(jax.random.PRNGKey(1), 8)
  meta_grad = jax.jit(learner.meta_grad)
  grads, _ = meta_grad(meta_params, tasks, None)
  assert all(float(jnp.abs(g)) > 0
             for g in jax.tree.leaves(grads["hyperparams"]))
  # A few outer steps on the hyper-parameters alone lower the loss after
  # adaptation.
  state = meta_params
  for _ in range(20):
    grads, metrics = meta_grad(state, tasks, None)
    state = dict(state, hyperparams=jax.tree.map(
        lambda h, g: h - 0.01 * g, state["hyperparams"], grads["hyperparams"]))
  assert float(meta_grad(state, tasks, None)[1]["loss"]) < float(
      meta_grad(meta_params, tasks, None)[1]["loss"])


def test_inner_optimizer_options_that_conflict_are_named():
  with pytest.raises(ValueError, match="either lr .* not both"):
    _learner(lr=0.1, inner_optimizer=optax.sgd(0.1))
  with pytest.raises(ValueError, match="learn_lr='per_param' learns gradient "
                     "descent's rates; with an inner_optimizer, use "
                     "learn_hyperparams"):
    _learner(algorithms.meta_sgd, inner_optimizer=optax.sgd(0.1))
  with pytest.raises(ValueError, match="learn_hyperparams .* there is none"):
    _learner(learn_hyperparams=True)
  with pytest.raises(ValueError, match="optax.inject_hyperparams"):
    _learner(inner_optimizer=optax.adam(0.1),
             learn_hyperparams=True).init(jax.random.PRNGKey(0))
