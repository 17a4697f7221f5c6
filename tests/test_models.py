"""Models: the two convolution implementations agree; batch norm is per task."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metajax import models


@pytest.mark.parametrize("size,stride,padding", [
    (28, 2, "SAME"), (7, 2, "SAME"), (9, 1, "SAME"), (10, 3, "VALID"),
    (8, 1, "VALID")])
def test_patches_convolution_equals_native(x64, size, stride, padding):
  kx, kw = jax.random.split(jax.random.PRNGKey(0))
  x = jax.random.normal(kx, (2, size, size + 1, 3), jnp.float64)
  w = jax.random.normal(kw, (3, 3, 3, 5), jnp.float64)
  native = models.conv2d(x, w, stride, padding, impl="native")
  patches = models.conv2d(x, w, stride, padding, impl="patches")
  assert patches.shape == native.shape
  np.testing.assert_allclose(patches, native, rtol=1e-12, atol=1e-12)


def test_per_task_kernel_gradients_agree_under_vmap(x64):
  """The MAML case: a batch of tasks, each with its own adapted kernel."""
  kx, kw = jax.random.split(jax.random.PRNGKey(1))
  x = jax.random.normal(kx, (4, 5, 14, 14, 2), jnp.float64)
  w = jax.random.normal(kw, (4, 3, 3, 2, 8), jnp.float64)
  def loss(impl):
    def f(x, w):
      out = jax.vmap(lambda xi, wi: models.conv2d(xi, wi, 2, impl=impl))(x, w)
      return jnp.sum(jnp.sin(out))
    return jax.grad(f, argnums=(0, 1))(x, w)
  chex.assert_trees_all_close(loss("patches"), loss("native"), rtol=1e-10,
                              atol=1e-10)


def test_auto_picks_patches_on_cpu_and_rejects_unknown_impls():
  expected = "patches" if jax.default_backend() == "cpu" else "native"
  assert models.resolve_conv_impl("auto") == expected
  with pytest.raises(ValueError, match="conv impl"):
    models.resolve_conv_impl("winograd")
  with pytest.raises(ValueError, match=r"x \(2, 5, 5\) and kernel"):
    models.conv2d(jnp.zeros((2, 5, 5)), jnp.zeros((3, 3, 1, 4)))


def test_task_batch_norm_uses_only_the_batch_it_is_given():
  bn = models.TaskBatchNorm()
  x = 3.0 + 2.0 * jax.random.normal(jax.random.PRNGKey(0), (3, 16, 4, 4, 5))
  variables = bn.init(jax.random.PRNGKey(1), x[0])
  assert set(variables) == {"params"}  # no running statistics to leak
  out = jax.vmap(lambda xi: bn.apply(variables, xi))(x)
  np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), 0.0, atol=1e-5)
  np.testing.assert_allclose(out.var(axis=(1, 2, 3)), 1.0, atol=1e-3)
  # Replacing task 2's data leaves tasks 0 and 1 untouched.
  other = x.at[2].set(100.0 * x[2] - 50.0)
  out2 = jax.vmap(lambda xi: bn.apply(variables, xi))(other)
  np.testing.assert_array_equal(out[:2], out2[:2])


@pytest.mark.parametrize("downsample,width", [("stride", 8), ("max", 4)])
def test_conv4_shapes_and_head(downsample, width):
  model = models.Conv4(num_outputs=5, width=width, downsample=downsample)
  x = jnp.zeros((10, 28, 28, 1))
  variables = model.init(jax.random.PRNGKey(0), x)
  assert "head" in variables["params"]
  assert model.apply(variables, x).shape == (10, 5)
  embed = models.Conv4(num_outputs=None, width=width, downsample=downsample)
  assert embed.apply(embed.init(jax.random.PRNGKey(0), x), x).shape == (
      10, width)


def test_conv4_without_norm_is_conv_relu_blocks():
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 28, 28, 1))
  model = models.Conv4(num_outputs=5, width=4, norm="none")
  variables = model.init(jax.random.PRNGKey(1), x)
  assert not any("TaskBatchNorm" in k for k in variables["params"])
  # Rebuilt by hand from the same kernels: 4 x [conv stride 2, ReLU], mean, head.
  h, p = x, variables["params"]
  for i in range(4):
    h = jax.nn.relu(models.conv2d(h, p[f"Conv_{i}"]["kernel"], 2, impl="native")
                    + p[f"Conv_{i}"]["bias"])
  want = h.mean(axis=(1, 2)) @ p["head"]["kernel"] + p["head"]["bias"]
  np.testing.assert_allclose(model.apply(variables, x), want, rtol=1e-4,
                             atol=1e-5)
  with pytest.raises(ValueError, match="norm"):
    models.Conv4(num_outputs=5, norm="layer").init(jax.random.PRNGKey(1), x)


@pytest.mark.slow
def test_max_pool_conv4_is_conv_norm_relu_pool_in_value_and_gradient(x64):
  # Conv4 pools before its ReLU; the values and gradients must be those of
  # the textbook order, conv -> norm -> ReLU -> pool, even where the norm's
  # scale is negative.
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 16, 16, 1))
  model = models.Conv4(num_outputs=5, width=4, downsample="max")
  variables = model.init(jax.random.PRNGKey(1), x)
  variables = jax.tree.map(
      lambda v: v * jnp.where(jnp.arange(v.shape[-1]) % 2, -1.5, 1.0),
      variables)

  def textbook(variables, x):
    h, p = x, variables["params"]
    for i in range(4):
      h = models.conv2d(h, p[f"Conv_{i}"]["kernel"], 1, impl="native")
      h = models.TaskBatchNorm().apply(
          {"params": p[f"TaskBatchNorm_{i}"]}, h + p[f"Conv_{i}"]["bias"])
      h = jax.lax.reduce_window(jax.nn.relu(h), -jnp.inf, jax.lax.max,
                                (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    return h.mean(axis=(1, 2)) @ p["head"]["kernel"] + p["head"]["bias"]

  value_and_grad = lambda f: jax.jit(jax.value_and_grad(
      lambda v: jnp.sum(jnp.sin(f(v, x)))))
  chex.assert_trees_all_close(value_and_grad(model.apply)(variables),
                              value_and_grad(textbook)(variables),
                              rtol=1e-9, atol=1e-10)


def test_conv4_impls_agree_end_to_end():
  x = jax.random.normal(jax.random.PRNGKey(0), (6, 28, 28, 1))
  fast = models.Conv4(num_outputs=5, width=8, impl="patches")
  ref = models.Conv4(num_outputs=5, width=8, impl="native")
  variables = fast.init(jax.random.PRNGKey(1), x)
  np.testing.assert_allclose(fast.apply(variables, x), ref.apply(variables, x),
                             rtol=1e-4, atol=1e-4)


def test_mlp_shapes():
  model = models.MLP((40, 40), 1)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((3, 1)))
  assert model.apply(variables, jnp.zeros((7, 1))).shape == (7, 1)
  assert variables["params"]["Dense_0"]["kernel"].shape == (1, 40)
  assert variables["params"]["head"]["kernel"].shape == (40, 1)
