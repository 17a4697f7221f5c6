"""The inner loop: exact meta-gradients, its options, and its error messages."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metajax
from metajax.algorithms.base import cross_entropy
from metajax.algorithms.base import supervised_loss
from metajax.models import Conv4
from conftest import tiny_loss, tiny_mlp, tiny_mlp_params, tiny_task
from conftest import tiny_tasks


def _flat(tree):
  return jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(tree)])


def _directional_check(f, params, key, n_dirs=3, h=1e-5):
  """Max relative error between jax.grad(f)·d and a central difference."""
  grads = jax.grad(f)(params)
  errors = []
  for k in jax.random.split(key, n_dirs):
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(k, len(leaves))
    d = jax.tree.unflatten(treedef, [
        jax.random.normal(kk, l.shape, l.dtype) for kk, l in zip(keys, leaves)])
    shift = lambda s: jax.tree.map(lambda p, v: p + s * h * v, params, d)
    fd = (f(shift(1.0)) - f(shift(-1.0))) / (2 * h)
    ad = jnp.vdot(_flat(grads), _flat(d))
    errors.append(float(jnp.abs(fd - ad) / jnp.abs(ad)))
  return max(errors)


@pytest.mark.parametrize("steps", [1, 3])
def test_second_order_meta_gradient_matches_finite_differences(x64, steps):
  params = tiny_mlp_params(jax.random.PRNGKey(0), jnp.float64)
  task = tiny_task(jax.random.PRNGKey(1), jnp.float64)
  f = lambda p: metajax.maml_loss(tiny_loss, p, task, steps=steps, lr=0.3)
  assert _directional_check(f, params, jax.random.PRNGKey(2)) <= 1e-6


def test_first_order_differs_from_second_order(x64):
  params = tiny_mlp_params(jax.random.PRNGKey(0), jnp.float64)
  task = tiny_task(jax.random.PRNGKey(1), jnp.float64)
  grad = lambda fo: _flat(jax.grad(lambda p: metajax.maml_loss(
      tiny_loss, p, task, steps=3, lr=0.3, first_order=fo))(params))
  so, fo = grad(False), grad(True)
  rel = float(jnp.linalg.norm(so - fo) / jnp.linalg.norm(so))
  assert rel > 1e-3  # far above the 1e-6 exactness tolerance
  # The first-order gradient is the query gradient at the adapted params.
  adapted = metajax.adapt(tiny_loss, params, task.support, steps=3, lr=0.3)
  np.testing.assert_allclose(
      fo, _flat(jax.grad(tiny_loss)(adapted, task.query)), rtol=1e-12)


def _conv4_problem(dtype=jnp.float32, shots=2, size=8):
  """A 3-way task of `[3 * shots, size, size, 1]` images and a width-4 Conv4.

  Without batch norm, so that no gradient is zero up to rounding (the biases
  before a batch norm have an exactly-zero meta-gradient) and every leaf can
  be compared relatively. Returns `(loss_fn, params, task)`.
  """
  model = Conv4(num_outputs=3, width=4, norm="none")
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 1)))
  params = jax.tree.map(lambda p: p.astype(dtype), params)
  k_support, k_query = jax.random.split(jax.random.PRNGKey(1))
  images = lambda k: jax.random.normal(k, (3 * shots, size, size, 1), dtype)
  labels = jnp.arange(3 * shots) % 3
  task = metajax.Task((images(k_support), labels), (images(k_query), labels))
  return supervised_loss(model.apply, cross_entropy), params, task


def _mlp_problem(dtype):
  return (tiny_loss, tiny_mlp_params(jax.random.PRNGKey(0), dtype),
          tiny_task(jax.random.PRNGKey(1), dtype))


# With remat, 3 and 7 (prime) steps are checkpointed one by one, 8 also in 4
# segments of 2 and 9 in 3 of 3. Per-step rates and the multi-step loss make
# the segments split a scanned input and join a scanned output.
@pytest.mark.slow
@pytest.mark.parametrize("problem,steps,per_step", [
    (_mlp_problem, 3, False), (_mlp_problem, 7, False),
    (_mlp_problem, 9, False), (_mlp_problem, 8, True),
    (_mlp_problem, 9, True), (_conv4_problem, 8, True)])
def test_remat_gives_the_same_gradient(x64, problem, steps, per_step):
  """Remat changes neither the loss nor its gradient (to params and rates)."""
  loss_fn, params, task = problem(jnp.float64)
  options = dict(lr=jnp.linspace(0.1, 0.3, steps), per_step_lr=True,
                 step_weights=jnp.linspace(1.0, 2.0, steps) / steps
                 ) if per_step else dict(lr=0.3)

  def value_and_grad(remat):
    f = lambda p, lr: metajax.maml_loss(
        loss_fn, p, task, steps=steps, remat=remat, **dict(options, lr=lr))
    return jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(params,
                                                          options["lr"])

  # No gradient is near zero (see _conv4_problem), so rtol alone is
  # meaningful; a missing or doubled term would be off by ~1e-2.
  chex.assert_trees_all_close(value_and_grad(True), value_and_grad(False),
                              rtol=1e-12, atol=0)


@pytest.mark.slow
def test_remat_memory_grows_by_parameters_not_activations():
  """XLA's compiled temporary memory of the meta-gradient at 4 and 16 steps.

  Without remat, every inner step keeps its activations for the backward
  pass. Checkpointing each step alone would keep one set of parameters per
  step, 12 sets more at 16 steps than at 4; with segments of sqrt(steps)
  steps it is 4 + 4 sets at 16 steps against 4 at 4 steps. Buffer sizes are
  fixed at compile time, so the numbers are deterministic.
  """
  loss_fn, params, task = _conv4_problem(shots=8)
  param_bytes = sum(x.nbytes for x in jax.tree.leaves(params))

  def temp_bytes(steps, remat):
    meta_grad = jax.jit(jax.grad(lambda p: metajax.maml_loss(
        loss_fn, p, task, steps=steps, lr=0.4, remat=remat)))
    stats = meta_grad.lower(params).compile().memory_analysis()
    if stats is None:
      pytest.skip(f"memory_analysis() is not available on "
                  f"{jax.default_backend()}")
    return stats.temp_size_in_bytes

  growth = {remat: temp_bytes(16, remat) - temp_bytes(4, remat)
            for remat in (False, True)}
  # Measured on the CPU: 183 parameter sets without remat, 4.4 with.
  assert growth[False] > 100 * param_bytes
  assert growth[False] > 10 * growth[True]
  assert growth[True] < 8 * param_bytes


def test_adapt_is_plain_gradient_descent(x64):
  params = tiny_mlp_params(jax.random.PRNGKey(0), jnp.float64)
  task = tiny_task(jax.random.PRNGKey(1), jnp.float64)
  expected = params
  for _ in range(4):
    g = jax.grad(tiny_loss)(expected, task.support)
    expected = jax.tree.map(lambda p, g: p - 0.2 * g, expected, g)
  got = metajax.adapt(tiny_loss, params, task.support, steps=4, lr=0.2)
  chex.assert_trees_all_close(got, expected, rtol=1e-12)
  chex.assert_trees_all_equal(
      metajax.adapt(tiny_loss, params, task.support, steps=0, lr=0.2), params)


@pytest.mark.parametrize("optimizer", [None, "momentum"])
def test_online_adaptation_steps_through_the_stream_in_order(x64, optimizer):
  params = tiny_mlp_params(jax.random.PRNGKey(0), jnp.float64)
  task = tiny_task(jax.random.PRNGKey(1), jnp.float64, n_support=6)
  opt = optax.sgd(0.2, momentum=0.9) if optimizer else None
  kwargs = dict(optimizer=opt) if opt else dict(lr=0.2)
  expected, state = params, opt.init(params) if opt else None
  for t in range(3):  # slices of two examples, in order
    batch = jax.tree.map(lambda x: x[2 * t:2 * t + 2], task.support)
    g = jax.grad(tiny_loss)(expected, batch)
    if opt:
      updates, state = opt.update(g, state, expected)
      expected = optax.apply_updates(expected, updates)
    else:
      expected = jax.tree.map(lambda p, g: p - 0.2 * g, expected, g)
  got = metajax.adapt(tiny_loss, params, task.support, steps=3, online=True,
                      **kwargs)
  chex.assert_trees_all_close(got, expected, rtol=1e-12)
  # The full-batch loop is another function of the same data.
  full = metajax.adapt(tiny_loss, params, task.support, steps=3, **kwargs)
  assert float(jnp.max(jnp.abs(_flat(full) - _flat(got)))) > 1e-3


@pytest.mark.parametrize("remat", [False, True])
def test_online_meta_gradient_matches_finite_differences(x64, remat):
  params = tiny_mlp_params(jax.random.PRNGKey(0), jnp.float64)
  task = tiny_task(jax.random.PRNGKey(1), jnp.float64, n_support=6)
  f = lambda p: metajax.maml_loss(tiny_loss, p, task, steps=6, lr=0.3,
                                  online=True, remat=remat)
  assert _directional_check(f, params, jax.random.PRNGKey(2)) <= 1e-6


def test_online_steps_that_do_not_divide_the_stream_are_named():
  params = tiny_mlp_params(jax.random.PRNGKey(0))
  task = tiny_task(jax.random.PRNGKey(1), n_support=5)
  with pytest.raises(ValueError, match="5 examples in steps=2"):
    metajax.adapt(tiny_loss, params, task.support, steps=2, lr=0.1,
                  online=True)


def test_per_parameter_learning_rates_get_exact_gradients(x64):
  """Meta-SGD: the rates are differentiable and their gradient is exact."""
  params = tiny_mlp_params(jax.random.PRNGKey(0), jnp.float64)
  task = tiny_task(jax.random.PRNGKey(1), jnp.float64)
  lrs = jax.tree.map(lambda p: jnp.full_like(p, 0.2), params)
  f = lambda lr: metajax.maml_loss(tiny_loss, params, task, steps=2, lr=lr)
  g = jax.grad(f)(lrs)
  assert all(float(jnp.max(jnp.abs(x))) > 0 for x in jax.tree.leaves(g))
  assert _directional_check(f, lrs, jax.random.PRNGKey(3)) <= 1e-6


def test_per_step_learning_rates_get_gradients_for_every_step(x64):
  """MAML++ LSLR: one rate per parameter array and step, all trained."""
  params = tiny_mlp_params(jax.random.PRNGKey(0), jnp.float64)
  task = tiny_task(jax.random.PRNGKey(1), jnp.float64)
  lrs = jax.tree.map(lambda p: jnp.array([0.1, 0.2, 0.3]), params)
  f = lambda lr: metajax.maml_loss(tiny_loss, params, task, steps=3, lr=lr,
                                   per_step_lr=True, step_weights=[.2, .3, .5])
  g = jax.grad(f)(lrs)
  for leaf in jax.tree.leaves(g):
    assert leaf.shape == (3,) and bool(jnp.all(leaf != 0))
  assert _directional_check(f, lrs, jax.random.PRNGKey(3)) <= 1e-6
  # A per-step schedule equals chaining single steps at those rates.
  p = params
  for rate in (0.1, 0.2, 0.3):
    p = metajax.adapt(tiny_loss, p, task.support, steps=1, lr=rate)
  chex.assert_trees_all_close(
      metajax.adapt(tiny_loss, params, task.support, steps=3,
                    lr=jnp.array([0.1, 0.2, 0.3]), per_step_lr=True),
      p, rtol=1e-12)


def test_multi_step_loss_is_the_weighted_sum_of_query_losses(x64):
  params = tiny_mlp_params(jax.random.PRNGKey(0), jnp.float64)
  task = tiny_task(jax.random.PRNGKey(1), jnp.float64)
  weights = [0.1, 0.3, 0.6]
  expected = sum(
      w * metajax.maml_loss(tiny_loss, params, task, steps=t + 1, lr=0.3)
      for t, w in enumerate(weights))
  got = metajax.maml_loss(tiny_loss, params, task, steps=3, lr=0.3,
                          step_weights=weights)
  np.testing.assert_allclose(got, expected, rtol=1e-12)
  f = lambda p: metajax.maml_loss(tiny_loss, p, task, steps=3, lr=0.3,
                                  step_weights=weights)
  assert _directional_check(f, params, jax.random.PRNGKey(2)) <= 1e-6


def test_mask_adapts_only_the_head_but_the_body_gets_meta_gradients(x64):
  """ANIL: the body is frozen inside the loop, yet trained by the outer loop."""
  params = tiny_mlp_params(jax.random.PRNGKey(0), jnp.float64)
  task = tiny_task(jax.random.PRNGKey(1), jnp.float64)
  mask = metajax.mask_by_path(params, lambda path: path.startswith("head"))
  assert mask == {"body": {"b": False, "w": False},
                  "head": {"b": True, "w": True}}
  adapted = metajax.adapt(tiny_loss, params, task.support, steps=3, lr=0.3,
                          mask=mask)
  chex.assert_trees_all_equal(adapted["body"], params["body"])
  assert not np.allclose(adapted["head"]["w"], params["head"]["w"])
  f = lambda p: metajax.maml_loss(tiny_loss, p, task, steps=3, lr=0.3,
                                  mask=mask)
  assert float(jnp.abs(jax.grad(f)(params)["body"]["w"]).max()) > 0
  assert _directional_check(f, params, jax.random.PRNGKey(2)) <= 1e-6


def test_vmap_over_tasks_equals_a_python_loop():
  params = tiny_mlp_params(jax.random.PRNGKey(0))
  tasks = tiny_tasks(jax.random.PRNGKey(1), 4)
  f = functools.partial(metajax.maml_loss, tiny_loss, steps=2, lr=0.1)
  batched = jax.vmap(f, in_axes=(None, 0))(params, tasks)
  looped = [f(params, jax.tree.map(lambda x: x[i], tasks)) for i in range(4)]
  np.testing.assert_allclose(batched, jnp.stack(looped), rtol=1e-6)
  g_batched = jax.grad(lambda p: jnp.mean(
      jax.vmap(f, in_axes=(None, 0))(p, tasks)))(params)
  g_looped = jax.tree.map(lambda *g: sum(g) / 4, *[
      jax.grad(f)(params, jax.tree.map(lambda x: x[i], tasks))
      for i in range(4)])
  chex.assert_trees_all_close(g_batched, g_looped, rtol=1e-5, atol=1e-7)


class JitTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_jit_equals_no_jit(self):
    params = tiny_mlp_params(jax.random.PRNGKey(0))
    task = tiny_task(jax.random.PRNGKey(1))

    @self.variant
    def meta_grad(p, t):
      return jax.grad(lambda q: metajax.maml_loss(tiny_loss, q, t, steps=2,
                                                  lr=0.1))(p)

    expected = jax.grad(lambda q: metajax.maml_loss(
        tiny_loss, q, task, steps=2, lr=0.1))(params)
    chex.assert_trees_all_close(meta_grad(params, task), expected, rtol=1e-5)


# Bad input.

def _setup():
  return tiny_mlp_params(jax.random.PRNGKey(0)), tiny_task(
      jax.random.PRNGKey(1))


def test_mismatched_support_and_query_shapes_are_named():
  params, task = _setup()
  (xs, ys), (xq, yq) = task
  bad = metajax.Task((xs, ys), (jnp.zeros((7, 2)), yq))
  with pytest.raises(ValueError, match=r"support\[0\].*\(1,\).*query\[0\].*"
                     r"\(2,\)"):
    metajax.maml_loss(tiny_loss, params, bad, steps=1, lr=0.1)
  with pytest.raises(ValueError, match="different structures"):
    metajax.maml_loss(tiny_loss, params, metajax.Task((xs, ys), (xq,)),
                      steps=1, lr=0.1)
  with pytest.raises(ValueError, match=r"disagree on the size of axis 0"):
    metajax.maml_loss(tiny_loss, params,
                      metajax.Task((xs, ys[:3]), (xq, yq)), steps=1, lr=0.1)


def test_non_scalar_loss_is_rejected():
  params, task = _setup()
  per_example = lambda p, b: jnp.sum((tiny_mlp(p, b[0]) - b[1]) ** 2, -1)
  with pytest.raises(ValueError, match=r"must return a scalar.*shape \(5,\)"):
    metajax.adapt(per_example, params, task.support, steps=1, lr=0.1)
  with pytest.raises(ValueError, match="returned a tuple"):
    metajax.adapt(lambda p, b: (tiny_loss(p, b), 0.0), params, task.support,
                  steps=1, lr=0.1)


@pytest.mark.parametrize("steps,error", [(-1, ValueError), (2.0, TypeError),
                                         (True, TypeError)])
def test_bad_steps_are_rejected(steps, error):
  params, task = _setup()
  with pytest.raises(error, match="steps"):
    metajax.maml_loss(tiny_loss, params, task, steps=steps, lr=0.1)


def test_bad_learning_rates_masks_and_weights_are_named():
  params, task = _setup()
  lrs = jax.tree.map(jnp.ones_like, params)
  lrs["body"]["w"] = jnp.ones((3, 3))
  with pytest.raises(ValueError, match=r"lr\['body'\]\['w'\].*\(3, 3\).*"
                     r"\(1, 6\)"):
    metajax.adapt(tiny_loss, params, task.support, steps=1, lr=lrs)
  with pytest.raises(ValueError, match="structure of params"):
    metajax.adapt(tiny_loss, params, task.support, steps=1,
                  lr={"body": 0.1})
  with pytest.raises(ValueError, match=r"leading axis.*inner steps \(3\)"):
    metajax.adapt(tiny_loss, params, task.support, steps=3,
                  lr=jax.tree.map(lambda p: jnp.ones(2), params),
                  per_step_lr=True)
  with pytest.raises(ValueError, match=r"shape \(3,\).*got \(\)"):
    metajax.adapt(tiny_loss, params, task.support, steps=3, lr=0.1,
                  per_step_lr=True)
  with pytest.raises(ValueError, match="mask selects no parameter"):
    metajax.adapt(tiny_loss, params, task.support, steps=1, lr=0.1,
                  mask=jax.tree.map(lambda _: False, params))
  with pytest.raises(ValueError, match="mask must be a PyTree"):
    metajax.adapt(tiny_loss, params, task.support, steps=1, lr=0.1,
                  mask={"head": True})
  with pytest.raises(ValueError, match=r"one weight per inner step"):
    metajax.maml_loss(tiny_loss, params, task, steps=3, lr=0.1,
                      step_weights=[1.0, 1.0])


# A model whose parameters are one array, not a dict: a single array is a
# PyTree too, and every option must treat it as one.

def _curve(w, x):
  """`[n, 1]` inputs -> `[n, 1]` outputs of the parameter array `w` `[3]`."""
  return w[0] * jnp.tanh(w[1] * x) + w[2]


def _curve_loss(w, batch):
  x, y = batch
  return jnp.mean((_curve(w, x) - y) ** 2)


@pytest.mark.parametrize("per_step", [False, True])
def test_single_array_params_take_per_element_learning_rates(x64, per_step):
  """Meta-SGD / LSLR rates for one array equal those for it in a dict."""
  w = jnp.array([1.2, 0.7, -0.1])
  lr = jnp.array([0.1, 0.3, 0.2])
  if per_step:
    lr = jnp.stack([lr, 2 * lr])
  task = tiny_task(jax.random.PRNGKey(1), jnp.float64)
  options = dict(steps=2, per_step_lr=per_step)

  def single(w, lr):
    return metajax.maml_loss(_curve_loss, w, task, lr=lr, **options)

  def wrapped(w, lr):
    return metajax.maml_loss(lambda p, b: _curve_loss(p["w"], b), {"w": w},
                             task, lr={"w": lr}, **options)

  grads = jax.value_and_grad(single, argnums=(0, 1))
  value, (g_w, g_lr) = grads(w, lr)
  assert g_lr.shape == lr.shape and bool(jnp.all(g_lr != 0))
  chex.assert_trees_all_close((value, (g_w, g_lr)),
                              jax.value_and_grad(wrapped, (0, 1))(w, lr),
                              rtol=1e-12)
  chex.assert_trees_all_close(jax.jit(grads)(w, lr), (value, (g_w, g_lr)),
                              rtol=1e-12)
  # Per-element rates are not one shared rate: each element moves by its own.
  one_step = metajax.adapt(_curve_loss, w, task.support, steps=1,
                           lr=lr[0] if per_step else lr)
  np.testing.assert_allclose(
      one_step, w - (lr[0] if per_step else lr) * jax.grad(_curve_loss)(
          w, task.support), rtol=1e-12)


def test_masks_of_concrete_numpy_and_jnp_bools_are_python_bools():
  params, task = _setup()
  head = metajax.mask_by_path(params, lambda path: path.startswith("head"))
  expected = metajax.adapt(tiny_loss, params, task.support, steps=2, lr=0.3,
                           mask=head)
  for to_bool in (jnp.array, np.bool_, np.array):
    mask = jax.tree.map(to_bool, head)
    assert metajax.inner.check_mask(mask, params) == head
    adapt = lambda p: metajax.adapt(tiny_loss, p, task.support, steps=2,
                                    lr=0.3, mask=mask)
    chex.assert_trees_all_equal(adapt(params), expected)
    chex.assert_trees_all_equal(jax.jit(adapt)(params), expected)


def test_traced_non_scalar_and_non_bool_mask_leaves_are_named():
  params, task = _setup()
  adapt = lambda p, m: metajax.adapt(tiny_loss, p, task.support, steps=1,
                                     lr=0.1, mask=m)
  # Built inside jax.jit, or passed as a jit argument, jnp bools are traced.
  inside = jax.jit(lambda p: adapt(p, jax.tree.map(lambda _: jnp.array(True),
                                                   p)))
  with pytest.raises(TypeError, match=r"mask\['body'\]\['b'\] is a traced "
                     r"value \(bool\[\]\), but a mask must be static"):
    inside(params)
  with pytest.raises(TypeError, match=r"mask\['body'\]\['b'\] is a traced"):
    jax.jit(adapt)(params, jax.tree.map(lambda _: True, params))
  per_element = jax.tree.map(lambda p: jnp.ones(p.shape, bool), params)
  with pytest.raises(ValueError, match=r"mask\['body'\]\['b'\] has shape "
                     r"\(6,\); a mask has one bool per parameter array"):
    adapt(params, per_element)
  # A weight is not a mask: 0.5 used to count as True.
  soft = jax.tree.map(lambda _: 0.5, params)
  with pytest.raises(TypeError, match=r"mask\['body'\]\['b'\] is 0.5 of type "
                     r"float; mask leaves must be bools"):
    adapt(params, soft)
  ints = jax.tree.map(lambda _: jnp.int32(1), params)
  with pytest.raises(TypeError, match=r"mask\['body'\]\['b'\] has dtype "
                     r"int32"):
    adapt(params, ints)


def test_mask_of_another_structure_names_the_paths_that_differ():
  params, task = _setup()
  with pytest.raises(ValueError, match=r"params\['body'\]\['b'\], "
                     r"params\['body'\]\['w'\], params\['head'\]\['b'\], "
                     r"params\['head'\]\['w'\] have no entry in mask; "
                     r"mask\['body'\], mask\['head'\] are not parameter "
                     r"arrays"):
    metajax.adapt(tiny_loss, params, task.support, steps=1, lr=0.1,
                  mask={"body": False, "head": True})


def test_non_finite_host_learning_rates_are_named():
  params, task = _setup()
  with pytest.raises(ValueError, match=r"lr must be finite, got nan"):
    metajax.adapt(tiny_loss, params, task.support, steps=1, lr=float("nan"))
  lrs = jax.tree.map(lambda p: np.full(p.shape, 0.1, np.float32), params)
  lrs["head"]["w"][2, 0] = np.inf
  with pytest.raises(ValueError, match=r"lr\['head'\]\['w'\] must be finite, "
                     r"but 1 of its 6 values are not"):
    metajax.maml_loss(tiny_loss, params, task, steps=1, lr=lrs)


# Optax optimisers in the inner loop.

def _momentum_by_hand(params, batch, steps, lr, decay):
  """Heavy-ball SGD as optax.sgd(lr, momentum=decay) defines it, unrolled."""
  trace = jax.tree.map(jnp.zeros_like, params)
  for _ in range(steps):
    g = jax.grad(tiny_loss)(params, batch)
    trace = jax.tree.map(lambda t, g: g + decay * t, trace, g)
    params = jax.tree.map(lambda p, t: p - lr * t, params, trace)
  return params


def _adam_by_hand(params, batch, steps, lr, b1=0.9, b2=0.999, eps=1e-8):
  """Adam (Kingma & Ba, 2015) with bias correction, unrolled."""
  m = jax.tree.map(jnp.zeros_like, params)
  v = jax.tree.map(jnp.zeros_like, params)
  for t in range(1, steps + 1):
    g = jax.grad(tiny_loss)(params, batch)
    m = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, m, g)
    v = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, v, g)
    params = jax.tree.map(
        lambda p, m, v: p - lr * (m / (1 - b1 ** t)) /
        (jnp.sqrt(v / (1 - b2 ** t)) + eps), params, m, v)
  return params


_BY_HAND = {
    "momentum": (lambda: optax.sgd(0.2, momentum=0.8),
                 functools.partial(_momentum_by_hand, lr=0.2, decay=0.8)),
    "adam": (lambda: optax.adam(0.05),
             functools.partial(_adam_by_hand, lr=0.05)),
}


@pytest.mark.parametrize("name", sorted(_BY_HAND))
@pytest.mark.parametrize("remat", [False, True])
def test_optax_inner_loop_is_the_hand_unrolled_one_and_exact(x64, name,
                                                               remat):
  """Momentum and Adam: the scanned loop equals the unrolled reference in
  adapted parameters and meta-gradient, and the meta-gradient matches
  finite differences, with remat or without."""
  make, by_hand = _BY_HAND[name]
  params = tiny_mlp_params(jax.random.PRNGKey(0), jnp.float64)
  task = tiny_task(jax.random.PRNGKey(1), jnp.float64)
  steps = 5  # remat: checkpointed one by one (prime)
  chex.assert_trees_all_close(
      metajax.adapt(tiny_loss, params, task.support, steps=steps,
                    optimizer=make(), remat=remat),
      by_hand(params, task.support, steps), rtol=1e-12)
  f = lambda p: metajax.maml_loss(tiny_loss, p, task, steps=steps,
                                  optimizer=make(), remat=remat)
  reference = lambda p: tiny_loss(by_hand(p, task.support, steps),
                                  task.query)
  chex.assert_trees_all_close(jax.grad(f)(params), jax.grad(reference)(params),
                              rtol=1e-10)
  assert _directional_check(f, params, jax.random.PRNGKey(2)) <= 1e-6


def test_optax_inner_loop_with_a_mask_adapts_only_the_head(x64):
  params = tiny_mlp_params(jax.random.PRNGKey(0), jnp.float64)
  task = tiny_task(jax.random.PRNGKey(1), jnp.float64)
  mask = metajax.mask_by_path(params, lambda path: path.startswith("head"))
  opt = optax.chain(optax.clip_by_global_norm(0.5), optax.adam(0.05))
  adapted = metajax.adapt(tiny_loss, params, task.support, steps=3,
                          optimizer=opt, mask=mask)
  chex.assert_trees_all_equal(adapted["body"], params["body"])

  def head_only(head):  # The same loop, written on the head alone.
    loss = lambda h, b: tiny_loss(dict(params, head=h), b)
    return metajax.adapt(loss, head, task.support, steps=3, optimizer=opt)
  chex.assert_trees_all_close(adapted["head"], head_only(params["head"]),
                              rtol=1e-12)
  f = lambda p: metajax.maml_loss(tiny_loss, p, task, steps=3, optimizer=opt,
                                  mask=mask)
  assert float(jnp.abs(jax.grad(f)(params)["body"]["w"]).max()) > 0
  assert _directional_check(f, params, jax.random.PRNGKey(2)) <= 1e-6


def test_optax_sgd_is_gradient_descent(x64):
  params = tiny_mlp_params(jax.random.PRNGKey(0), jnp.float64)
  task = tiny_task(jax.random.PRNGKey(1), jnp.float64)
  by_lr = lambda p: metajax.maml_loss(tiny_loss, p, task, steps=3, lr=0.3)
  by_optax = lambda p: metajax.maml_loss(tiny_loss, p, task, steps=3,
                                         optimizer=optax.sgd(0.3))
  np.testing.assert_allclose(by_optax(params), by_lr(params), rtol=1e-12)
  chex.assert_trees_all_close(jax.grad(by_optax)(params),
                              jax.grad(by_lr)(params), rtol=1e-12)


def test_injected_hyperparams_get_exact_meta_gradients(x64):
  """What `optax.inject_hyperparams` holds can be overridden and learned."""
  params = tiny_mlp_params(jax.random.PRNGKey(0), jnp.float64)
  task = tiny_task(jax.random.PRNGKey(1), jnp.float64)
  opt = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1, momentum=0.5)
  hyper = {"learning_rate": jnp.float64(0.2), "momentum": jnp.float64(0.8)}
  f = lambda h: metajax.maml_loss(tiny_loss, params, task, steps=4,
                                  optimizer=opt, hyperparams=h)
  # Overriding equals building the optimiser with those values.
  np.testing.assert_allclose(
      f(hyper), metajax.maml_loss(tiny_loss, params, task, steps=4,
                                  optimizer=optax.sgd(0.2, momentum=0.8)),
      rtol=1e-12)
  g = jax.grad(f)(hyper)
  assert all(float(jnp.abs(x)) > 0 for x in jax.tree.leaves(g))
  assert _directional_check(f, hyper, jax.random.PRNGKey(3)) <= 1e-6
  assert set(metajax.inner.inject_hyperparams_values(opt, params)) == {
      "learning_rate", "momentum"}


def test_vmapped_optax_loop_equals_a_python_loop():
  params = tiny_mlp_params(jax.random.PRNGKey(0))
  tasks = tiny_tasks(jax.random.PRNGKey(1), 4)
  f = functools.partial(metajax.maml_loss, tiny_loss, steps=3,
                        optimizer=optax.adam(0.05))
  batched = jax.jit(jax.vmap(f, in_axes=(None, 0)))(params, tasks)
  looped = [f(params, jax.tree.map(lambda x: x[i], tasks)) for i in range(4)]
  np.testing.assert_allclose(batched, jnp.stack(looped), rtol=1e-5)


def test_bad_optimizer_options_are_named():
  params, task = _setup()
  run = functools.partial(metajax.adapt, tiny_loss, params, task.support,
                          steps=1)
  with pytest.raises(ValueError, match="lr .* or an optax optimizer; got "
                     "neither"):
    run()
  with pytest.raises(ValueError, match="either lr .* not both"):
    run(lr=0.1, optimizer=optax.sgd(0.1))
  with pytest.raises(ValueError, match="per_step_lr .* give it a schedule"):
    run(optimizer=optax.sgd(0.1), per_step_lr=True)
  with pytest.raises(TypeError, match="optax GradientTransformation .* got "
                     "float"):
    run(optimizer=0.1)
  with pytest.raises(ValueError, match="need optimizer=..., not lr"):
    run(lr=0.1, hyperparams={"learning_rate": 0.1})
  with pytest.raises(ValueError, match="optax.inject_hyperparams .* state is "
                     "a tuple"):
    run(optimizer=optax.adam(0.1), hyperparams={"learning_rate": 0.1})
  with pytest.raises(ValueError, match=r"\['lr'\] are not hyper-parameters "
                     r"of the optimizer; it has \['learning_rate'\]"):
    run(optimizer=optax.inject_hyperparams(optax.sgd)(learning_rate=0.1),
        hyperparams={"lr": 0.1})


def test_a_given_optimizer_state_continues_where_it_left_off(x64):
  """Five Adam steps in one call equal two, then three more from the state
  the first two left: the state carries the moments and the step count."""
  params, task = _setup()
  params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
  adam = optax.adam(0.05, b1=0.0)
  run = functools.partial(metajax.adapt, tiny_loss, batch=task.support,
                          optimizer=adam)
  once = run(params, steps=5)
  first, state = run(params, steps=2, optimizer_state=adam.init(params))
  assert int(state[0].count) == 2
  second, state = run(first, steps=3, optimizer_state=state)
  chex.assert_trees_all_close(second, once, rtol=1e-12)
  assert int(state[0].count) == 5
  # A carried state is not a fresh one: the same three steps from the
  # start differ.
  fresh = run(first, steps=3)
  assert not np.allclose(fresh["head"]["w"], second["head"]["w"])


def test_a_bad_optimizer_state_is_named():
  params, task = _setup()
  run = functools.partial(metajax.adapt, tiny_loss, params, task.support,
                          steps=1)
  adam = optax.adam(0.1)
  with pytest.raises(ValueError, match="optimizer_state is an optax "
                     "optimizer's state, but the inner loop takes gradient "
                     "descent steps"):
    run(lr=0.1, optimizer_state=adam.init(params))
  with pytest.raises(ValueError, match="optimizer_state has structure"):
    run(optimizer=adam, optimizer_state=optax.sgd(0.1, momentum=0.9).init(
        params))
  wide = jax.tree.map(lambda p: jnp.zeros((2,) + p.shape, p.dtype), params)
  with pytest.raises(ValueError, match=r"optimizer_state\[0\]\.mu\['body'\]"
                     r"\['b'\] has shape \(2, "):
    run(optimizer=adam, optimizer_state=adam.init(wide))


# Auxiliary outputs of the loss.

def _loss_with_aux(params, batch):
  loss = tiny_loss(params, batch)
  return loss, {"loss": loss, "head_norm": jnp.sum(params["head"]["w"] ** 2)}


@pytest.mark.parametrize("optimizer", [None, "adam"])
def test_aux_comes_back_for_every_step(x64, optimizer):
  params = tiny_mlp_params(jax.random.PRNGKey(0), jnp.float64)
  task = tiny_task(jax.random.PRNGKey(1), jnp.float64)
  how = (dict(lr=0.3) if optimizer is None else
         dict(optimizer=optax.adam(0.05)))
  adapted, aux = metajax.adapt(_loss_with_aux, params, task.support, steps=3,
                               has_aux=True, **how)
  chex.assert_trees_all_close(
      adapted, metajax.adapt(tiny_loss, params, task.support, steps=3, **how),
      rtol=1e-12)
  # Step t's aux is at the parameters before step t's update.
  before = [metajax.adapt(tiny_loss, params, task.support, steps=t, **how)
            for t in range(3)]
  np.testing.assert_allclose(
      aux["loss"], [tiny_loss(p, task.support) for p in before], rtol=1e-12)
  assert aux["head_norm"].shape == (3,)

  loss, inner_aux = metajax.maml_loss(_loss_with_aux, params, task, steps=3,
                                      has_aux=True, **how)
  np.testing.assert_allclose(loss, tiny_loss(adapted, task.query), rtol=1e-12)
  np.testing.assert_allclose(inner_aux.query["loss"], loss, rtol=1e-12)
  chex.assert_trees_all_close(inner_aux.support, aux, rtol=1e-12)
  # With the multi-step loss, the query aux is after every step.
  _, weighted = metajax.maml_loss(_loss_with_aux, params, task, steps=3,
                                  has_aux=True, step_weights=[.2, .3, .5],
                                  **how)
  np.testing.assert_allclose(
      weighted.query["loss"],
      [tiny_loss(p, task.query) for p in before[1:] + [adapted]], rtol=1e-12)
  # The aux does not change the meta-gradient.
  g_aux = jax.grad(lambda p: metajax.maml_loss(
      _loss_with_aux, p, task, steps=3, has_aux=True, **how)[0])(params)
  g = jax.grad(lambda p: metajax.maml_loss(tiny_loss, p, task, steps=3,
                                           **how))(params)
  chex.assert_trees_all_close(g_aux, g, rtol=1e-12)


def test_a_loss_without_its_aux_is_named():
  params, task = _setup()
  with pytest.raises(ValueError, match="has_aux=True, loss_fn must return a "
                     "pair"):
    metajax.adapt(tiny_loss, params, task.support, steps=1, lr=0.1,
                  has_aux=True)
  with pytest.raises(ValueError, match=r"as \(loss, aux\) with has_aux=True"):
    metajax.adapt(_loss_with_aux, params, task.support, steps=1, lr=0.1)


# Model state carried from step to step.

def _stateful_loss(params, batch, state):
  """A running mean of the hidden activations that the loss subtracts: the
  state is read, updated and returned, as batch norm's running averages."""
  x, y = batch
  h = jnp.tanh(x @ params["w"])
  mean = 0.5 * state["mean"] + 0.5 * jnp.mean(h, axis=0)
  loss = jnp.mean((jnp.sum(h - mean, axis=1, keepdims=True) - y) ** 2)
  return loss, {"mean": mean}


def _stateful_problem():
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
  params = {"w": jax.random.normal(k1, (2, 3), jnp.float64)}
  x = jax.random.normal(k2, (2, 6, 2), jnp.float64)
  y = jax.random.normal(k3, (2, 6, 1), jnp.float64)
  task = metajax.Task((x[0], y[0]), (x[1], y[1]))
  return params, task, {"mean": jnp.full(3, 0.1, jnp.float64)}


@pytest.mark.parametrize("optimizer", [None, "momentum"])
def test_model_state_is_carried_from_step_to_step(x64, optimizer):
  params, task, state = _stateful_problem()
  how = (dict(lr=0.2) if optimizer is None else
         dict(optimizer=optax.sgd(0.2, momentum=0.9)))

  def by_hand(p, s):
    velocity = jax.tree.map(jnp.zeros_like, p)
    for _ in range(3):
      g, s = jax.grad(_stateful_loss, has_aux=True)(p, task.support, s)
      if optimizer is None:
        p = jax.tree.map(lambda a, b: a - 0.2 * b, p, g)
      else:
        velocity = jax.tree.map(lambda v, b: 0.9 * v + b, velocity, g)
        p = jax.tree.map(lambda a, v: a - 0.2 * v, p, velocity)
    return p, s

  adapted, final = metajax.adapt(_stateful_loss, params, task.support,
                                 steps=3, model_state=state, **how)
  want_params, want_state = by_hand(params, state)
  chex.assert_trees_all_close((adapted, final), (want_params, want_state),
                              rtol=1e-12)
  # The meta-gradient goes through the carried state, exactly.
  meta_loss = lambda p: metajax.maml_loss(_stateful_loss, p, task, steps=3,
                                          model_state=state, **how)
  def by_hand_loss(p):
    p, s = by_hand(p, state)
    return _stateful_loss(p, task.query, s)[0]
  np.testing.assert_allclose(meta_loss(params), by_hand_loss(params),
                             rtol=1e-12)
  chex.assert_trees_all_close(jax.grad(meta_loss)(params),
                              jax.grad(by_hand_loss)(params), rtol=1e-10)
  assert _directional_check(meta_loss, params, jax.random.PRNGKey(4)) < 1e-6
  # return_adapted gives the state with the parameters.
  _, (p, s) = metajax.maml_loss(_stateful_loss, params, task, steps=3,
                                model_state=state, return_adapted=True, **how)
  chex.assert_trees_all_close((p, s), (adapted, final), rtol=1e-12)


def test_model_state_with_aux_and_remat(x64):
  params, task, state = _stateful_problem()

  def with_aux(p, batch, s):
    loss, s = _stateful_loss(p, batch, s)
    return loss, (s, {"loss": loss})

  adapted, final, aux = metajax.adapt(with_aux, params, task.support,
                                      steps=4, lr=0.1, model_state=state,
                                      has_aux=True, remat=True)
  chex.assert_trees_all_close(
      (adapted, final), metajax.adapt(_stateful_loss, params, task.support,
                                      steps=4, lr=0.1, model_state=state),
      rtol=1e-12)
  assert aux["loss"].shape == (4,)
  g = jax.grad(lambda p: metajax.maml_loss(
      with_aux, p, task, steps=4, lr=0.1, model_state=state, has_aux=True,
      remat=True)[0])(params)
  g_plain = jax.grad(lambda p: metajax.maml_loss(
      _stateful_loss, p, task, steps=4, lr=0.1, model_state=state))(params)
  chex.assert_trees_all_close(g, g_plain, rtol=1e-10)


def test_a_model_state_of_another_shape_or_form_is_named(x64):
  params, task, state = _stateful_problem()
  grow = lambda p, b, s: (_stateful_loss(p, b, s)[0],
                          {"mean": jnp.zeros(4, jnp.float64)})
  with pytest.raises(ValueError, match="new model state must have the "
                     "structure, shapes and dtypes of model_state"):
    metajax.adapt(grow, params, task.support, steps=1, lr=0.1,
                  model_state=state)
  with pytest.raises(ValueError, match=r"must return \(loss, new_state\)"):
    metajax.adapt(lambda p, b, s: _stateful_loss(p, b, s)[0], params,
                  task.support, steps=1, lr=0.1, model_state=state)
