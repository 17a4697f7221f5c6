"""Few-shot sinusoid regression (Finn et al., 2017, section 5.1).

A task is y = A sin(x - phi) with amplitude A ~ U[0.1, 5], phase
phi ~ U[0, pi] and inputs x ~ U[-5, 5]. Tasks are drawn with `jax.random`, so
sampling runs on the device inside the compiled training step.
"""

import math
from typing import NamedTuple, Tuple

import jax
import jax.numpy as jnp

from metajax.tasks import Task


class SinusoidFamily(NamedTuple):
  """Ranges of the task distribution (uniform on each closed interval)."""
  amplitude: Tuple[float, float] = (0.1, 5.0)
  phase: Tuple[float, float] = (0.0, math.pi)
  x: Tuple[float, float] = (-5.0, 5.0)


def sinusoid(x: jax.Array, amplitude: jax.Array, phase: jax.Array):
  """A sin(x - phi), broadcasting."""
  return amplitude * jnp.sin(x - phase)


def sample_tasks(key: jax.Array, num_tasks: int, num_support: int,
                 num_query: int, family: SinusoidFamily = SinusoidFamily()
                 ) -> Task:
  """Samples a batch of sinusoid tasks.

  Returns:
    `Task(support=(x, y), query=(x, y))` with float32 leaves of shape
    `[num_tasks, num_support, 1]` and `[num_tasks, num_query, 1]`.
  """
  k_amp, k_phase, k_x = jax.random.split(key, 3)
  amp = jax.random.uniform(k_amp, (num_tasks, 1, 1), minval=family.amplitude[0],
                           maxval=family.amplitude[1])
  phase = jax.random.uniform(k_phase, (num_tasks, 1, 1),
                             minval=family.phase[0], maxval=family.phase[1])
  x = jax.random.uniform(k_x, (num_tasks, num_support + num_query, 1),
                         minval=family.x[0], maxval=family.x[1])
  y = sinusoid(x, amp, phase)
  split = lambda a: (a[:, :num_support], a[:, num_support:])
  (xs, xq), (ys, yq) = split(x), split(y)
  return Task((xs, ys), (xq, yq))


def sampler(num_tasks: int, num_support: int, num_query: int,
            family: SinusoidFamily = SinusoidFamily()):
  """`key -> Task` batch: `sample_tasks` with its sizes fixed."""
  return lambda key: sample_tasks(key, num_tasks, num_support, num_query,
                                  family)
