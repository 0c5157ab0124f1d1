import time, sys, jax, jax.numpy as jnp
from dmc_jax.networks.temporal_unet import TemporalUnet
from dmc_jax.networks.mlp import MLPDenoiser
def T(f, *a):
  jax.block_until_ready(f(*a)); ts=[]
  for i in range(3):
    t0=time.time(); jax.block_until_ready(f(*a)); ts.append(time.time()-t0)
  return round(min(ts), 3)
def run(net, x, t, name, N=4):
  p = jax.jit(net.init)(jax.random.key(0), x, t)
  loss = lambda p: jnp.mean(net.apply(p, x, t) ** 2)
  g = jax.jit(jax.grad(loss))
  def sc(p, unroll):
    def body(c, _):
      gg = jax.grad(loss)(c)
      return jax.tree.map(lambda a, b: a - 1e-4 * b, c, gg), 0.
    return jax.lax.scan(body, p, jnp.arange(N), unroll=unroll)[0]
  one = T(g, p)
  rolled = T(jax.jit(lambda p: sc(p, 1)), p)
  unr = T(jax.jit(lambda p: sc(p, True)), p)
  print(f"{name}: one grad {one}, scan of {N} rolled {rolled} ({rolled/N/one:.2f}x per grad), unrolled {unr} ({unr/N/one:.2f}x)", flush=True)
B = int(sys.argv[1]) if len(sys.argv) > 1 else 256
run(TemporalUnet(dim=32, dim_mults=(1, 2, 4)), jnp.ones((B, 16, 2)), jnp.ones((B,)), f"unet32 b{B} H16")
run(TemporalUnet(dim=32, dim_mults=(1, 2, 4, 8)), jnp.ones((64, 32, 4)), jnp.ones((64,)), "unet bench-ish b64 H32")
run(MLPDenoiser(), jnp.ones((B, 3)), jnp.ones((B,)), f"mlp b{B}") if False else None
