from _loop import t_loop
import time, jax, jax.numpy as jnp, numpy as np
from dmc_jax.networks.embeddings import mish as mish_old

def _parts(x):
  e = jnp.exp(jnp.minimum(x, 20.0))
  n = e * (e + 2.0)
  t = n / (n + 2.0)  # tanh(softplus(x))
  return e, t

@jax.custom_jvp
def mish(x):
  e, t = _parts(x)
  return jnp.where(x > 20.0, x, x * t)

@mish.defjvp
def _mish_jvp(primals, tangents):
  (x,), (dx,) = primals, tangents
  e, t = _parts(x)
  y = jnp.where(x > 20.0, x, x * t)
  # d/dx x tanh(sp(x)) = t + x (1 - t^2) sigmoid(x), sigmoid = e / (1 + e)
  d = jnp.where(x > 20.0, 1.0, t + x * (1.0 - t * t) * (e / (1.0 + e)))
  return y, d * dx

r = np.random.default_rng(0)
x = jnp.asarray(r.standard_normal((10, 256, 128)) * 3, jnp.float32)
c = jnp.asarray(r.standard_normal((10, 256, 128)), jnp.float32)
for name, m in [("old", mish_old), ("new", mish)]:
  print(name, "fwd", t_loop(m, x), "vjp", t_loop(lambda x: jax.vjp(m, x)[1](c), x))
xx = jnp.concatenate([jnp.linspace(-60, 60, 100001), jnp.array([-1e30, 1e30, 20.0, 19.999, 20.001, 0.0])])
g_old = jax.vmap(jax.grad(mish_old))(xx); g_new = jax.vmap(jax.grad(mish))(xx)
print("max |grad diff|", float(jnp.max(jnp.abs(g_old - g_new))), "rel", float(jnp.max(jnp.abs(g_old - g_new) / (1e-6 + jnp.abs(g_old)))))
h_old = jax.vmap(jax.grad(jax.grad(mish_old)))(xx); h_new = jax.vmap(jax.grad(jax.grad(mish)))(xx)
print("max |2nd diff|", float(jnp.max(jnp.abs(h_old - h_new))))
print(bool(jnp.all(jnp.isfinite(g_new))), bool(jnp.all(jnp.isfinite(h_new))))
i = jnp.argsort(-jnp.abs(h_old - h_new))[:5]
print(xx[i], h_old[i], h_new[i])
