"""MLP critics for IQL: ``ValueNet(obs) -> [B]`` and ``TwinQ(obs, act) -> [2, B]``."""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from dmc_jax.networks.embeddings import mish


class MLP(nn.Module):
  """Dense -> LayerNorm -> mish stack, then a linear head of width ``out_dim``."""
  hidden_dims: Sequence[int] = (256, 256)
  out_dim: int = 1
  layer_norm: bool = True

  @nn.compact
  def __call__(self, x):
    for d in self.hidden_dims:
      x = nn.Dense(d)(x)
      if self.layer_norm:
        x = nn.LayerNorm()(x)
      x = mish(x)
    return nn.Dense(self.out_dim)(x)


class ValueNet(nn.Module):
  hidden_dims: Sequence[int] = (256, 256)

  @nn.compact
  def __call__(self, obs):
    return MLP(self.hidden_dims)(obs)[..., 0]


class TwinQ(nn.Module):
  """Two independent Q heads (clipped double-Q): ``[2, B]``."""
  hidden_dims: Sequence[int] = (256, 256)

  @nn.compact
  def __call__(self, obs, act):
    x = jnp.concatenate([obs, act], -1)
    return jnp.stack([MLP(self.hidden_dims, name=f"q{i}")(x)[..., 0] for i in range(2)])
