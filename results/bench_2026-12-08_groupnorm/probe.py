"""Time the default critic's IQL update: alone (jit per step) and inside the chunk scan."""
import time, sys
import jax, jax.numpy as jnp, numpy as np
from dmc_jax.train import schema, builders, pretrain
from dmc_jax.data.episodes import Transitions

OBS, ACT, N = int(sys.argv[1]) if len(sys.argv) > 1 else 2, 1, 32000
overrides = dict(a.split("=") for a in sys.argv[2:])
cfg = schema.base_config()
for k, v in overrides.items():
  grp, key = k.split(".")
  cfg[grp][key] = type(cfg[grp][key])(eval(v)) if not isinstance(cfg[grp][key], tuple) else tuple(eval(v))
critic = builders.make_critic(cfg)
rng = np.random.default_rng(0)
f = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)
data = Transitions(obs=f(N, OBS), actions=f(N, ACT), rewards=f(N), next_obs=f(N, OBS),
                   dones=jnp.zeros(N)) if "dones" in Transitions._fields else None
state = critic.init(jax.random.PRNGKey(0), OBS, ACT)
run = pretrain.make_critic_chunk(critic, jax.random.PRNGKey(1), 256)
n = 200
t = time.perf_counter(); state, m = run(state, 0, n, data); jax.block_until_ready(m); c = time.perf_counter() - t
ts = []
for r in range(3):
  t = time.perf_counter(); state, m = run(state, (r + 1) * n, n, data); jax.block_until_ready(m)
  ts.append(time.perf_counter() - t)
print(f"{overrides} compile+first {c:.2f}s  per step in chunk {1e3*min(ts)/n:.3f} ms  q_loss {float(m['q_loss'][-1]):.5f}")
