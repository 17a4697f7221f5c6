"""Batch normalisation without running statistics, for use inside inner loops.

In meta-learning every forward pass sees one task's batch. `TaskBatchNorm`
normalises with the mean and variance of the batch it is given and keeps no
running averages, so nothing computed on one task can reach another: under
`jax.vmap` over tasks, each task is normalised by its own statistics. This is
the "per-task batch statistics" of the MAML paper's reference implementation:
the support set is normalised by support statistics during adaptation and the
query set by query statistics during evaluation (transductive batch norm).
See docs/batchnorm.md for the consequences at test time.
"""

import flax.linen as nn
import jax.numpy as jnp


class TaskBatchNorm(nn.Module):
  """Normalises over every axis but the last, with the batch's own statistics.

  Input `[..., C]`; output the same shape and dtype. Parameters: `scale` and
  `bias`, each `[C]`; there is no `batch_stats` collection.
  """
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), x.dtype)
    bias = self.param("bias", nn.initializers.zeros, (c,), x.dtype)
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axis=axes)
    var = jnp.mean(jnp.square(x - mean), axis=axes)
    return (x - mean) * (scale / jnp.sqrt(var + self.epsilon)) + bias
