"""Sinusoid task sampling."""

import jax
import jax.numpy as jnp
import numpy as np

import metajax
from metajax.data import sinusoid


def test_shapes_ranges_and_consistency():
  task = sinusoid.sample_tasks(jax.random.PRNGKey(0), 64, 5, 7)
  metajax.validate_task(task, batched=True)
  (xs, ys), (xq, yq) = task
  assert xs.shape == ys.shape == (64, 5, 1) and xq.shape == (64, 7, 1)
  x = np.concatenate([xs, xq], 1)
  y = np.concatenate([ys, yq], 1)
  assert x.min() >= -5.0 and x.max() <= 5.0
  # Each task is one sinusoid: recover (A cos phi, -A sin phi) by least
  # squares on [sin x, cos x] and check amplitude and phase ranges.
  for i in range(64):
    basis = np.concatenate([np.sin(x[i]), np.cos(x[i])], 1)
    coef, residual, *_ = np.linalg.lstsq(basis, y[i, :, 0], rcond=None)
    np.testing.assert_allclose(basis @ coef, y[i, :, 0], atol=1e-4)
    amp, phase = np.hypot(*coef), np.arctan2(-coef[1], coef[0])
    assert 0.1 - 1e-4 <= amp <= 5.0 + 1e-4
    assert -1e-3 <= phase <= np.pi + 1e-3


def test_same_key_same_tasks_other_key_other_tasks():
  a = sinusoid.sampler(4, 3, 3)(jax.random.PRNGKey(1))
  b = sinusoid.sampler(4, 3, 3)(jax.random.PRNGKey(1))
  c = sinusoid.sampler(4, 3, 3)(jax.random.PRNGKey(2))
  np.testing.assert_array_equal(a.support[0], b.support[0])
  assert not np.allclose(a.support[0], c.support[0])
  assert jnp.asarray(a.support[0]).dtype == jnp.float32
