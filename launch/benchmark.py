r"""Benchmark of the diffusion core: train-step and sampling times, as JSON and a table.

Cases follow the foundation issue and ``shared/PERF_TARGETS.md`` (CleanDiffuser's
architectures). Each figure is the median of ``--repeats`` timed calls after one warm-up;
compile time is reported separately. ``peak_frac`` is achieved FLOP/s (XLA's cost analysis)
divided by a float32 1024x1024 matmul measured in the same process.

  python -m launch.benchmark                      # everything (~5 min on 2 CPU cores)
  python -m launch.benchmark --cases=mlp --repeats=3 --json=/tmp/bench.json
  python -m launch.benchmark --cases=align --repeats=2   # alignment updates/s per aligner

The ``align`` case times one compiled alignment chunk (``align.updates_per_chunk`` updates
as one ``lax.scan``, as the job runs them) of each aligner on the Nav1D models with the
default config's sizes; ``time_s`` is per update (``updates_per_s`` = 1 / time_s).
"""
import functools
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from dmc_jax import networks
from dmc_jax.diffusion import ddim, ddpm, losses, schedules
from dmc_jax.train import step as step_lib

FLAGS = flags.FLAGS
flags.DEFINE_list("cases", ["unet", "dit", "mlp", "decision"], "Which cases to run.")
flags.DEFINE_integer("repeats", 5, "Timed calls per figure (median reported).")
flags.DEFINE_string("json", None, "Also write the results to this JSON file.")
flags.DEFINE_list("align_models", ["dp", "diffuser"], "align case: Nav1D models (default "
                  "config sizes) whose aligners are timed.")
flags.DEFINE_list("align_stages", ["rl", "dpo", "sft"], "align case: aligners timed.")
flags.DEFINE_integer("align_chunk", 5, "align case: updates per compiled chunk (timed).")

# CleanDiffuser reference on a 2-core CPU (torch 2.13, 2 threads), from PERF_TARGETS.md:
# (reference seconds [midpoint of the range], target speed-up).
REFERENCE = {
    "unet/train/b64": (0.101, 1.3), "unet/train/b256": (0.2665, 1.3),
    "unet/sample/64x20/ddim": (0.54, 1.3), "unet/sample/64x20/ddpm": (0.54, 1.3),
    "unet/sample/16x20/ddim": (0.37, 2.0),
    "dit/train/b256": (0.256, 1.3),
    "dit/sample/256x5": (0.41, 1.3), "dit/sample/256x10": (0.86, 1.3),
    "dit/sample/256x20": (1.63, 1.3),
    "mlp/train/b256": (0.031, 1.3),
    "mlp/sample/256x5": (0.041, 1.3), "mlp/sample/256x10": (0.086, 1.3),
    "mlp/sample/256x20": (0.170, 1.3), "mlp/sample/1x20": (0.0111, 5.0),
    "mlp/sample/16x20": (0.0258, 2.0),
}


def _block(x):
  return jax.block_until_ready(x)


def compiled_flops(compiled) -> float:
  """FLOPs from XLA's cost analysis (a dict, or a list of one dict, by jax version)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", 0.0))


def time_fn(fn, args, repeats, donate=()):
  """Returns (compile_s, median_s, flops) of ``jax.jit``-ed ``fn(*args)``.

  With ``donate``, the output replaces the donated first argument between calls (a train
  step's new state feeds the next call), so nothing can be dead-code-eliminated.
  """
  t0 = time.perf_counter()
  compiled = jax.jit(fn, donate_argnums=donate).lower(*args).compile()
  compile_s = time.perf_counter() - t0
  flops = compiled_flops(compiled)
  def call(args):
    out = _block(compiled(*args))
    return (out[0],) + tuple(args[1:]) if donate else args
  args = call(args)
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    args = call(args)
    times.append(time.perf_counter() - t0)
  return compile_s, statistics.median(times), flops


def matmul_peak(repeats=10):
  a = jnp.ones((1024, 1024), jnp.float32)
  _, sec, _ = time_fn(lambda x, y: x @ y, (a, a), repeats)
  return 2 * 1024 ** 3 / sec


def _train_case(net, x, cond, sched, repeats):
  params = net.init(jax.random.key(0), x, jnp.zeros(x.shape[:1]), cond)["params"]
  fn = networks.make_denoise_fn(net)
  loss_fn = lambda p, k, b: losses.diffusion_loss(p, k, b[0], b[1], denoise_fn=fn, sched=sched)
  step = step_lib.make_train_step(loss_fn)
  # A copy: the train state is donated, and the sampling cases reuse `params`.
  state = step_lib.create_train_state(jax.tree.map(jnp.copy, params), optax.adam(1e-4))
  # The whole new state is returned (and donated): timing only the loss would let XLA drop
  # the backward pass and the update.
  out = time_fn(step, (state, jax.random.key(1), (x, cond)), repeats, donate=(0,))
  return params, fn, out


def forward_flops(fn, params, x, cond):
  """FLOPs of one denoiser call. XLA's cost analysis counts a ``scan`` body once, so a
  sampler's FLOPs are taken as ``steps * forward_flops``."""
  t = jnp.full(x.shape[:1], 0.5)
  return compiled_flops(jax.jit(fn).lower(params, x, t, cond).compile())


def _sample_case(sampler, fn, params, x_T, cond, steps, repeats):
  compile_s, sec, _ = time_fn(lambda p, k, x, c: sampler(p, k, x, c).x_0,
                              (params, jax.random.key(2), x_T, cond), repeats)
  return compile_s, sec, steps * forward_flops(fn, params, x_T, cond)


def run_unet(repeats):
  net = networks.TemporalUnet(dim=32, dim_mults=(1, 2, 4, 8), kernel_size=5)
  sched = schedules.make_cosine_schedule(20)
  res = {}
  for b in (64, 256):
    x = jnp.ones((b, 32, 23))
    params, fn, out = _train_case(net, x, None, sched, repeats)
    res[f"unet/train/b{b}"] = out
  n_params = networks.param_count(params)
  for n, kind in ((64, "ddim"), (64, "ddpm"), (16, "ddim")):
    sampler = (ddim.make_ddim_sampler(fn, sched, 20) if kind == "ddim"
               else ddpm.make_ddpm_sampler(fn, sched))
    res[f"unet/sample/{n}x20/{kind}"] = _sample_case(sampler, fn, params,
                                                     jnp.ones((n, 32, 23)), None, 20, repeats)
  return n_params, res


def run_dit(repeats):
  net = networks.DiT1D(d_model=320, num_heads=10, depth=2)
  sched = schedules.make_cosine_schedule(20)
  x, cond = jnp.ones((256, 8, 6)), jnp.ones((256, 17))
  params, fn, out = _train_case(net, x, cond, sched, repeats)
  res = {"dit/train/b256": out}
  for s in (5, 10, 20):
    res[f"dit/sample/256x{s}"] = _sample_case(ddim.make_ddim_sampler(fn, sched, s), fn, params,
                                              x, cond, s, repeats)
  return networks.param_count(params), res


def _mlp():
  return networks.MLPDenoiser(hidden_dim=256, num_blocks=3, block_width=1024)


def run_mlp(repeats):
  net = _mlp()
  sched = schedules.make_cosine_schedule(20)
  x, cond = jnp.ones((256, 6)), jnp.ones((256, 17))
  params, fn, out = _train_case(net, x, cond, sched, repeats)
  res = {"mlp/train/b256": out}
  for n, s in ((256, 5), (256, 10), (256, 20), (1, 20), (16, 20)):
    res[f"mlp/sample/{n}x{s}"] = _sample_case(ddim.make_ddim_sampler(fn, sched, s), fn, params,
                                              jnp.ones((n, 6)), jnp.ones((n, 17)), s, repeats)
  return networks.param_count(params), res


def run_decision(repeats):
  """One control decision: 16 candidates x 20 DDIM steps, scored by a Q-MLP, argmax."""
  import flax.linen as nn

  class QNet(nn.Module):
    @nn.compact
    def __call__(self, obs, act):
      h = jnp.concatenate([obs, act], -1)
      for _ in range(2):
        h = nn.relu(nn.Dense(256)(h))
      return nn.Dense(1)(h)[..., 0]

  net, q = _mlp(), QNet()
  sched = schedules.make_cosine_schedule(20)
  params = net.init(jax.random.key(0), jnp.ones((1, 6)), jnp.zeros(1), jnp.ones((1, 17)))["params"]
  q_params = q.init(jax.random.key(1), jnp.ones((1, 17)), jnp.ones((1, 6)))["params"]
  sampler = ddim.make_ddim_sampler(networks.make_denoise_fn(net), sched, 20)

  def decide(params, q_params, key, obs):
    k_T, k_chain = jax.random.split(key)
    obs_n = jnp.broadcast_to(obs, (16, obs.shape[-1]))
    acts = sampler(params, k_chain, jax.random.normal(k_T, (16, 6)), obs_n).x_0
    return acts[jnp.argmax(q.apply({"params": q_params}, obs_n, acts))]

  out = time_fn(decide, (params, q_params, jax.random.key(3), jnp.ones((17,))), repeats)
  return networks.param_count(params), {"decision/16x20+Q": out}


def run_align(repeats):
  """Seconds per alignment update (one compiled chunk of ``--align_chunk`` updates, timed
  whole) for every aligner in ``--align_stages`` and model in ``--align_models``."""
  from configs import nav1d as nav1d_config
  from dmc_jax.envs import nav1d
  from dmc_jax.train import align as align_lib, builders, sharding
  obs_dim, act_dim = nav1d.OBS_DIM, nav1d.ACT_DIM
  res, n_params = {}, 0
  for model in FLAGS.align_models:
    c = nav1d_config.get_config(f"{model},full")
    c.diffusion.clip_x0 = 1.0  # the job resolves the auto clip from the data; none here
    dmc = builders.make_dmc(c, obs_dim, act_dim)
    params = dmc.init(jax.random.key(0))
    n_params = max(n_params, networks.param_count(params))
    crit = builders.make_critic(c)
    q_mod, v_mod, q_fn, v_fn = crit[:4]
    qp = q_mod.init(jax.random.key(1), jnp.zeros((1, obs_dim)), jnp.zeros((1, act_dim)))
    vp = v_mod.init(jax.random.key(2), jnp.zeros((1, obs_dim)))
    critic = (qp["params"], vp["params"])
    deployed = align_lib.deployed_dmc(c, dmc)
    reward = align_lib.make_reward_fn(c, deployed, q_fn, v_fn)
    shape = (c.align.batch_size, dmc.history, obs_dim)
    batch_fn = lambda u, aux, shape=shape: {"hist": aux * jax.random.uniform(
        jax.random.fold_in(jax.random.key(5), u), shape, minval=-1.0, maxval=1.0)}
    n = FLAGS.align_chunk
    for name in FLAGS.align_stages:
      aligner, _ = align_lib.build_aligner(c, name, deployed, reward, 0, None)
      chunk, _ = sharding.parallelize_chunk(
          lambda ax: align_lib.build_aligner(c, name, deployed, reward, 0, ax)[0].update,
          "none", batch_fn, n)
      state = aligner.init(jax.random.key(3), params)
      args = [params, critic, jax.random.key(4), np.int32(0), np.float32(1.0)]
      t0 = time.perf_counter()
      state, _ = _block(chunk(state, *args))  # the first call compiles
      compile_s = time.perf_counter() - t0
      times = []
      for r in range(repeats):
        t0 = time.perf_counter()
        state, _ = _block(chunk(state, *args[:3], np.int32((r + 1) * n), args[4]))
        times.append((time.perf_counter() - t0) / n)
      res[f"align/{model}/{name}"] = (compile_s - statistics.median(times) * n,
                                      statistics.median(times), 0.0)
  return n_params, res


RUNNERS = {"unet": run_unet, "dit": run_dit, "mlp": run_mlp, "decision": run_decision,
           "align": run_align}


def main(argv):
  del argv
  unknown = set(FLAGS.cases) - set(RUNNERS)
  if unknown:
    raise app.UsageError(f"--cases: unknown {sorted(unknown)}; choose from {sorted(RUNNERS)}")
  peak = matmul_peak()
  results = {"device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
             "jax": jax.__version__, "matmul_peak_gflops": peak / 1e9, "params": {}, "cases": {}}
  for name in FLAGS.cases:
    n_params, res = RUNNERS[name](FLAGS.repeats)
    results["params"][name] = n_params
    for case, (compile_s, sec, flops) in res.items():
      row = {"compile_s": compile_s, "time_s": sec, "gflops": flops / 1e9,
             "peak_frac": (flops / sec) / peak if flops else None}
      if case.startswith("align/"):
        row["updates_per_s"] = 1.0 / sec
      if case in REFERENCE:
        ref, target = REFERENCE[case]
        row.update(reference_s=ref, speedup=ref / sec, target_speedup=target,
                   meets_target=bool(ref / sec >= target))
      results["cases"][case] = row
  print(f"# matmul peak: {peak / 1e9:.1f} GFLOP/s  ({results['backend']}, jax {jax.__version__})")
  print("# params: " + ", ".join(f"{k}={v / 1e6:.2f}M" for k, v in results["params"].items()))
  print(f"{'case':28s} {'compile s':>9s} {'time ms':>9s} {'%peak':>6s} {'ref ms':>8s} "
        f"{'speedup':>8s} {'target':>6s}")
  for case, r in results["cases"].items():
    frac = f"{100 * r['peak_frac']:.0f}" if r["peak_frac"] else "-"
    ref = f"{1e3 * r['reference_s']:.1f}" if "reference_s" in r else "-"
    sp = f"{r['speedup']:.2f}x" if "speedup" in r else "-"
    tg = (f"{r['target_speedup']:.1f}x" + (" ok" if r["meets_target"] else " NO")
          if "target_speedup" in r else "-")
    ups = f"  ({r['updates_per_s']:.2f} updates/s)" if "updates_per_s" in r else ""
    print(f"{case:28s} {r['compile_s']:9.2f} {1e3 * r['time_s']:9.2f} {frac:>6s} {ref:>8s} "
          f"{sp:>8s} {tg:>6s}{ups}")
  print(json.dumps(results))
  if FLAGS.json:
    with open(FLAGS.json, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  app.run(main)
