"""Temporal U-Net 1-D of Diffuser (Janner et al., 2022), over ``[B, H, D]`` trajectories.

Conv residual blocks (Conv1d -> GroupNorm -> Mish, twice, with the time embedding added in
between), stride-2 down-sampling and transposed-conv up-sampling over the horizon, skip
connections, optional self-attention at the bottleneck.
"""
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dmc_jax.networks.embeddings import CondEmbedding, mish, sinusoidal_embedding


def check_horizon(horizon: int, dim_mults: Sequence[int]) -> None:
  """The horizon must survive ``len(dim_mults) - 1`` halvings exactly."""
  factor = 2 ** (len(dim_mults) - 1)
  if horizon % factor:
    raise ValueError(
        f"horizon={horizon} does not fit the U-Net: with dim_mults={tuple(dim_mults)} it is "
        f"halved {len(dim_mults) - 1} times, so it must be a multiple of {factor}")


class Conv1dBlock(nn.Module):
  features: int
  kernel_size: int = 5
  groups: int = 8

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(self.features, (self.kernel_size,), padding="SAME")(x)
    x = nn.GroupNorm(num_groups=self.groups)(x)
    return mish(x)


class ResidualTemporalBlock(nn.Module):
  features: int
  kernel_size: int = 5

  @nn.compact
  def __call__(self, x, emb):
    h = Conv1dBlock(self.features, self.kernel_size)(x)
    h = h + nn.Dense(self.features)(mish(emb))[:, None, :]
    h = Conv1dBlock(self.features, self.kernel_size)(h)
    res = x if x.shape[-1] == self.features else nn.Conv(self.features, (1,))(x)
    return h + res


class SelfAttention1d(nn.Module):
  """Pre-norm residual multi-head self-attention over the horizon."""
  heads: int = 4

  @nn.compact
  def __call__(self, x):
    b, h, d = x.shape
    y = nn.GroupNorm(num_groups=min(8, d))(x)
    qkv = nn.Dense(3 * d, use_bias=False)(y).reshape(b, h, 3, self.heads, d // self.heads)
    out = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])
    return x + nn.Dense(d)(out.reshape(b, h, d))


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
    emb = sinusoidal_embedding(t, self.dim)
    emb = nn.Dense(self.dim)(mish(nn.Dense(4 * self.dim)(emb)))
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
        h = nn.Conv(d, (3,), strides=(2,), padding=((1, 1),))(h)
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
      h = nn.ConvTranspose(d, (4,), strides=(2,), padding="SAME")(h)
    h = Conv1dBlock(self.dim, self.kernel_size)(h)
    return nn.Conv(out_dim, (1,))(h)
