"""Time and condition embeddings. Flax linen modules."""
import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp


def mish(x):
  """Mish activation ``x tanh(softplus(x))`` (Misra, 2019), as in Diffuser.

  Computed with one ``exp``: ``tanh(log(1 + e)) = n / (n + 2)`` with ``n = e (e + 2)``,
  ``e = exp(x)`` (no ``log1p`` and ``tanh``; the U-Net's forward pass is ~14 % faster on
  CPU, BUILD_NOTES.md issue #15). Above x = 20, mish(x) = x to float32 precision, and the
  clamp keeps ``n`` finite.
  """
  e = jnp.exp(jnp.minimum(x, 20.0))
  n = e * (e + 2.0)
  return jnp.where(x > 20.0, x, x * n / (n + 2.0))


ACTIVATIONS = {"mish": mish, "silu": nn.silu, "gelu": nn.gelu, "relu": nn.relu}


def sinusoidal_embedding(t, dim: int, scale: float = 1000.0, max_period: float = 10000.0):
  """Transformer-style sinusoidal features of ``scale * t``: ``[B] -> [B, dim]``.

  Network time lives in ``[0, 1]``; ``scale = 1000`` spreads it over the frequencies the
  way DDPM's integer steps do.
  """
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / max(half - 1, 1))
  args = (scale * jnp.asarray(t, jnp.float32))[:, None] * freqs[None]
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], -1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


class FourierEmbedding(nn.Module):
  """Gaussian random Fourier features (Tancik et al., 2020; Song et al., 2021)."""
  dim: int
  std: float = 16.0

  @nn.compact
  def __call__(self, t):
    w = self.param("w", nn.initializers.normal(self.std), (self.dim // 2,))
    w = jax.lax.stop_gradient(w)  # fixed features
    args = 2 * math.pi * jnp.asarray(t, jnp.float32)[:, None] * w[None]
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], -1)


class TimeEmbedding(nn.Module):
  """``t [B] -> [B, out_dim]``: sinusoidal or Fourier features, then a 2-layer MLP."""
  out_dim: int
  hidden_dim: Optional[int] = None
  kind: str = "sinusoidal"
  act: str = "mish"

  @nn.compact
  def __call__(self, t):
    hidden = self.hidden_dim or 4 * self.out_dim
    if self.kind == "sinusoidal":
      h = sinusoidal_embedding(t, self.out_dim)
    elif self.kind == "fourier":
      h = FourierEmbedding(self.out_dim)(t)
    else:
      raise ValueError(f"time embedding kind must be 'sinusoidal' or 'fourier', got {self.kind!r}")
    h = ACTIVATIONS[self.act](nn.Dense(hidden)(h))
    return nn.Dense(self.out_dim)(h)


class CondEmbedding(nn.Module):
  """Embeds a condition ``[B, C]`` (or ``[B, ...]``, flattened) to ``[B, dim]``.

  ``cond_mask [B]`` (1 keep, 0 drop) swaps dropped rows for a learned null embedding, which
  is what classifier-free guidance asks for at sampling time.
  """
  dim: int
  act: str = "mish"

  @nn.compact
  def __call__(self, cond, cond_mask=None):
    cond = cond.reshape(cond.shape[0], -1)
    h = nn.Dense(self.dim)(ACTIVATIONS[self.act](nn.Dense(self.dim)(cond)))
    null = self.param("null", nn.initializers.zeros, (self.dim,))
    if cond_mask is not None:
      keep = jnp.asarray(cond_mask, h.dtype)[:, None]
      h = keep * h + (1.0 - keep) * null[None]
    return h
