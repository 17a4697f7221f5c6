"""Convolution with a backend-aware implementation, and the Conv4 backbone.

Under `jax.vmap` over tasks, a convolution whose kernel differs per task (as it
does after inner-loop adaptation) becomes a grouped convolution. XLA:CPU's
gradients of grouped convolutions are very slow (an order of magnitude and
more; the measured numbers are on the benchmarks page and in
benchmarks/conv_impl.py), so on the CPU the convolution is written as
explicit patches and one matrix product, which batches into a plain batched
GEMM. GPUs and TPUs keep the native convolution.
Both implementations compute the same function (tested).
"""

from typing import Literal, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from metajax.models.norm import TaskBatchNorm

ConvImpl = Literal["auto", "patches", "native"]


def resolve_conv_impl(impl: ConvImpl = "auto") -> str:
  """Returns "patches" on the CPU backend and "native" elsewhere for "auto"."""
  if impl == "auto":
    return "patches" if jax.default_backend() == "cpu" else "native"
  if impl not in ("patches", "native"):
    raise ValueError(f"conv impl must be auto, patches or native, got {impl!r}.")
  return impl


def _same_padding(size: int, k: int, stride: int):
  out = -(-size // stride)
  total = max((out - 1) * stride + k - size, 0)
  return out, (total // 2, total - total // 2)


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1,
           padding: str = "SAME", impl: ConvImpl = "auto") -> jax.Array:
  """2-D convolution (cross-correlation), NHWC x HWIO -> NHWC.

  Args:
    x: `[N, H, W, C]` float array.
    kernel: `[kh, kw, C, O]`, same dtype as `x`.
    stride: the same stride along H and W.
    padding: "SAME" or "VALID".
    impl: "patches" (strided slices + one matmul), "native"
      (`lax.conv_general_dilated`) or "auto" (patches on CPU).

  Returns:
    `[N, H', W', O]`, with `H' = ceil(H / stride)` for SAME and
    `floor((H - kh) / stride) + 1` for VALID.
  """
  if x.ndim != 4 or kernel.ndim != 4 or x.shape[-1] != kernel.shape[2]:
    raise ValueError(
        f"conv2d expects x [N, H, W, C] and kernel [kh, kw, C, O]; got x "
        f"{x.shape} and kernel {kernel.shape}.")
  if padding not in ("SAME", "VALID"):
    raise ValueError(f"padding must be SAME or VALID, got {padding!r}.")
  if resolve_conv_impl(impl) == "native":
    return jax.lax.conv_general_dilated(
        x, kernel, (stride, stride), padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
  kh, kw, c, o = kernel.shape
  _, h, w, _ = x.shape
  if padding == "SAME":
    out_h, pad_h = _same_padding(h, kh, stride)
    out_w, pad_w = _same_padding(w, kw, stride)
    x = jnp.pad(x, ((0, 0), pad_h, pad_w, (0, 0)))
  else:
    out_h, out_w = (h - kh) // stride + 1, (w - kw) // stride + 1
  patches = [
      x[:, i:i + (out_h - 1) * stride + 1:stride,
        j:j + (out_w - 1) * stride + 1:stride, :]
      for i in range(kh) for j in range(kw)
  ]
  # [N, H', W', kh*kw*C] in (i, j, c) order, matching kernel.reshape below.
  patches = jnp.concatenate(patches, axis=-1)
  return patches @ kernel.reshape(kh * kw * c, o)


def max_pool2x2(x: jax.Array) -> jax.Array:
  """2x2 max-pooling with stride 2, dropping a last odd row/column (VALID).

  Written as a reshape and a max, whose gradient is an elementwise select,
  rather than `lax.reduce_window`, whose gradient (select-and-scatter) is
  slow on XLA:CPU. `[N, H, W, C] -> [N, H // 2, W // 2, C]`.
  """
  n, h, w, c = x.shape
  x = x[:, :h - h % 2, :w - w % 2]
  return jnp.max(x.reshape(n, h // 2, 2, w // 2, 2, c), axis=(2, 4))


class Conv(nn.Module):
  """A 2-D convolution layer with a bias, on `conv2d`."""
  features: int
  kernel_size: int = 3
  stride: int = 1
  padding: str = "SAME"
  impl: ConvImpl = "auto"

  @nn.compact
  def __call__(self, x):
    kernel = self.param(
        "kernel", nn.initializers.lecun_normal(),
        (self.kernel_size, self.kernel_size, x.shape[-1], self.features),
        x.dtype)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), x.dtype)
    return conv2d(x, kernel, self.stride, self.padding, self.impl) + bias


class Conv4(nn.Module):
  """The standard four-block few-shot backbone (Vinyals et al., 2016).

  Each block is a 3x3 convolution with `width` filters, `TaskBatchNorm`
  (`norm="batch"`; `norm="none"` leaves it out) and ReLU, downsampled either
  by the convolution's stride 2 (`downsample="stride"`,
  MAML's Omniglot model; 28 -> 14 -> 7 -> 4 -> 2) or by 2x2 max-pooling
  (`downsample="max"`, ProtoNets and MAML's mini-ImageNet model; 28 -> 14 ->
  7 -> 3 -> 1, so the 64 filters are the 64-d embedding). The features are
  mean-pooled over space, then a linear head named "head" maps them to
  `num_outputs` logits, or the pooled features are returned when
  `num_outputs` is None (embedding networks).

  Input `[N, H, W, C]` float; output `[N, num_outputs]` or `[N, width]`.
  """
  num_outputs: Optional[int]
  width: int = 64
  downsample: Literal["stride", "max"] = "stride"
  impl: ConvImpl = "auto"
  norm: Literal["batch", "none"] = "batch"

  @nn.compact
  def __call__(self, x):
    if self.downsample not in ("stride", "max"):
      raise ValueError(
          f"downsample must be 'stride' or 'max', got {self.downsample!r}.")
    if self.norm not in ("batch", "none"):
      raise ValueError(f"norm must be 'batch' or 'none', got {self.norm!r}.")
    for _ in range(4):
      stride = 2 if self.downsample == "stride" else 1
      x = Conv(self.width, 3, stride, "SAME", self.impl)(x)
      if self.norm == "batch":
        x = TaskBatchNorm()(x)
      # ReLU is monotone, so pooling first gives the same values; ReLU and
      # its gradient then run on a quarter of the activations.
      if self.downsample == "max":
        x = max_pool2x2(x)
      x = nn.relu(x)
    x = jnp.mean(x, axis=(1, 2))
    if self.num_outputs is None:
      return x
    return nn.Dense(self.num_outputs, name="head")(x)
