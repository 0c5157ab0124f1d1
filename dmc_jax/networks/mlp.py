"""Residual MLP denoiser (IDQL's LN-ResNet, CleanDiffuser's ``MLP`` denoiser)."""
import math

import flax.linen as nn
import jax.numpy as jnp

from dmc_jax.networks.embeddings import ACTIVATIONS, CondEmbedding, TimeEmbedding


class ResidualBlock(nn.Module):
  """``h + Dense(width -> hidden)(act(Dense(hidden -> width)(LayerNorm(h))))``."""
  width: int
  act: str = "mish"
  dropout: float = 0.0

  @nn.compact
  def __call__(self, h, deterministic: bool = True):
    y = nn.Dense(self.width)(nn.LayerNorm()(h))
    y = ACTIVATIONS[self.act](y)
    if self.dropout > 0:
      y = nn.Dropout(self.dropout)(y, deterministic=deterministic)
    return h + nn.Dense(h.shape[-1])(y)


class MLPDenoiser(nn.Module):
  """Denoiser for flat (or flattened) samples, e.g. one action or an action chunk.

  ``__call__(x [B, ...], t [B], cond [B, C] or None, cond_mask [B] or None) -> [B, ...]``.
  The input, time embedding and condition embedding are concatenated, projected to
  ``hidden_dim``, passed through ``num_blocks`` pre-LayerNorm residual blocks of width
  ``block_width``, and projected back to the input's size.
  """
  hidden_dim: int = 256
  num_blocks: int = 3
  block_width: int = 1024
  time_dim: int = 64
  cond_dim: int = 64
  act: str = "mish"
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, t, cond=None, cond_mask=None, deterministic: bool = True):
    shape = x.shape
    h = [x.reshape(shape[0], -1), TimeEmbedding(self.time_dim, act=self.act)(t)]
    if cond is not None:
      h.append(CondEmbedding(self.cond_dim, act=self.act)(cond, cond_mask))
    h = nn.Dense(self.hidden_dim)(jnp.concatenate(h, -1))
    for _ in range(self.num_blocks):
      h = ResidualBlock(self.block_width, self.act, self.dropout)(h, deterministic)
    h = ACTIVATIONS[self.act](nn.LayerNorm()(h))
    return nn.Dense(math.prod(shape[1:]))(h).reshape(shape)
