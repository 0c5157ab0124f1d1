import sys, glob, gzip, json, collections, re, shutil, time
import jax, jax.numpy as jnp, optax
from dmc_jax import networks
from dmc_jax.diffusion import schedules, losses
from dmc_jax.train import step as step_lib
B = int(sys.argv[1]); arch = sys.argv[2] if len(sys.argv) > 2 else "unet"
if arch == "unet":
  net = networks.TemporalUnet(dim=32, dim_mults=(1, 2, 4, 8), kernel_size=5); x = jnp.ones((B, 32, 23)); cond = None
else:
  net = networks.DiT1D(d_model=320, num_heads=10, depth=2); x, cond = jnp.ones((B, 8, 6)), jnp.ones((B, 17))
sched = schedules.make_cosine_schedule(20)
params = net.init(jax.random.key(0), x, jnp.zeros(x.shape[:1]), cond)["params"]
fn = networks.make_denoise_fn(net)
loss_fn = lambda p, k, b: losses.diffusion_loss(p, k, b[0], b[1], denoise_fn=fn, sched=sched)
step = step_lib.make_train_step(loss_fn)
state = step_lib.create_train_state(params, optax.adam(1e-4))
N = 4
@jax.jit
def chunk(state, key):
  def body(st, i):
    return step(st, jax.random.fold_in(key, i), (x, cond))[0], None
  return jax.lax.scan(body, state, jnp.arange(N))[0]
state = chunk(state, jax.random.key(1)); jax.block_until_ready(state)
t = time.perf_counter(); state = chunk(state, jax.random.key(1)); jax.block_until_ready(state); print("step ms", 1e3 * (time.perf_counter() - t) / N)
d = f"trace_{arch}{B}"  # relative to the working directory
shutil.rmtree(d, ignore_errors=True)
with jax.profiler.trace(d, create_perfetto_trace=True):
  state = chunk(state, jax.random.key(1)); jax.block_until_ready(state)
hlo = chunk.lower(state, jax.random.key(1)).compile().as_text()
open(d + "/hlo.txt", "w").write(hlo)
meta = {m.group(1): m.group(2) for m in re.finditer(r"^\s*%(\S+) = [^\n]*?metadata=\{op_name=\"([^\"]*)\"", hlo, re.M)}
shape = {m.group(1): m.group(2) for m in re.finditer(r"^\s*%(\S+) = (\S+)", hlo, re.M)}
fn_ = sorted(glob.glob(d + "/**/*perfetto_trace.json.gz", recursive=True))[-1]
ev = json.load(gzip.open(fn_)); ev = ev["traceEvents"] if isinstance(ev, dict) else ev
by_op, by_kind, total = collections.Counter(), collections.Counter(), 0
for e in ev:
  if e.get("ph") != "X": continue
  n = e["name"]
  if n.startswith("$") or "Thunk" in n or "Slinky" in n or "Pjit" in n: continue
  op = re.sub(r"jit\(chunk\)/while/body/(closed_call/)?", "", meta.get(n, "?" + n))
  leaf = op.split("/")[-1]
  kind = ("bwd " if "transpose(" in op else "fwd ") + leaf
  by_kind[kind] += e["dur"]; by_op[n + " " + shape.get(n, "") + " " + op[-90:]] += e["dur"]; total += e["dur"]
print(f"sum kernels {total/1e3/N:.1f} ms/step")
for k, v in by_kind.most_common(25): print(f"{v/1e3/N:8.2f} {k}")
print("--- top ops")
for k, v in by_op.most_common(30): print(f"{v/1e3/N:8.2f} {k}")
