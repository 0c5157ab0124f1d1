"""Temporal U-Net 1-D of Diffuser (Janner et al., 2022), over ``[B, H, D]`` trajectories.

Conv residual blocks (Conv1d -> GroupNorm -> Mish, twice, with the time embedding added in
between), stride-2 down-sampling and transposed-conv up-sampling over the horizon, skip
connections, optional self-attention at the bottleneck.
"""
import functools
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dmc_jax.networks.dense import Dense
from dmc_jax.networks.embeddings import CondEmbedding, TimeEmbedding, mish
from dmc_jax.networks.norm import GroupNorm


def check_horizon(horizon: int, dim_mults: Sequence[int]) -> None:
  """The horizon must survive ``len(dim_mults) - 1`` halvings exactly."""
  factor = 2 ** (len(dim_mults) - 1)
  if horizon % factor:
    raise ValueError(
        f"horizon={horizon} does not fit the U-Net: with dim_mults={tuple(dim_mults)} it is "
        f"halved {len(dim_mults) - 1} times, so it must be a multiple of {factor}")


class Conv1d(nn.Module):
  """1-D convolution over ``[B, H, C]``: XLA's convolution where the sequence is at least as
  long as the kernel, else im2col + one matmul.

  XLA:CPU's convolution falls off a cliff when the kernel is longer than the sequence with
  wide channels (the U-Net bottleneck: H=4, C=256, k=5 runs ~30-40x slower than the im2col
  matmul), while on longer sequences it beats im2col, whose backward scatters the columns
  back (forward + backward 1.2-1.9x faster at H >= k; BUILD_NOTES.md, issue #15). Both
  paths compute the same convolution; the XLA path takes its kernel gradient as a matmul
  (:func:`conv1d`). Parameters have ``nn.Conv``'s shapes
  (``kernel [k, in, out]``). ``padding`` is ``(k - 1) // 2`` before and ``k - 1 - that``
  after ("SAME" for odd k, PyTorch's ``k // 2`` rule).
  """
  features: int
  kernel_size: int = 5
  stride: int = 1
  use_bias: bool = True

  @nn.compact
  def __call__(self, x):
    b, h, c = x.shape
    k = self.kernel_size
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, c, self.features))
    y = conv1d(x, kernel, self.stride) if h >= k else im2col_conv1d(x, kernel, self.stride)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,))
    return y


def xla_conv1d(x, kernel, stride: int = 1):
  """XLA's convolution with :class:`Conv1d`'s padding (``x [B, H, C]``, ``kernel [k, C, F]``)."""
  k = kernel.shape[0]
  pad = (k - 1) // 2
  return jax.lax.conv_general_dilated(x, kernel, (stride,), [(pad, k - 1 - pad)],
                                      dimension_numbers=("NWC", "WIO", "NWC"))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv1d(x, kernel, stride: int = 1):
  """:func:`xla_conv1d` whose kernel gradient is one matmul, ``im2col(x)^T @ dy``.

  XLA:CPU computes the kernel gradient of its convolution (a convolution that contracts
  over the batch) ~20-70x slower inside a ``while`` loop than at the top level of a
  program, and every training loop here is a ``lax.scan`` (pretraining and alignment
  chunks, PPO's epochs): the U-Net's train step ran 4-11x slower there than alone
  (BUILD_NOTES.md, issue #15, "Convolutions inside loops"). The matmul runs at the same
  speed in and out of loops. The input gradient is written as a forward convolution of
  the (dilated) output gradient, which XLA also runs at the same speed in loops.
  """
  return xla_conv1d(x, kernel, stride)


def _conv1d_fwd(x, kernel, stride):
  return xla_conv1d(x, kernel, stride), (x, kernel)


def _conv1d_bwd(stride, res, dy):
  x, kernel = res
  k, c, f = kernel.shape
  h = x.shape[1]
  pad = (k - 1) // 2
  # dx[m] = sum_j dy_dilated[m + pad - j] W[j]: a forward convolution of the stride-dilated
  # dy with the flipped, transposed kernel (XLA's own transpose rule is ~2.5x slower in loops)
  length = (dy.shape[1] - 1) * stride + 1
  dx = jax.lax.conv_general_dilated(
      dy, jnp.flip(kernel, 0).transpose(0, 2, 1), (1,), [(k - 1 - pad, h + pad - length)],
      lhs_dilation=(stride,), dimension_numbers=("NWC", "WIO", "NWC"))
  dk = im2col_columns(x, k, stride).T @ dy.reshape(-1, f)
  return dx, dk.reshape(k, c, f)


conv1d.defvjp(_conv1d_fwd, _conv1d_bwd)


def im2col_columns(x, k: int, stride: int = 1):
  """``[B * H_out, k * C]``: row ``(b, i)`` holds the ``k`` padded inputs that output ``i`` of
  a :class:`Conv1d` sees (tap ``j`` in columns ``j * C ... (j + 1) * C``)."""
  b, h, c = x.shape
  pad = (k - 1) // 2
  xp = jnp.pad(x, ((0, 0), (pad, k - 1 - pad), (0, 0)))
  h_out = (h - 1) // stride + 1
  cols = jnp.concatenate([xp[:, j:j + stride * (h_out - 1) + 1:stride] for j in range(k)], -1)
  return cols.reshape(b * h_out, k * c)


def im2col_conv1d(x, kernel, stride: int = 1):
  """The convolution of :class:`Conv1d` as im2col + one matmul (``kernel [k, in, out]``)."""
  b, h, _ = x.shape
  k = kernel.shape[0]
  h_out = (h - 1) // stride + 1
  # A 2-D matmul: XLA:CPU's backward of a 3-D dot_general is slow (see networks/dense.py).
  y = im2col_columns(x, k, stride) @ kernel.reshape(-1, kernel.shape[-1])
  return y.reshape(b, h_out, -1)


class Upsample1d(nn.Module):
  """Transposed conv, kernel 4, stride 2, padding 1 (PyTorch's ``ConvTranspose1d(d, d, 4, 2, 1)``),
  as one matmul plus an overlap-add: ``out[2i + j - 1] += x[i] @ W[j]``."""
  features: int

  @nn.compact
  def __call__(self, x):
    b, h, c = x.shape
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (4, c, self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    # [B, H, 4, D] as one 2-D matmul (see networks/dense.py)
    y = (x.reshape(b * h, c) @ jnp.transpose(kernel, (1, 0, 2)).reshape(c, 4 * self.features)
         ).reshape(b, h, 4, self.features)
    zero = jnp.zeros_like(y[:, :1, 0])
    even = y[:, :, 1] + jnp.concatenate([zero, y[:, :-1, 3]], 1)   # out[2m]
    odd = y[:, :, 2] + jnp.concatenate([y[:, 1:, 0], zero], 1)     # out[2m + 1]
    return jnp.stack([even, odd], 2).reshape(b, 2 * h, self.features) + bias


class Conv1dBlock(nn.Module):
  features: int
  kernel_size: int = 5
  groups: int = 8

  @nn.compact
  def __call__(self, x):
    x = Conv1d(self.features, self.kernel_size)(x)
    x = GroupNorm(num_groups=self.groups)(x)
    return mish(x)


class ResidualTemporalBlock(nn.Module):
  features: int
  kernel_size: int = 5

  @nn.compact
  def __call__(self, x, emb):
    h = Conv1dBlock(self.features, self.kernel_size)(x)
    h = h + Dense(self.features)(mish(emb))[:, None, :]
    h = Conv1dBlock(self.features, self.kernel_size)(h)
    res = x if x.shape[-1] == self.features else Dense(self.features)(x)
    return h + res


class SelfAttention1d(nn.Module):
  """Pre-norm residual multi-head self-attention over the horizon."""
  heads: int = 4

  @nn.compact
  def __call__(self, x):
    b, h, d = x.shape
    y = GroupNorm(num_groups=min(8, d))(x)
    qkv = Dense(3 * d, use_bias=False)(y).reshape(b, h, 3, self.heads, d // self.heads)
    out = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])
    return x + Dense(d)(out.reshape(b, h, d))


class TemporalUnet(nn.Module):
  """``__call__(x [B, H, D], t [B], cond [B, C] or None, cond_mask [B] or None) -> [B, H, D]``."""
  dim: int = 32
  dim_mults: Sequence[int] = (1, 2, 2, 2)
  kernel_size: int = 5
  attention: bool = False

  @nn.compact
  def __call__(self, x, t, cond=None, cond_mask=None):
    check_horizon(x.shape[1], self.dim_mults)
    out_dim = x.shape[-1]
    emb = TimeEmbedding(self.dim, act="mish")(t)
    if cond is not None:
      emb = emb + CondEmbedding(self.dim)(cond, cond_mask)
    dims = [self.dim * m for m in self.dim_mults]
    n = len(dims)
    skips = []
    h = x
    for i, d in enumerate(dims):
      h = ResidualTemporalBlock(d, self.kernel_size)(h, emb)
      h = ResidualTemporalBlock(d, self.kernel_size)(h, emb)
      skips.append(h)
      if i < n - 1:
        h = Conv1d(d, 3, stride=2)(h)
    mid = dims[-1]
    h = ResidualTemporalBlock(mid, self.kernel_size)(h, emb)
    if self.attention:
      h = SelfAttention1d()(h)
    h = ResidualTemporalBlock(mid, self.kernel_size)(h, emb)
    # Up path mirrors Janner et al.: one stage per resolution but the finest.
    for i, d in enumerate(reversed(dims[:-1])):
      h = jnp.concatenate([h, skips.pop()], -1)
      h = ResidualTemporalBlock(d, self.kernel_size)(h, emb)
      h = ResidualTemporalBlock(d, self.kernel_size)(h, emb)
      h = Upsample1d(d)(h)
    h = Conv1dBlock(self.dim, self.kernel_size)(h)
    return Dense(out_dim)(h)
