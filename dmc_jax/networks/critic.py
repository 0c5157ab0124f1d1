"""MLP critics for IQL: ``ValueNet(obs) -> [B]``, ``EnsembleQ(obs, act) -> [N, B]`` (``N``
heads in one vmapped module, so an update of all heads is one compiled computation) and
``TwinQ`` (two named heads; ``EnsembleQ(num_heads=2)`` computes the same function with the
heads' parameters stacked)."""
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
  layer_norm: bool = True

  @nn.compact
  def __call__(self, obs):
    return MLP(self.hidden_dims, layer_norm=self.layer_norm)(obs)[..., 0]


class TwinQ(nn.Module):
  """Two independent Q heads (clipped double-Q): ``[2, B]``."""
  hidden_dims: Sequence[int] = (256, 256)

  @nn.compact
  def __call__(self, obs, act):
    x = jnp.concatenate([obs, act], -1)
    return jnp.stack([MLP(self.hidden_dims, name=f"q{i}")(x)[..., 0] for i in range(2)])


class EnsembleQ(nn.Module):
  """``num_heads`` independent Q heads ``[N, B]``, vmapped over a stacked parameter axis
  (``params["heads"]`` leaves ``[N, ...]``), each a Dense -> LayerNorm -> mish MLP."""
  hidden_dims: Sequence[int] = (256, 256)
  num_heads: int = 2
  layer_norm: bool = True

  @nn.compact
  def __call__(self, obs, act):
    x = jnp.concatenate([obs, act], -1)
    heads = nn.vmap(MLP, variable_axes={"params": 0}, split_rngs={"params": True},
                    in_axes=None, out_axes=0, axis_size=self.num_heads)
    return heads(tuple(self.hidden_dims), 1, self.layer_norm, name="heads")(x)[..., 0]
