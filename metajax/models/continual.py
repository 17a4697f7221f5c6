"""The networks of the meta-learned continual learners, OML and ANML.

Both split into a part that the online learner updates and a part that
only the outer loop trains, and name their submodules so that a mask by
path (`metajax.mask_by_path`) picks either part:

* `OMLNet` (Javed & White, 2019): a representation network "rln" (a stack
  of convolutions) and a prediction network "pln" (fully connected layers,
  the last one named "head"). OML adapts "pln" only.
* `ANMLNet` (Beaulieu et al., 2020): a neuromodulatory network "nm" whose
  sigmoid output gates, element by element, the features of a prediction
  network "pn" before its linear "head". ANML adapts everything but "nm".

Neither has normalisation layers: the online learner sees one image at a
time, where batch statistics do not exist.
"""

from typing import Sequence

import flax.linen as nn
import jax

from metajax.models.conv import Conv
from metajax.models.conv import ConvImpl


class ConvStack(nn.Module):
  """3x3 convolutions with ReLU, each with its stride, then flattened.

  Input `[N, H, W, C]` float; output `[N, H' * W' * width]`, with each
  stride-2 layer halving H and W (rounding up, "SAME" padding).
  """
  width: int
  strides: Sequence[int]
  impl: ConvImpl = "auto"

  @nn.compact
  def __call__(self, x):
    for stride in self.strides:
      x = nn.relu(Conv(self.width, 3, stride, "SAME", self.impl)(x))
    return x.reshape(x.shape[0], -1)


class OMLNet(nn.Module):
  """OML's network: representation "rln", then prediction "pln".

  Input `[N, H, W, C]` float; output `[N, num_outputs]` logits. The
  representation is `ConvStack(width, strides)` (28x28 Omniglot with the
  default strides: 4 x 4 x width features); the prediction network is
  `hidden` ReLU units and the linear "head".
  """
  num_outputs: int
  width: int = 64
  strides: Sequence[int] = (1, 2, 1, 2, 1, 2)
  hidden: int = 512
  impl: ConvImpl = "auto"

  def setup(self):
    self.rln = ConvStack(self.width, self.strides, self.impl)
    self.pln = _Prediction(self.hidden, self.num_outputs)

  def __call__(self, x):
    return self.pln(self.rln(x))


class _Prediction(nn.Module):
  hidden: int
  num_outputs: int

  @nn.compact
  def __call__(self, z):
    z = nn.relu(nn.Dense(self.hidden)(z))
    return nn.Dense(self.num_outputs, name="head")(z)


class ANMLNet(nn.Module):
  """ANML's network: prediction features gated by a neuromodulatory net.

  `logits = head(pn(x) * sigmoid(nm(x)))`: "pn" is `ConvStack(width,
  strides)`; "nm" is `ConvStack(nm_width, strides)` and a linear layer to
  one gate per feature of "pn". Input `[N, H, W, C]` float; output `[N,
  num_outputs]` logits.
  """
  num_outputs: int
  width: int = 64
  nm_width: int = 32
  strides: Sequence[int] = (2, 2, 2)
  impl: ConvImpl = "auto"

  def setup(self):
    self.pn = ConvStack(self.width, self.strides, self.impl)
    self.nm = _Gate(self.nm_width, self.strides, self.impl)
    self.head = nn.Dense(self.num_outputs)

  def __call__(self, x):
    features = self.pn(x)
    return self.head(features * self.nm(x, features.shape[-1]))


class _Gate(nn.Module):
  width: int
  strides: Sequence[int]
  impl: ConvImpl

  @nn.compact
  def __call__(self, x, size: int):
    z = ConvStack(self.width, self.strides, self.impl)(x)
    return jax.nn.sigmoid(nn.Dense(size)(z))
