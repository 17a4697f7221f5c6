"""Multi-layer perceptron."""

from typing import Callable, Sequence

import flax.linen as nn


class MLP(nn.Module):
  """Fully connected network; the last layer is named "head".

  Input `[N, D]` float; output `[N, num_outputs]`. `hidden_sizes` are the
  widths of the hidden layers, each followed by `activation`; the MAML
  sinusoid model is `MLP((40, 40), 1)`.
  """
  hidden_sizes: Sequence[int]
  num_outputs: int
  activation: Callable = nn.relu

  @nn.compact
  def __call__(self, x):
    for width in self.hidden_sizes:
      x = self.activation(nn.Dense(width)(x))
    return nn.Dense(self.num_outputs, name="head")(x)
