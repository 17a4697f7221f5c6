"""The two networks of Relation Networks (Sung et al., 2018).

`RelationEmbedding` is Conv4 without its final pooling: it returns feature
maps, which `RelationModule` compares in pairs with convolutions. Both use
`Conv` and `TaskBatchNorm`, so they run inside vmapped meta-steps like Conv4.

The paper leaves the first convolutions of both networks unpadded; here they
are "SAME" padded as in Conv4, which changes only the size of the maps (7x7
instead of 5x5 for a 28x28 input). Pooling is Conv4's `max_pool2x2`.
"""

import flax.linen as nn

from metajax.models.conv import Conv
from metajax.models.conv import ConvImpl
from metajax.models.conv import max_pool2x2
from metajax.models.norm import TaskBatchNorm


def _block(x, width: int, pool: bool, impl: ConvImpl):
  """3x3 conv, batch norm, ReLU and optionally 2x2 max-pooling."""
  x = nn.relu(TaskBatchNorm()(Conv(width, 3, 1, "SAME", impl)(x)))
  return max_pool2x2(x) if pool else x


class RelationEmbedding(nn.Module):
  """Four conv blocks; the first `pooled_blocks` end in 2x2 max-pooling.

  Input `[N, H, W, C]` float; output `[N, H', W', width]` feature maps, each
  pooling halving the size, rounding down (7x7 for 28x28 Omniglot, 21x21 for
  84x84 mini-ImageNet with the paper's `pooled_blocks=2`).
  """
  width: int = 64
  pooled_blocks: int = 2
  impl: ConvImpl = "auto"

  @nn.compact
  def __call__(self, x):
    if not 0 <= self.pooled_blocks <= 4:
      raise ValueError(
          f"pooled_blocks must be in [0, 4], got {self.pooled_blocks}.")
    for i in range(4):
      x = _block(x, self.width, i < self.pooled_blocks, self.impl)
    return x


class RelationModule(nn.Module):
  """Relation score of a pair of feature maps concatenated along channels.

  Two conv blocks with 2x2 max-pooling, then a hidden layer of `hidden` ReLU
  units and one sigmoid unit. Input `[N, H, W, 2C]` float with H, W >= 4 (a
  class's feature map and a query's, `jnp.concatenate`d on the last axis);
  output `[N]` scores in [0, 1], the dtype of the input.
  """
  width: int = 64
  hidden: int = 8
  impl: ConvImpl = "auto"

  @nn.compact
  def __call__(self, pairs):
    x = _block(pairs, self.width, True, self.impl)
    x = _block(x, self.width, True, self.impl)
    x = nn.relu(nn.Dense(self.hidden)(x.reshape(x.shape[0], -1)))
    return nn.sigmoid(nn.Dense(1)(x))[:, 0]
