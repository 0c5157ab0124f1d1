"""Shared by the probes here: milliseconds per call of ``f(*args)`` inside a ``lax.scan``
whose body depends on its carry (as the library's training loops run it); best of 3."""
import time

import jax
import jax.numpy as jnp


def t_loop(f, *args, n=50):
  @jax.jit
  def loop(args):
    def body(c, i):
      out = f(*jax.tree.map(lambda a: a + 0 * i.astype(a.dtype), c))
      return c, sum(jnp.sum(l) for l in jax.tree.leaves(out))
    return jax.lax.scan(body, args, jnp.arange(n))[1]
  jax.block_until_ready(loop(args))
  ts = []
  for _ in range(3):
    t = time.perf_counter()
    jax.block_until_ready(loop(args))
    ts.append(time.perf_counter() - t)
  return 1e3 * min(ts) / n
