import functools
import jax, jax.numpy as jnp, numpy as np, flax.linen as nn
from _loop import t_loop
from dmc_jax.networks.norm import group_norm

r = np.random.default_rng(0)

def gn_plain(x, scale, bias, groups=8, eps=1e-5):
  b, h, c = x.shape
  xg = x.reshape(b, h, groups, c // groups)
  mean = jnp.mean(xg, (1, 3), keepdims=True)
  var = jnp.mean(jnp.square(xg - mean), (1, 3), keepdims=True)
  y = (xg - mean) * jax.lax.rsqrt(var + eps)
  return y.reshape(b, h, c) * scale + bias

r = np.random.default_rng(0)

def gn_v1(x, scale, bias, groups=8, eps=1e-5):
  b, h, c = x.shape
  cg = c // groups
  n = h * cg
  s1 = jnp.sum(x, 1).reshape(b, groups, cg).sum(-1)          # [B, G]
  s2 = jnp.sum(x * x, 1).reshape(b, groups, cg).sum(-1)
  mean = s1 / n
  var = jnp.maximum(s2 / n - mean * mean, 0.0)
  rstd = jax.lax.rsqrt(var + eps)
  a = (jnp.repeat(rstd, cg, -1) * scale)                      # [B, C]
  d = bias - jnp.repeat(mean, cg, -1) * a
  return x * a[:, None] + d[:, None]


def _sel(h, c, groups):
  return jnp.asarray(np.kron(np.ones((h, 1)), np.kron(np.eye(groups), np.ones((c // groups, 1)))), jnp.float32)  # [h*c, G]

def _stats(x, groups):
  b, h, c = x.shape
  m = _sel(h, c, groups)
  n = h * (c // groups)
  xf = x.reshape(b, h * c)
  mean = (xf @ m) / n
  var = jnp.maximum(((xf * xf) @ m) / n - mean * mean, 0.0)
  return mean, var

@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def gn_v2(x, scale, bias, groups=8, eps=1e-5):
  return _gn_fwd(x, scale, bias, groups, eps)[0]

def _gn_fwd(x, scale, bias, groups, eps):
  b, h, c = x.shape; cg = c // groups
  mean, var = _stats(x, groups)
  rstd = jax.lax.rsqrt(var + eps)
  a = jnp.repeat(rstd, cg, -1) * scale
  d = bias - jnp.repeat(mean, cg, -1) * a
  return x * a[:, None] + d[:, None], (x, scale, mean, rstd)

def _gn_bwd(groups, eps, res, dy):
  x, scale, mean, rstd = res
  b, h, c = x.shape; cg = c // groups; n = h * cg
  m = _sel(h, c, groups)
  rs_c, mu_c = jnp.repeat(rstd, cg, -1)[:, None], jnp.repeat(mean, cg, -1)[:, None]
  xhat = (x - mu_c) * rs_c
  dbias = jnp.sum(dy, (0, 1)); dscale = jnp.sum(dy * xhat, (0, 1))
  g = dy * scale
  mg = (g.reshape(b, h * c) @ m) / n
  mgx = ((g * xhat).reshape(b, h * c) @ m) / n
  dx = rs_c * (g - jnp.repeat(mg, cg, -1)[:, None] - xhat * jnp.repeat(mgx, cg, -1)[:, None])
  return dx, dscale, dbias

gn_v2.defvjp(lambda x, s, bb, groups, eps: _gn_fwd(x, s, bb, groups, eps), _gn_bwd)

def stats_mm(x, scale, bias, groups=8, eps=1e-5):   # autodiff of the matmul-stats forward
  return _gn_fwd(x, scale, bias, groups, eps)[0]


def _gsum(v, groups):  # [B, C] -> [B, G]
  b, c = v.shape
  return v.reshape(b, groups, c // groups).sum(-1)

def _fwd4(x, scale, bias, groups, eps):
  b, h, c = x.shape; cg = c // groups; n = h * cg
  mean = _gsum(jnp.sum(x, 1), groups) / n
  var = jnp.maximum(_gsum(jnp.sum(x * x, 1), groups) / n - mean * mean, 0.0)
  rstd = jax.lax.rsqrt(var + eps)
  rs_c, mu_c = jnp.repeat(rstd, cg, -1), jnp.repeat(mean, cg, -1)
  a = rs_c * scale
  return x * a[:, None] + (bias - mu_c * a)[:, None], (x, scale, mu_c, rs_c)

def _bwd4(groups, eps, res, dy):
  x, scale, mu_c, rs_c = res
  b, h, c = x.shape; cg = c // groups; n = h * cg
  u = jnp.sum(dy, 1)            # [B, C]
  v = jnp.sum(dy * x, 1)        # [B, C]
  dbias = jnp.sum(u, 0)
  sx = rs_c * (v - mu_c * u)    # sum_h dy * xhat, [B, C]
  dscale = jnp.sum(sx, 0)
  mg = jnp.repeat(_gsum(u * scale, groups) / n, cg, -1)      # mean over group of g
  mgx = jnp.repeat(_gsum(sx * scale, groups) / n, cg, -1)    # mean over group of g * xhat
  A = rs_c * scale
  Bc = -rs_c * rs_c * mgx
  Cc = -rs_c * mg + rs_c * rs_c * mgx * mu_c
  return dy * A[:, None] + x * Bc[:, None] + Cc[:, None], dscale, dbias

@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def gn_v4(x, scale, bias, groups=8, eps=1e-5):
  return _fwd4(x, scale, bias, groups, eps)[0]
gn_v4.defvjp(lambda x, s, bb, groups, eps: _fwd4(x, s, bb, groups, eps), _bwd4)



VARIANTS = [("plain (flax's view)", gn_plain), ("v1 axis-1 sums, autodiff", gn_v1),
            ("dmc_jax.networks.norm (kept)", lambda x, s, b: group_norm(x, s, b, 8, 1e-5)),
            ("v2 matmul stats, custom VJP", gn_v2), ("v3 matmul stats, autodiff", stats_mm),
            ("v4 axis-1 sums, custom VJP", gn_v4)]
for (B, H, C) in [(256, 32, 32), (256, 16, 64), (256, 4, 256), (64, 32, 32)]:
  x = jnp.asarray(r.standard_normal((B, H, C)) * 2 + 1, jnp.float32)
  dy = jnp.asarray(r.standard_normal((B, H, C)), jnp.float32)
  gn = nn.GroupNorm(num_groups=8, epsilon=1e-5); p = gn.init(jax.random.key(0), x)
  s, bb = p["params"]["scale"] * 1.3, p["params"]["bias"] + 0.2
  fl = lambda x, s, bb: gn.apply({"params": {"scale": s, "bias": bb}}, x)
  vjp_ms = lambda f: t_loop(lambda x, s, bb: jax.vjp(f, x, s, bb)[1](dy), x, s, bb)
  print((B, H, C), "nn.GroupNorm fwd %.3f vjp %.3f ms" % (t_loop(fl, x, s, bb), vjp_ms(fl)))
  g_ref = jax.vjp(fl, x, s, bb)[1](dy)
  for name, f in VARIANTS:
    err = max(float(jnp.max(jnp.abs(u - v)) / jnp.max(jnp.abs(u)))
              for u, v in zip(g_ref, jax.vjp(f, x, s, bb)[1](dy)))
    print(f"  {name:34s} fwd {t_loop(f, x, s, bb):.3f} vjp {vjp_ms(f):.3f} ms  rel. grad err {err:.1e}")
