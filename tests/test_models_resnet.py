"""ResNet-12: shapes, parameters, and the two convolution implementations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metajax import algorithms
from metajax.models.resnet import ResNet12
from fewshot import key, tiny_episodes

TINY = (4, 8, 8, 16)


def test_mini_imagenet_shapes_of_the_full_size_network():
  # Shapes only (nothing is compiled): 84 -> 42 -> 21 -> 11 -> 6 -> pooled.
  x = jax.ShapeDtypeStruct((3, 84, 84, 3), jnp.float32)
  model = ResNet12(num_outputs=None)
  variables = jax.eval_shape(model.init, key(), x)
  assert set(variables) == {"params"}  # no running batch statistics
  assert jax.eval_shape(model.apply, variables, x).shape == (3, 640)
  widths = [variables["params"][f"block{i}"]["conv1"]["kernel"].shape
            for i in range(4)]
  assert widths == [(3, 3, 64, 64), (3, 3, 160, 160), (3, 3, 320, 320),
                    (3, 3, 640, 640)]
  # Per block (c channels in, w out): three 3x3 convolutions, a 1x1 shortcut,
  # a bias for each of the four and a scale and bias for each of four norms.
  expected = sum(9 * c * w + 2 * 9 * w * w + c * w + 4 * w + 8 * w
                 for c, w in zip((3, 64, 160, 320), (64, 160, 320, 640)))
  assert sum(np.prod(p.shape) for p in jax.tree.leaves(variables)) == expected
  assert expected == 12_429_056  # MetaOptNet's 12.4M, plus the conv biases


def test_head_and_feature_outputs():
  x = jnp.zeros((5, 28, 28, 1))
  model = ResNet12(num_outputs=7, widths=TINY)
  variables = jax.eval_shape(model.init, key(), x)
  assert "head" in variables["params"]
  assert jax.eval_shape(model.apply, variables, x).shape == (5, 7)
  features = ResNet12(num_outputs=None, widths=TINY)
  assert "head" not in jax.eval_shape(features.init, key(), x)["params"]
  with pytest.raises(ValueError, match="4 entries"):
    ResNet12(num_outputs=None, widths=(4, 8, 16)).init(key(), x)


def test_patches_and_native_convolutions_agree():
  x = jax.random.normal(jax.random.PRNGKey(0), (6, 28, 28, 3))
  fast = ResNet12(num_outputs=5, widths=TINY, impl="patches")
  ref = ResNet12(num_outputs=5, widths=TINY, impl="native")
  # Random parameters drawn with NumPy at the shapes of `init`: any values
  # test the agreement, and none of init's program has to be compiled.
  rng = np.random.default_rng(1)
  variables = jax.tree.map(
      lambda p: jnp.asarray(0.5 * rng.normal(size=p.shape), p.dtype),
      jax.eval_shape(fast.init, key(), x))
  out = jax.jit(fast.apply)(variables, x)
  assert out.shape == (6, 5) and out.dtype == jnp.float32
  np.testing.assert_allclose(out, jax.jit(ref.apply)(variables, x), rtol=1e-4,
                             atol=1e-4)


def test_traces_through_a_second_order_maml_meta_step():
  # Tracing only (jax.eval_shape): the vmapped inner loop, batch norm per
  # task and the gradient of a gradient all go through; nothing is compiled.
  model = ResNet12(num_outputs=3, widths=TINY)
  learner = algorithms.maml(lambda k: model.init(k, jnp.zeros((2, 28, 28, 1))),
                            model.apply, algorithms.cross_entropy, steps=1,
                            lr=0.1)
  meta_params = jax.eval_shape(learner.init, key())
  grads, metrics = jax.eval_shape(learner.meta_grad, meta_params,
                                  tiny_episodes(), None)
  assert jax.tree.map(lambda g: g.shape, grads) == jax.tree.map(
      lambda p: p.shape, meta_params)
  assert metrics["loss"].shape == ()
