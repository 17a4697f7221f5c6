"""Tiny synthetic few-shot classification episodes and a small embedding.

The data are built with NumPy and each helper compiles at most one program:
on a small shared CPU, XLA's compile time, not the arithmetic, dominates.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import metajax
from metajax import models


def tiny_episodes(seed=0, n_tasks=2, ways=3, shots=2, size=28):
  """A batch of episodes whose support sets are also their query sets.

  Each class is a random `size`x`size` template; its examples are the template
  plus noise, so the classes are learnable. Returns `Task((x, y), (x, y))`
  with x float32 `[n_tasks, ways * shots, size, size, 1]` and y int32
  `[n_tasks, ways * shots]`, ordered class by class.
  """
  rng = np.random.default_rng(seed)
  templates = rng.normal(size=(n_tasks, ways, 1, size, size, 1))
  noise = 0.5 * rng.normal(size=(n_tasks, ways, shots, size, size, 1))
  x = (templates + noise).reshape(n_tasks, ways * shots, size, size, 1)
  y = np.broadcast_to(np.repeat(np.arange(ways, dtype=np.int32), shots),
                      (n_tasks, ways * shots))
  x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y)
  return metajax.Task((x, y), (x, y))


def key(seed=0):
  """A PRNG key of the "rbg" implementation.

  XLA:CPU compiles the unrolled rounds of the default threefry generator
  slowly: a small Conv4's initialisation would cost more than its training.
  """
  return jax.random.key(seed, impl="rbg")


def one(tasks, i=0):
  """Task `i` of a batch."""
  return jax.tree.map(lambda a: a[i], tasks)


def conv4(num_outputs=None, width=8):
  """`(init_fn, apply_fn)` of a small max-pooling Conv4 on 28x28x1 inputs."""
  model = models.Conv4(num_outputs=num_outputs, width=width, downsample="max")
  return (lambda k: model.init(k, jnp.zeros((2, 28, 28, 1))), model.apply)


def meta_train(learner, tasks, optimizer, num_steps):
  """Runs `num_steps` optax steps on the fixed `tasks`.

  Initialisation (from `key()`) and every step run in one compiled program.

  Returns:
    `(metrics, initial, final)`: `meta_grad`'s metrics, each a NumPy array
    `[num_steps]` (entry t measured before the t-th update), and the
    meta-parameters before and after training.
  """
  @jax.jit
  def run(init_key, tasks):
    meta_params = learner.init(init_key)

    def step(carry, _):
      meta_params, opt_state = carry
      grads, metrics = learner.meta_grad(meta_params, tasks, None)
      updates, opt_state = optimizer.update(grads, opt_state, meta_params)
      return (optax.apply_updates(meta_params, updates), opt_state), metrics

    carry = (meta_params, optimizer.init(meta_params))
    (final, _), metrics = jax.lax.scan(step, carry, None, length=num_steps)
    return metrics, meta_params, final

  metrics, initial, final = run(key(), tasks)
  return jax.tree.map(np.asarray, metrics), initial, final
