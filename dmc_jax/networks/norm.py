"""Group normalisation over ``[B, ..., C]`` written for XLA:CPU. Flax linen module."""
import flax.linen as nn
import jax
import jax.numpy as jnp


class GroupNorm(nn.Module):
  """``nn.GroupNorm``'s function and parameters (``scale``, ``bias`` of shape ``[C]``; the
  same ``epsilon``, the variance as ``E[x^2] - E[x]^2`` clipped at 0, statistics in
  float32), computed in fewer passes over the activations.

  Statistics are sums over the middle axes first (``[B, C]``, contiguous in ``C``), then
  over each group's channels on the small ``[B, C]`` arrays, and the output is one
  elementwise pass with per-``(b, c)`` coefficients. ``nn.GroupNorm`` reduces over a
  ``[B, H, G, C/G]`` view with non-adjacent axes; on XLA:CPU its backward pass inside a
  ``lax.scan`` takes up to 2x as long as this one's, its forward up to 3x (BUILD_NOTES.md,
  issue #15, "Group normalisation in fewer passes"). Plain ``jnp``: every order of
  autodiff works.
  """
  num_groups: int = 8
  epsilon: float = 1e-6

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    if c % self.num_groups:
      raise ValueError(f"GroupNorm: {c} channels do not split into {self.num_groups} groups")
    scale = self.param("scale", nn.initializers.ones, (c,))
    bias = self.param("bias", nn.initializers.zeros, (c,))
    return group_norm(x, scale, bias, self.num_groups, self.epsilon)


def group_norm(x, scale, bias, num_groups: int, epsilon: float = 1e-6):
  """Group normalisation of ``x [B, ..., C]`` with per-channel ``scale`` and ``bias``. PURE."""
  dtype = x.dtype
  x = x.astype(jnp.promote_types(dtype, jnp.float32))
  b, c = x.shape[0], x.shape[-1]
  per_group = c // num_groups
  axes = tuple(range(1, x.ndim - 1))
  n = per_group * (x.size // (b * c))

  def group_mean(v):  # [B, C] sums -> [B, C] means over each channel's group
    g = v.reshape(b, num_groups, per_group).sum(-1) / n
    return jnp.repeat(g, per_group, -1)

  mean = group_mean(jnp.sum(x, axes))
  var = jnp.maximum(group_mean(jnp.sum(x * x, axes)) - mean * mean, 0.0)
  a = jax.lax.rsqrt(var + epsilon) * scale  # [B, C]
  expand = (slice(None),) + (None,) * len(axes)
  return ((x - mean[expand]) * a[expand] + bias).astype(dtype)
