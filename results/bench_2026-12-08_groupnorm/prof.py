import sys, glob, gzip, json, collections
import jax, jax.numpy as jnp, numpy as np
from dmc_jax.train import schema, builders, pretrain
from dmc_jax.data.episodes import Transitions
cfg = schema.base_config()
for k, v in (a.split("=") for a in sys.argv[1:]):
  g, kk = k.split("."); cfg[g][kk] = eval(v)
critic = builders.make_critic(cfg)
r = np.random.default_rng(0); f = lambda *s: jnp.asarray(r.standard_normal(s), jnp.float32)
N = 32000
data = Transitions(f(N, 2), f(N, 1), f(N), f(N, 2), jnp.zeros(N))
state = critic.init(jax.random.PRNGKey(0), 2, 1)
run = pretrain.make_critic_chunk(critic, jax.random.PRNGKey(1), 256)
state, m = run(state, 0, 50, data); jax.block_until_ready(m)
d = "trace"  # relative to the working directory
with jax.profiler.trace(d, create_perfetto_trace=True):
  state, m = run(state, 50, 50, data); jax.block_until_ready(m)
fn = sorted(glob.glob(d + "/**/*perfetto_trace.json.gz", recursive=True))[-1]
ev = json.load(gzip.open(fn))
ev = ev["traceEvents"] if isinstance(ev, dict) else ev
tot = collections.Counter(); cnt = collections.Counter()
for e in ev:
  if e.get("ph") == "X":
    tot[e["name"]] += e.get("dur", 0); cnt[e["name"]] += 1
for k, v in tot.most_common(40):
  print(f"{v/1e3/50:8.3f} ms/step  n={cnt[k]/50:5.1f}  {k[:100]}")
kern = {k: v for k, v in tot.items() if not k.startswith("$") and "Thunk" not in k and "Slinky" not in k}
print("sum of kernels ms/step", sum(kern.values()) / 1e3 / 50)
txt = run.lower(state, 0, 50, data).compile().as_text()
open("hlo.txt", "w").write(txt)
