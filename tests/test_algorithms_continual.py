"""OML and ANML: which parameters learn online, the output reset, and the
exact meta-gradient through one online pass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import metajax
from metajax import algorithms
from metajax import inner
from metajax.algorithms import continual
from metajax.models.continual import ANMLNet
from metajax.models.continual import OMLNet

OUTPUTS, SIDE, LENGTH = 6, 8, 4


def _net(kind, dtype=jnp.float32):
  net = (OMLNet(OUTPUTS, width=4, strides=(2, 2), hidden=8) if kind == "oml"
         else ANMLNet(OUTPUTS, width=4, nm_width=3, strides=(2, 2)))
  example = jnp.zeros((1, SIDE, SIDE, 1), dtype)
  return lambda key: net.init(key, example), net.apply


def _task(seed=0, dtype=jnp.float32):
  """A trajectory of class 2, then a query of it and three other images."""
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(LENGTH + 3, SIDE, SIDE, 1)), dtype)
  y = jnp.asarray([2] * LENGTH + [0, 4, 5], jnp.int32)
  return metajax.Task((x[:LENGTH], y[:LENGTH]), (x, y))


def _learner(kind, **kw):
  init_fn, apply_fn = _net(kind, kw.pop("dtype", jnp.float32))
  build = continual.oml if kind == "oml" else continual.anml
  return build(init_fn, apply_fn, algorithms.cross_entropy, steps=LENGTH,
               lr=0.1, **kw)


def _changed(before, after):
  paths = jax.tree_util.tree_map_with_path(
      lambda k, _: "/" + "/".join(str(getattr(e, "key", e)) for e in k) + "/",
      before)
  return {path: not np.allclose(b, a) for path, b, a in zip(
      jax.tree.leaves(paths), jax.tree.leaves(before),
      jax.tree.leaves(after))}


@pytest.mark.parametrize("kind, learns", [
    ("oml", lambda p: "/pln/" in p),
    ("anml", lambda p: "/nm/" not in p)])
def test_the_online_pass_updates_only_its_part(kind, learns):
  learner = _learner(kind)
  meta = learner.init(jax.random.PRNGKey(0))
  task = _task()
  adapted = learner.adapt(meta, task.support)
  changed = _changed(meta["params"], adapted)
  for path, moved in changed.items():
    if "head" in path and kind == "oml":
      continue  # the reset moves the head's class-2 column either way
    assert moved == learns(path), path
  assert any(changed.values())


def test_one_online_pass_is_steps_on_one_image_at_a_time_after_the_reset():
  learner = _learner("oml")
  init_fn, apply_fn = _net("oml")
  meta = learner.init(jax.random.PRNGKey(0))
  task = _task()
  params = continual.reset_outputs(meta["params"], task.support[1])
  loss = algorithms.supervised_loss(apply_fn, algorithms.cross_entropy)
  for t in range(LENGTH):
    image = jax.tree.map(lambda a: a[t:t + 1], task.support)
    grads = jax.grad(loss)(params, image)
    params = jax.tree.map(lambda p, g, m: p - 0.1 * g if m else p, params,
                          grads, inner.mask_by_path(
                              params, lambda p: "pln" in p.split("/")))
  got = learner.adapt(meta, task.support)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_reset_outputs_zeroes_only_the_named_classes():
  init_fn, _ = _net("oml")
  params = init_fn(jax.random.PRNGKey(0))
  reset = continual.reset_outputs(params, jnp.asarray([1, 4, 4]))
  head, old = reset["params"]["pln"]["head"], params["params"]["pln"]["head"]
  for c in range(OUTPUTS):
    zeroed = c in (1, 4)
    assert np.all(head["kernel"][:, c] == 0) == zeroed
    if zeroed:
      assert head["bias"][c] == 0
    else:
      assert head["bias"][c] == old["bias"][c]
      np.testing.assert_array_equal(head["kernel"][:, c], old["kernel"][:, c])
  np.testing.assert_array_equal(reset["params"]["rln"]["Conv_0"]["kernel"],
                                params["params"]["rln"]["Conv_0"]["kernel"])
  with pytest.raises(ValueError, match="head='out'"):
    continual.reset_outputs(params, jnp.asarray([0]), head="out")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["oml", "anml"])
def test_the_meta_gradient_through_the_online_pass_is_exact(x64, kind):
  learner = _learner(kind, dtype=jnp.float64)
  meta = jax.tree.map(lambda p: p.astype(jnp.float64),
                      learner.init(jax.random.PRNGKey(0)))
  tasks = jax.tree.map(lambda a: a[None], _task(dtype=jnp.float64))
  meta_grad = jax.jit(learner.meta_grad)
  f = lambda m: meta_grad(m, tasks, None)[1]["loss"]
  grads, _ = meta_grad(meta, tasks, None)
  leaves, treedef = jax.tree.flatten(meta)
  rng = np.random.default_rng(1)
  d = jax.tree.unflatten(treedef, [rng.normal(size=l.shape) for l in leaves])
  h = 1e-5
  shift = lambda s: jax.tree.map(lambda p, v: p + s * h * v, meta, d)
  fd = (f(shift(1.0)) - f(shift(-1.0))) / (2 * h)
  ad = sum(jnp.vdot(g, v) for g, v in zip(jax.tree.leaves(grads),
                                          jax.tree.leaves(d)))
  assert abs(fd - ad) <= 1e-6 * abs(ad)
  # Second order: the first-order meta-gradient differs.
  fo = _learner(kind, dtype=jnp.float64, first_order=True)
  fo_grads, _ = jax.jit(fo.meta_grad)(meta, tasks, None)
  diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(
      jax.tree.leaves(grads), jax.tree.leaves(fo_grads)))
  assert diff > 1e-6
