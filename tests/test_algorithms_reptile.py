"""Reptile: the pseudo-gradient, how it relates to joint training, training."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metajax
from metajax import algorithms
from metajax.algorithms.reptile import reptile
from conftest import tiny_mlp, tiny_mlp_params, tiny_tasks
from fewshot import conv4, meta_train, tiny_episodes

mse = algorithms.mse
loss_fn = algorithms.supervised_loss(tiny_mlp, mse)


def _learner(**kw):
  return reptile(tiny_mlp_params, tiny_mlp, mse, **kw)


def _per_task(tasks):
  n = metajax.num_tasks(tasks)
  return [jax.tree.map(lambda a: a[i], tasks) for i in range(n)]


def test_pseudo_gradient_is_params_minus_the_mean_adapted_params():
  learner = _learner(steps=3, lr=0.1,
                     metrics=lambda p, y: {"query_mse": mse(p, y)})
  meta_params = learner.init(jax.random.PRNGKey(0))
  params = meta_params["params"]
  tasks = tiny_tasks(jax.random.PRNGKey(1), 4)
  grads, metrics = jax.jit(learner.meta_grad)(meta_params, tasks,
                                              jax.random.PRNGKey(2))
  # The inner loop trains on each task's pooled support and query data.
  data = [metajax.merge_sets(t) for t in _per_task(tasks)]
  adapt = jax.jit(lambda d, steps: metajax.adapt(loss_fn, params, d,
                                                 steps=steps, lr=0.1),
                  static_argnums=1)
  adapted = [adapt(d, 3) for d in data]
  expected = jax.tree.map(lambda p, *a: p - sum(a) / 4, params, *adapted)
  chex.assert_trees_all_close(grads["params"], expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
      metrics["loss"], np.mean([loss_fn(params, d) for d in data]), rtol=1e-6)
  np.testing.assert_allclose(
      metrics["adapted_loss"],
      np.mean([loss_fn(a, d) for a, d in zip(adapted, data)]), rtol=1e-6)
  assert float(metrics["adapted_loss"]) < float(metrics["loss"])
  # `metrics` scores the query set after adaptation on the support alone.
  np.testing.assert_allclose(metrics["query_mse"], np.mean([
      loss_fn(adapt(t.support, 3), t.query) for t in _per_task(tasks)]),
                             rtol=1e-5)


def test_one_inner_step_is_lr_times_the_joint_training_gradient(x64):
  tasks = tiny_tasks(jax.random.PRNGKey(1), 3, jnp.float64)
  init = lambda k: tiny_mlp_params(k, jnp.float64)
  meta_params = reptile(init, tiny_mlp, mse).init(jax.random.PRNGKey(0))
  one_step = reptile(init, tiny_mlp, mse, steps=1, lr=0.1)
  joint = algorithms.joint(init, tiny_mlp, mse)
  grads, _ = jax.jit(one_step.meta_grad)(meta_params, tasks, None)
  joint_grads, _ = jax.jit(joint.meta_grad)(meta_params, tasks, None)
  chex.assert_trees_all_close(grads, jax.tree.map(lambda g: 0.1 * g,
                                                  joint_grads),
                              rtol=1e-10, atol=1e-12)


def test_two_inner_steps_add_the_hessian_gradient_term(x64):
  """theta - phi_2 = 2 lr g - lr^2 H g + O(lr^3), averaged over tasks.

  `H g` is half the gradient of `||g||^2`: the term by which two steps of
  Reptile differ from joint training (Nichol et al., 2018, section 5).
  """
  lr = 1e-3
  tasks = tiny_tasks(jax.random.PRNGKey(1), 3, jnp.float64)
  learner = reptile(lambda k: tiny_mlp_params(k, jnp.float64), tiny_mlp, mse,
                    steps=2, lr=lr)
  meta_params = learner.init(jax.random.PRNGKey(0))
  grads, _ = jax.jit(learner.meta_grad)(meta_params, tasks, None)
  first, second = [], []
  for task in _per_task(tasks):
    grad_fn = jax.grad(lambda p, t=task: loss_fn(p, metajax.merge_sets(t)))
    g, hg = jax.jvp(grad_fn, (meta_params["params"],),
                    (grad_fn(meta_params["params"]),))
    first.append(jax.tree.map(lambda x: 2 * lr * x, g))
    second.append(jax.tree.map(lambda x: -lr ** 2 * x, hg))
  mean = lambda trees: jax.tree.map(lambda *x: sum(x) / len(x), *trees)
  first, second = mean(first), mean(second)
  size = lambda tree: max(float(jnp.abs(x).max())
                          for x in jax.tree.leaves(tree))
  residual = jax.tree.map(lambda r, a, b: r - a - b, grads["params"], first,
                          second)
  # The lr^2 term matters, and what is left after it is O(lr^3).
  assert size(jax.tree.map(jnp.subtract, grads["params"], first)) > (
      0.5 * size(second))
  assert size(residual) < 1e-2 * size(second)


@pytest.mark.parametrize("steps", [None, 4])
def test_adapt_fine_tunes_on_the_support_set(steps):
  # The paper fine-tunes for more steps at test time than in training.
  learner = _learner(steps=1, lr=0.1)
  meta_params = learner.init(jax.random.PRNGKey(0))
  task = _per_task(tiny_tasks(jax.random.PRNGKey(1), 1))[0]
  adapted = learner.adapt(meta_params, task.support, steps=steps)
  chex.assert_trees_all_close(
      adapted, metajax.adapt(loss_fn, meta_params["params"], task.support,
                             steps=steps or 1, lr=0.1))
  x = task.query[0]
  np.testing.assert_array_equal(learner.predict(meta_params, adapted, x),
                                tiny_mlp(adapted, x))


def test_meta_training_lowers_the_loss_of_a_conv4_classifier():
  init_fn, apply_fn = conv4(num_outputs=3)
  learner = reptile(init_fn, apply_fn, algorithms.cross_entropy, steps=3,
                    lr=0.1)
  metrics, _, _ = meta_train(learner, tiny_episodes(), optax.sgd(1.0), 6)
  assert metrics["loss"][-1] < 0.5 * metrics["loss"][0], metrics


def test_minibatches_take_one_shuffled_pass_over_each_task():
  """Each task's pooled data, permuted by its own key, is cut into `steps`
  slices, and inner step t descends on slice t only."""
  learner = _learner(steps=3, lr=0.1, minibatches=True)
  meta_params = learner.init(jax.random.PRNGKey(0))
  params = meta_params["params"]
  tasks = tiny_tasks(jax.random.PRNGKey(1), 2)
  key = jax.random.PRNGKey(5)
  grads, _ = jax.jit(learner.meta_grad)(meta_params, tasks, key)
  step = jax.jit(lambda p, b: jax.tree.map(
      lambda w, g: w - 0.1 * g, p, jax.grad(loss_fn)(p, b)))
  adapted = []
  for task, task_key in zip(_per_task(tasks), jax.random.split(key, 2)):
    x, y = metajax.merge_sets(task)
    order = np.asarray(jax.random.permutation(task_key, x.shape[0]))
    assert sorted(order) == list(range(12))  # 5 support + 7 query.
    p = params
    for t in range(3):
      rows = order[4 * t:4 * (t + 1)]
      p = step(p, (x[rows], y[rows]))
    adapted.append(p)
  expected = jax.tree.map(lambda q, *a: q - sum(a) / 2, params, *adapted)
  chex.assert_trees_all_close(grads["params"], expected, rtol=1e-5, atol=1e-6)
  # Another key shuffles otherwise, so the step differs.
  other, _ = jax.jit(learner.meta_grad)(meta_params, tasks,
                                        jax.random.PRNGKey(6))
  assert not np.allclose(other["params"]["head"]["w"],
                         grads["params"]["head"]["w"])


def test_an_optax_inner_optimizer_takes_the_steps():
  adam = optax.adam(0.05)
  learner = _learner(steps=3, inner_optimizer=adam)
  meta_params = learner.init(jax.random.PRNGKey(0))
  params = meta_params["params"]
  tasks = tiny_tasks(jax.random.PRNGKey(1), 2)
  grads, _ = jax.jit(learner.meta_grad)(meta_params, tasks, None)
  adapted = [metajax.adapt(loss_fn, params, metajax.merge_sets(t), steps=3,
                           optimizer=adam) for t in _per_task(tasks)]
  expected = jax.tree.map(lambda q, *a: q - sum(a) / 2, params, *adapted)
  chex.assert_trees_all_close(grads["params"], expected, rtol=1e-5, atol=1e-6)
  # Adam's first step moves every parameter by about its rate, which
  # gradient descent at that rate does not.
  sgd = metajax.adapt(loss_fn, params, metajax.merge_sets(
      _per_task(tasks)[0]), steps=3, lr=0.05)
  assert not np.allclose(adapted[0]["body"]["w"], sgd["body"]["w"])
  support = _per_task(tasks)[0].support
  chex.assert_trees_all_close(
      learner.adapt(meta_params, support, steps=5),
      metajax.adapt(loss_fn, params, support, steps=5, optimizer=adam))


def test_a_carried_inner_state_starts_every_task_and_becomes_their_mean():
  adam = optax.adam(0.05, b1=0.0)
  learner = _learner(steps=3, inner_optimizer=adam, carry_inner_state=True)
  meta_params = learner.init(jax.random.PRNGKey(0))
  params = meta_params["params"]
  chex.assert_trees_all_equal(meta_params["inner_state"], adam.init(params))
  tasks = tiny_tasks(jax.random.PRNGKey(1), 4)
  # A state as training leaves it: moments and a count of earlier steps.
  _, carried = metajax.adapt(loss_fn, params, _per_task(tasks)[0].support,
                             steps=2, optimizer=adam,
                             optimizer_state=adam.init(params))
  meta_params = dict(meta_params, inner_state=carried)
  grads, _ = jax.jit(learner.meta_grad)(meta_params, tasks, None)
  runs = [metajax.adapt(loss_fn, params, metajax.merge_sets(t), steps=3,
                        optimizer=adam, optimizer_state=carried)
          for t in _per_task(tasks)]
  mean_of = lambda trees: jax.tree.map(lambda *x: sum(x) / len(x), *trees)
  chex.assert_trees_all_close(
      grads["params"],
      jax.tree.map(lambda p, a: p - a, params, mean_of([a for a, _ in runs])),
      rtol=1e-5, atol=1e-6)
  finals = mean_of([s for _, s in runs])
  count = grads["inner_state"][0].count
  assert count.dtype == jnp.int32 and int(count) == -3
  chex.assert_trees_all_close(
      grads["inner_state"][0].nu,
      jax.tree.map(lambda c, f: c - f, carried[0].nu, finals[0].nu),
      rtol=1e-5, atol=1e-12)
  # carry_state trains the parameters with the optimiser given and sets the
  # state to the tasks' mean final state, whatever that optimiser's rate.
  outer = algorithms.reptile_lib.carry_state(optax.sgd(0.5))
  updates, _ = outer.update(grads, outer.init(meta_params), meta_params)
  stepped = optax.apply_updates(meta_params, updates)
  chex.assert_trees_all_close(
      stepped["params"],
      jax.tree.map(lambda p, g: p - 0.5 * g, params, grads["params"]))
  assert int(stepped["inner_state"][0].count) == 5
  chex.assert_trees_all_close(stepped["inner_state"][0].nu, finals[0].nu,
                              rtol=1e-5, atol=1e-12)
  # adapt starts from the carried state too.
  support = _per_task(tasks)[1].support
  chex.assert_trees_all_close(
      learner.adapt(meta_params, support, steps=4),
      metajax.adapt(loss_fn, params, support, steps=4, optimizer=adam,
                    optimizer_state=carried)[0])
  # A task at a time, the same pseudo-gradient, the count still an integer.
  chunked, _ = jax.jit(algorithms.map_tasks(learner, 1).meta_grad)(
      meta_params, tasks, jax.random.PRNGKey(0))
  chex.assert_trees_all_close(chunked, grads, rtol=1e-5, atol=1e-7)


def test_a_carried_state_moves_on_every_meta_step_of_training():
  adam = optax.adam(0.05, b1=0.0)
  learner = _learner(steps=3, inner_optimizer=adam, carry_inner_state=True)
  tasks = tiny_tasks(jax.random.PRNGKey(1), 2)
  metrics, initial, final = meta_train(
      learner, tasks, algorithms.reptile_lib.carry_state(optax.sgd(1.0)), 4)
  assert int(initial["inner_state"][0].count) == 0
  assert int(final["inner_state"][0].count) == 12
  assert float(jnp.min(jax.tree.leaves(final["inner_state"][0].nu)[0])) > 0
  # Training still works: the meta-parameters' loss on the tasks falls.
  assert metrics["loss"][-1] < 0.2 * metrics["loss"][0]


@pytest.mark.parametrize("minibatches", [False, True])
def test_sequential_tasks_pass_the_state_from_task_to_task(x64, minibatches):
  adam = optax.adam(0.05, b1=0.0)
  build = lambda **kw: reptile(
      lambda k: tiny_mlp_params(k, jnp.float64), tiny_mlp, mse, steps=3,
      inner_optimizer=adam, minibatches=minibatches, carry_inner_state=True,
      **kw)
  learner = build(sequential_tasks=True)
  meta_params = learner.init(jax.random.PRNGKey(0))
  params = meta_params["params"]
  tasks = tiny_tasks(jax.random.PRNGKey(1), 3, jnp.float64)
  key = jax.random.PRNGKey(2)
  grads, _ = jax.jit(learner.meta_grad)(meta_params, tasks, key)
  # The released loop: task after task, each from the state the last left,
  # each minibatched task shuffled by its own key as in the vmapped order.
  state, adapted = meta_params["inner_state"], []
  for task, task_key in zip(_per_task(tasks), jax.random.split(key, 3)):
    data = metajax.merge_sets(task)
    if minibatches:
      data = jax.tree.map(
          lambda x, k=task_key: x[jax.random.permutation(k, x.shape[0])],
          data)
    phi, state = metajax.adapt(loss_fn, params, data, steps=3,
                               optimizer=adam, optimizer_state=state,
                               online=minibatches)
    adapted.append(phi)
  chex.assert_trees_all_close(
      grads["params"],
      jax.tree.map(lambda p, *a: p - sum(a) / 3, params, *adapted),
      rtol=1e-10, atol=1e-12)
  assert int(grads["inner_state"][0].count) == -9  # 3 tasks of 3 steps.
  chex.assert_trees_all_close(
      grads["inner_state"][0].nu,
      jax.tree.map(lambda s, f: s - f, meta_params["inner_state"][0].nu,
                   state[0].nu), rtol=1e-10, atol=1e-14)
  # The order matters: the batch-mean state is another pseudo-gradient.
  mean_grads, _ = jax.jit(build().meta_grad)(meta_params, tasks, key)
  assert not np.allclose(jax.tree.leaves(mean_grads["params"])[0],
                         jax.tree.leaves(grads["params"])[0])
  # So the batch may not be cut into chunks, whose mean would be another
  # pseudo-gradient again.
  assert build().tasks_independent and not learner.tasks_independent
  with pytest.raises(ValueError, match="tasks_independent=False"):
    algorithms.map_tasks(learner, 1)
  # carry_state moves the state on to the last task's.
  outer = algorithms.reptile_lib.carry_state(optax.sgd(1.0))
  updates, _ = outer.update(grads, outer.init(meta_params), meta_params)
  stepped = optax.apply_updates(meta_params, updates)
  assert int(stepped["inner_state"][0].count) == 9
  chex.assert_trees_all_close(stepped["inner_state"][0].nu, state[0].nu,
                              rtol=1e-10, atol=1e-14)


def test_bad_minibatch_and_optimizer_settings_are_rejected():
  tasks = tiny_tasks(jax.random.PRNGKey(1), 2)
  learner = _learner(steps=5, minibatches=True)
  meta_params = learner.init(jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="steps must divide 12"):
    learner.meta_grad(meta_params, tasks, jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="shuffles each task's data"):
    _learner(steps=3, minibatches=True).meta_grad(meta_params, tasks, None)
  with pytest.raises(ValueError, match="steps >= 1"):
    _learner(steps=0, minibatches=True)
  with pytest.raises(ValueError):
    _learner(lr=0.1, inner_optimizer=optax.adam(0.1))
  with pytest.raises(ValueError, match="carry_inner_state carries the inner "
                     "optimizer's state .* give inner_optimizer"):
    _learner(lr=0.1, carry_inner_state=True)
  with pytest.raises(ValueError, match="sequential_tasks .* needs "
                     "carry_inner_state=True"):
    _learner(inner_optimizer=optax.adam(0.1), sequential_tasks=True)


def test_bad_step_counts_are_rejected():
  with pytest.raises(ValueError, match="steps must be >= 0"):
    _learner(steps=-1)
  learner = _learner()
  meta_params = learner.init(jax.random.PRNGKey(0))
  task = _per_task(tiny_tasks(jax.random.PRNGKey(1), 1))[0]
  with pytest.raises(TypeError, match="steps must be a Python int"):
    learner.adapt(meta_params, task.support, steps=2.5)
  with pytest.raises(ValueError, match="steps must be >= 0"):
    learner.adapt(meta_params, task.support, steps=-1)
