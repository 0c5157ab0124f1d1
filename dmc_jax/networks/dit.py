"""DiT-1D (Peebles & Xie, 2023) for action chunks: adaLN-Zero transformer blocks over tokens.

Attention projections are plain dense layers (``networks.dense.Dense``, 2-D kernels), so that
LoRA reaches them.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from dmc_jax.networks.dense import Dense
from dmc_jax.networks.embeddings import CondEmbedding, TimeEmbedding, sinusoidal_embedding


def _modulate(x, shift, scale):
  return x * (1.0 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
  d_model: int
  num_heads: int
  mlp_ratio: float = 4.0

  @nn.compact
  def __call__(self, x, c):
    b, n, d = x.shape
    mod = Dense(6 * d, kernel_init=nn.initializers.zeros)(nn.silu(c))
    sh1, sc1, g1, sh2, sc2, g2 = jnp.split(mod, 6, -1)
    y = _modulate(nn.LayerNorm(use_scale=False, use_bias=False)(x), sh1, sc1)
    qkv = Dense(3 * d)(y).reshape(b, n, 3, self.num_heads, d // self.num_heads)
    y = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])
    x = x + g1[:, None] * Dense(d)(y.reshape(b, n, d))
    y = _modulate(nn.LayerNorm(use_scale=False, use_bias=False)(x), sh2, sc2)
    y = Dense(d)(nn.gelu(Dense(int(self.mlp_ratio * d))(y), approximate=True))
    return x + g2[:, None] * y


class DiT1D(nn.Module):
  """``__call__(x [B, L, A], t [B], cond [B, C] or None, cond_mask [B] or None) -> [B, L, A]``.

  Each of the ``L`` chunk steps is a token; time and condition embeddings are summed into
  ``c``, which modulates every block (adaLN-Zero: modulation and output layers start at 0,
  so a fresh model outputs 0).
  """
  d_model: int = 384
  num_heads: int = 6
  depth: int = 2
  mlp_ratio: float = 4.0

  @nn.compact
  def __call__(self, x, t, cond=None, cond_mask=None):
    if self.d_model % self.num_heads:
      raise ValueError(f"d_model={self.d_model} must be divisible by num_heads={self.num_heads}")
    b, n, a = x.shape
    h = Dense(self.d_model)(x)
    pos = sinusoidal_embedding(jnp.arange(n, dtype=jnp.float32), self.d_model, scale=1.0)
    h = h + pos[None]
    c = TimeEmbedding(self.d_model, hidden_dim=self.d_model, act="silu")(t)
    if cond is not None:
      c = c + CondEmbedding(self.d_model, act="silu")(cond, cond_mask)
    for _ in range(self.depth):
      h = DiTBlock(self.d_model, self.num_heads, self.mlp_ratio)(h, c)
    sh, sc = jnp.split(Dense(2 * self.d_model, kernel_init=nn.initializers.zeros)(nn.silu(c)),
                       2, -1)
    h = _modulate(nn.LayerNorm(use_scale=False, use_bias=False)(h), sh, sc)
    return Dense(a, kernel_init=nn.initializers.zeros)(h)
