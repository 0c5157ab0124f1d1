"""The input gradient of a dense layer, dy @ W^T, against the forward form x @ W, inside a
lax.scan; and with W^T materialised first (optimization_barrier)."""
from _loop import t_loop
import jax, jax.numpy as jnp, numpy as np
r = np.random.default_rng(0)
for (M, K, N) in [(2048, 1280, 320), (2048, 320, 1280), (1024, 256, 1280), (1024, 1280, 256), (256, 1024, 1024)]:
  a = jnp.asarray(r.standard_normal((M, K)), jnp.float32)
  b = jnp.asarray(r.standard_normal((K, N)), jnp.float32)   # x @ W form
  c = jnp.asarray(r.standard_normal((N, K)), jnp.float32)   # dy @ W^T form (W is [N, K])
  f_ab = t_loop(lambda a, b: a @ b, a, b)
  f_act = t_loop(lambda a, c: a @ c.T, a, c)
  f_bar = t_loop(lambda a, c: a @ jax.lax.optimization_barrier(c.T), a, c)
  f_ein = t_loop(lambda a, c: jnp.einsum("mk,nk->mn", a, c), a, c)
  gf = 2 * M * K * N / 1e9
  print(f"[{M},{K}]x[{K},{N}]: A@B {f_ab:.2f} ms ({gf/f_ab*1e3:.0f} GFLOP/s) | A@C^T {f_act:.2f} | barrier(C^T) {f_bar:.2f} | einsum {f_ein:.2f}")
