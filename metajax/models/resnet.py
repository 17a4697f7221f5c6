"""ResNet-12, the mini-ImageNet backbone of TADAM and MetaOptNet.

Four residual blocks (Oreshkin et al., 2018; Lee et al., 2019), each of three
3x3 convolutions with batch norm and leaky ReLU, a 1x1 convolution with batch
norm on the shortcut, and 2x2 max-pooling (`max_pool2x2`); then global average
pooling. The default widths are MetaOptNet's (TADAM's are (64, 128, 256,
512)). The convolutions are `Conv` (patches on the CPU, native elsewhere) and
the normalisation is `TaskBatchNorm`, so the network can be adapted in a
vmapped MAML inner loop with per-task batch statistics.

Unlike the reference implementations, each convolution has a bias (that of
`Conv`); the batch norm right after it cancels the bias, so the function is the
same. DropBlock and the other regularisers of those papers are not included.
"""

from typing import Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from metajax.models.conv import Conv
from metajax.models.conv import ConvImpl
from metajax.models.conv import max_pool2x2
from metajax.models.norm import TaskBatchNorm


class ResidualBlock(nn.Module):
  """conv-BN-act, conv-BN-act, conv-BN, plus a 1x1 conv-BN shortcut, act, pool.

  `act` is leaky ReLU with slope `negative_slope`. Input `[N, H, W, C]`;
  output `[N, H // 2, W // 2, features]`.
  """
  features: int
  negative_slope: float = 0.1
  impl: ConvImpl = "auto"

  @nn.compact
  def __call__(self, x):
    act = lambda h: nn.leaky_relu(h, self.negative_slope)
    shortcut = Conv(self.features, 1, 1, "SAME", self.impl,
                    name="shortcut_conv")(x)
    shortcut = TaskBatchNorm(name="shortcut_norm")(shortcut)
    for i in range(3):
      x = Conv(self.features, 3, 1, "SAME", self.impl, name=f"conv{i}")(x)
      x = TaskBatchNorm(name=f"norm{i}")(x)
      if i < 2:
        x = act(x)
    x = act(x + shortcut)
    return max_pool2x2(x)


class ResNet12(nn.Module):
  """ResNet-12 with an optional linear head named "head".

  Input `[N, H, W, C]` float, H, W >= 16. Each block halves the spatial size,
  rounding down (84 -> 42 -> 21 -> 10 -> 5, MetaOptNet's 5x5 maps); the maps
  are averaged over space, and a linear head maps them to `[N, num_outputs]`
  logits, or the features `[N, widths[-1]]` are returned when `num_outputs` is
  None.
  """
  num_outputs: Optional[int]
  widths: Sequence[int] = (64, 160, 320, 640)
  negative_slope: float = 0.1
  impl: ConvImpl = "auto"

  @nn.compact
  def __call__(self, x):
    if len(self.widths) != 4:
      raise ValueError(
          f"ResNet-12 has 4 blocks, so widths needs 4 entries, got "
          f"{tuple(self.widths)}.")
    for i, width in enumerate(self.widths):
      x = ResidualBlock(width, self.negative_slope, self.impl,
                        name=f"block{i}")(x)
    x = jnp.mean(x, axis=(1, 2))
    if self.num_outputs is None:
      return x
    return nn.Dense(self.num_outputs, name="head")(x)
