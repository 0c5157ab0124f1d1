from _loop import t_loop
import time, jax, jax.numpy as jnp, numpy as np
from dmc_jax.networks.temporal_unet import im2col_conv1d, xla_conv1d

def toeplitz_conv1d(x, kernel, stride=1):
  """stride 1 only here: y[b,i] = sum_m x[b,m] W[m - i + pad]"""
  b, h, c = x.shape
  k, _, f = kernel.shape
  pad = (k - 1) // 2
  zero = jnp.zeros((c, f), kernel.dtype)
  rows = []
  for m in range(h):
    rows.append(jnp.stack([kernel[m - i + pad] if 0 <= m - i + pad < k else zero for i in range(h)], 1))  # [c, h, f]
  wbig = jnp.stack(rows, 0).reshape(h * c, h * f)
  return (x.reshape(b, h * c) @ wbig).reshape(b, h, f)

r = np.random.default_rng(0)
for (B, H, C, F) in [(256, 4, 256, 256), (64, 4, 256, 256), (256, 4, 512, 256), (256, 2, 256, 256)]:
  x = jnp.asarray(r.standard_normal((B, H, C)), jnp.float32)
  w = jnp.asarray(r.standard_normal((5, C, F)) * 0.05, jnp.float32)
  dy = jnp.asarray(r.standard_normal((B, H, F)), jnp.float32)
  ref = xla_conv1d(x, w)
  e = float(jnp.max(jnp.abs(toeplitz_conv1d(x, w) - ref)))
  ga = jax.vjp(im2col_conv1d, x, w)[1](dy); gb = jax.vjp(toeplitz_conv1d, x, w)[1](dy)
  eg = max(float(jnp.max(jnp.abs(u - v))) for u, v in zip(ga, gb))
  res = []
  for name, fn in [("im2col", im2col_conv1d), ("toeplitz", toeplitz_conv1d)]:
    res.append("%s fwd %.3f vjp %.3f" % (name, t_loop(fn, x, w), t_loop(lambda x, w: jax.vjp(fn, x, w)[1](dy), x, w)))
  print((B, H, C, F), " | ".join(res), "err", e, eg)
