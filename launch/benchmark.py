r"""Benchmark of the diffusion core: train-step and sampling times, as JSON and a table.

Cases follow the foundation issue and ``shared/PERF_TARGETS.md`` (CleanDiffuser's
architectures). Each figure is the median of ``--repeats`` timed calls after one warm-up;
compile time is reported separately. ``peak_frac`` is achieved FLOP/s (XLA's cost analysis)
divided by a float32 1024x1024 matmul measured in the same process.

  python -m launch.benchmark                      # everything (~5 min on 2 CPU cores)
  python -m launch.benchmark --cases=mlp --repeats=3 --json=/tmp/bench.json
  python -m launch.benchmark --cases=align --repeats=2   # alignment updates/s per aligner
  python -m launch.benchmark --cases=eval,memory          # jitted vs Python-loop evaluation;
                                                          # Q-gradient step memory vs K and T
  python -m launch.benchmark --cases=e2e --repeats=1      # wall-clock of whole jobs (slow)
  XLA_FLAGS=--xla_force_host_platform_device_count=4 python -m launch.benchmark --cases=mesh
      # critic / DMC / alignment updates/s on 1, 2, 4 devices (mesh; align shard_map)

The ``align`` case times one compiled alignment chunk (``align.updates_per_chunk`` updates
as one ``lax.scan``, as the job runs them) of each aligner on the Nav1D models with the
default config's sizes; ``time_s`` is per update (``updates_per_s`` = 1 / time_s).

``eval`` times a whole Nav1D evaluation (64 episode seeds x 32 steps, DP with 16 candidates
and IDQL argmax, and with 1, the env in JAX) compiled as one program, against the same model and env
stepped from a Python loop (the policy jitted and called once per step, the 64 envs stepped
one by one, as a gymnasium vector env does); both use the same keys, and the returns must
agree. ``memory`` compiles one Q-gradient alignment update (DP, the default sizes) for
sampling chains of T steps with gradients through the last K, and reports XLA's temporary
buffer size (``memory_analysis``; no timing). ``e2e`` runs whole jobs (``--e2e_configs``)
in a subprocess with a cold compilation cache and reports their wall-clock and phases.
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
flags.DEFINE_list("align_stages", ["rl", "dpo", "sft"],
                  "align case: aligners timed; `rl` uses the model's default RL method, "
                  "`rl:METHOD` (ppo, reinforce, qgrad) a given one.")
flags.DEFINE_integer("align_chunk", 5, "align case: updates per compiled chunk (timed).")
flags.DEFINE_list("e2e_configs", ["configs/default.py", "configs/nav1d_diffuser.py:full"],
                  "e2e case: configs of the whole jobs timed (launch.train, cold cache).")
flags.DEFINE_list("memory_steps", ["10", "40"], "memory case: chain lengths T.")
flags.DEFINE_list("memory_k", ["1", "4", "all"], "memory case: gradient steps K (all = K = T, "
                  "through the whole chain; it is also compiled without rematerialisation).")

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
# The chunked train steps (`train_chunk`) are the same step, against the same reference.
REFERENCE.update({k.replace("/train/", "/train_chunk/"): v for k, v in REFERENCE.items()
                  if "/train/" in k})


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


TRAIN_CHUNK = 4  # steps per scanned chunk in the `train_chunk` cases


def _train_case(net, x, cond, sched, repeats, n=TRAIN_CHUNK):
  """``(params, fn, alone, chunk)``: the train step jitted alone, and ``n`` of them in one
  ``lax.scan`` as the pretraining and alignment loops run them (figures per step; XLA:CPU
  compiles some ops differently inside a loop body: BUILD_NOTES, issue #15, "Convolutions
  inside loops")."""
  params = net.init(jax.random.key(0), x, jnp.zeros(x.shape[:1]), cond)["params"]
  fn = networks.make_denoise_fn(net)
  loss_fn = lambda p, k, b: losses.diffusion_loss(p, k, b[0], b[1], denoise_fn=fn, sched=sched)
  step = step_lib.make_train_step(loss_fn)
  # A copy: the train state is donated, and the sampling cases reuse `params`.
  new_state = lambda: step_lib.create_train_state(jax.tree.map(jnp.copy, params),
                                                  optax.adam(1e-4))
  # The whole new state is returned (and donated): timing only the loss would let XLA drop
  # the backward pass and the update.
  alone = time_fn(step, (new_state(), jax.random.key(1), (x, cond)), repeats, donate=(0,))

  def chunk(state, key, batch):
    def body(st, i):
      return step(st, jax.random.fold_in(key, i), batch)[0], None
    return jax.lax.scan(body, state, jnp.arange(n))[0], None  # time_fn feeds out[0] back
  compile_s, sec, flops = time_fn(chunk, (new_state(), jax.random.key(1), (x, cond)), repeats,
                                  donate=(0,))
  return params, fn, alone, (compile_s, sec / n, flops)  # cost analysis: a scan body once


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
    params, fn, res[f"unet/train/b{b}"], res[f"unet/train_chunk/b{b}"] = _train_case(
        net, x, None, sched, repeats)
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
  params, fn, alone, chunk = _train_case(net, x, cond, sched, repeats)
  res = {"dit/train/b256": alone, "dit/train_chunk/b256": chunk}
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
  params, fn, alone, chunk = _train_case(net, x, cond, sched, repeats)
  res = {"mlp/train/b256": alone, "mlp/train_chunk/b256": chunk}
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


def _nav1d_critic(c):
  """``(q_fn, v_fn, (q_params, v_params))``: the config's IQL critic, randomly initialised."""
  from dmc_jax.envs import nav1d
  from dmc_jax.train import builders
  cr = builders.make_critic(c)
  q_mod, v_mod, q_fn, v_fn = cr.q_module, cr.v_module, cr.q_fn, cr.v_fn
  o, a = jnp.zeros((1, nav1d.OBS_DIM)), jnp.zeros((1, nav1d.ACT_DIM))
  return q_fn, v_fn, (q_mod.init(jax.random.key(1), o, a)["params"],
                      v_mod.init(jax.random.key(2), o)["params"])


def _identity_norm(dim: int):
  """A normaliser that leaves ``dim`` features as they are (the benchmarks' random data is
  already in model units)."""
  from dmc_jax.data import episodes
  return episodes.Normalizer(jnp.zeros(dim), jnp.ones(dim))


def parse_align_stage(stage: str) -> tuple:
  """``--align_stages`` entry -> ``(aligner, rl method or "")``: ``rl`` (the model's default
  method), ``rl:ppo`` / ``rl:reinforce`` / ``rl:qgrad``, ``dpo``, ``sft``."""
  name, _, method = stage.partition(":")
  if name not in ("rl", "dpo", "sft") or (method and (
      name != "rl" or method not in ("ppo", "reinforce", "qgrad"))):
    raise ValueError(f"--align_stages: unknown aligner {stage!r} (rl, rl:ppo, rl:reinforce, "
                     "rl:qgrad, dpo, sft)")
  return name, method


def run_align(repeats):
  """Seconds per alignment update (one compiled chunk of ``--align_chunk`` updates, timed
  whole) for every aligner in ``--align_stages`` and model in ``--align_models``."""
  from configs import nav1d as nav1d_config
  from dmc_jax.envs import nav1d
  from dmc_jax.train import align as align_lib, builders, sharding
  obs_dim, act_dim = nav1d.OBS_DIM, nav1d.ACT_DIM
  res, n_params = {}, 0
  n = FLAGS.align_chunk
  for model in FLAGS.align_models:
    base = nav1d_config.get_config(f"{model},full")
    base.diffusion.clip_x0 = 1.0  # the job resolves the auto clip from the data; none here
    # The network, its parameters and the critic do not depend on the aligner.
    dmc = builders.make_dmc(base, obs_dim, act_dim)
    params = dmc.init(jax.random.key(0))
    n_params = max(n_params, networks.param_count(params))
    q_fn, v_fn, critic = _nav1d_critic(base)
    shape = (base.align.batch_size, dmc.history, obs_dim)
    batch_fn = lambda u, aux, shape=shape: {"hist": aux * jax.random.uniform(
        jax.random.fold_in(jax.random.key(5), u), shape, minval=-1.0, maxval=1.0)}
    for stage in FLAGS.align_stages:
      name, method = parse_align_stage(stage)
      c = base.copy_and_resolve_references()
      if method:  # the deployed sampler follows the RL method (PPO deploys the noisy chain)
        c.align.rl.method = method
      deployed = builders.deployed_dmc(c, dmc)
      # Identity normalisers: the planners' dynamics term reads the plan in env units.
      reward = align_lib.make_reward_fn(c, deployed, q_fn, v_fn, _identity_norm(obs_dim),
                                        _identity_norm(act_dim))
      aligner, _ = align_lib.build_aligner(c, name, deployed, reward, 0, None)
      chunk, _ = sharding.parallelize_chunk(
          lambda ax, c=c, name=name, deployed=deployed, reward=reward:
          align_lib.build_aligner(c, name, deployed, reward, 0, ax)[0].update,
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
      label = name if name != "rl" else f"rl:{c.align.rl.method}"
      res[f"align/{model}/{label}"] = (compile_s - statistics.median(times) * n,
                                       statistics.median(times), 0.0)
  return n_params, res


def _nav1d_dp(num_candidates=16):
  """A DP (default Nav1D sizes, random weights) with its critic and IDQL-argmax policy."""
  from configs import nav1d as nav1d_config
  from dmc_jax.envs import nav1d
  from dmc_jax.models import policy as policy_lib
  from dmc_jax.train import builders
  c = nav1d_config.get_config("dp,full")
  dmc = builders.make_dmc(c, nav1d.OBS_DIM, nav1d.ACT_DIM)
  q_fn, v_fn, critic = _nav1d_critic(c)
  act = policy_lib.make_policy(dmc, obs_norm=_identity_norm(nav1d.OBS_DIM),
                               act_norm=_identity_norm(nav1d.ACT_DIM), selection="argmax",
                               num_candidates=num_candidates, q_fn=q_fn, v_fn=v_fn,
                               expectile=c.critic.expectile)
  return c, dmc, dmc.init(jax.random.key(0)), critic, act


def run_eval(repeats, num_episodes=64):
  """A whole Nav1D evaluation as one compiled program vs a Python loop over env steps, with
  16 candidates (argmax) and with 1 (the sampler alone)."""
  res = {}
  for n in (16, 1):
    n_params, r = _eval_case(repeats, num_episodes, n)
    res.update(r)
  return n_params, res


def _eval_case(repeats, num_episodes, num_candidates):
  from dmc_jax.envs import nav1d
  from dmc_jax.eval import rollout as rollout_lib
  c, dmc, params, critic, act = _nav1d_dp(num_candidates)
  env = nav1d.make_params(c.env.task_seed, c.env.horizon, c.env.step_size)
  T, K = c.env.horizon, dmc.history
  run = rollout_lib.make_rollout(nav1d.reset, nav1d.step, env, max_steps=T, act_fn=act,
                                 history=K)
  key = jax.random.key(7)
  compile_s, sec, _ = time_fn(lambda p, q, k: run(p, q, k, num_episodes)["returns"],
                              (params, critic, key), repeats)
  jit_returns = np.asarray(jax.jit(run, static_argnums=3)(params, critic, key,
                                                           num_episodes)["returns"])

  act_jit = jax.jit(act)
  reset_jit = jax.jit(lambda k: jax.vmap(nav1d.reset, (0, None))(k, env))
  step_jit = jax.jit(lambda k, s, a: nav1d.step(k, s, a, env))

  def python_loop():
    """The same keys as ``make_rollout`` (so the same episodes), one env at a time."""
    k_reset, k_run = jax.random.split(key)
    states, obs = reset_jit(jax.random.split(k_reset, num_episodes))
    states = [jax.tree.map(lambda x, i=i: x[i], states) for i in range(num_episodes)]
    hist = np.repeat(np.asarray(obs)[:, None], K, axis=1)
    alive, ret = np.ones(num_episodes, bool), np.zeros(num_episodes)
    for t, k_t in enumerate(jax.random.split(k_run, T)):
      k_act, k_env = jax.random.split(k_t)
      a = np.asarray(act_jit(params, critic, k_act, jnp.asarray(hist))[0][:, 0])
      new_obs = np.empty_like(hist[:, -1])
      for i, k_i in enumerate(jax.random.split(k_env, num_episodes)):
        states[i], o, r, d = step_jit(k_i, states[i], a[i])
        new_obs[i] = np.asarray(o)
        ret[i] += float(r) * alive[i]
        alive[i] &= not bool(d)
      hist = np.concatenate([hist[:, 1:], new_obs[:, None]], 1)
    return ret

  loop_returns = python_loop()  # compiles the policy and the env step
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    python_loop()
    times.append(time.perf_counter() - t0)
  loop_s = statistics.median(times)
  diff = float(np.max(np.abs(loop_returns - jit_returns)))
  if diff > 1e-3:
    raise AssertionError(f"eval case: the Python loop's returns differ from the compiled "
                         f"roll-out's by {diff}: not the same evaluation")
  name = f"eval/nav1d/{num_episodes}x{T}x{num_candidates}"
  return networks.param_count(params), {f"{name}/jit": (compile_s, sec, 0.0),
                                        f"{name}/python_loop": (0.0, loop_s, 0.0)}


def run_memory(repeats):
  """XLA's temporary memory of one Q-gradient update as the chain length T and the
  gradient steps K grow (compiled only; ``repeats`` unused)."""
  del repeats
  from configs import nav1d as nav1d_config
  from dmc_jax.envs import nav1d
  from dmc_jax.train import align as align_lib, builders
  res, n_params = {}, 0
  grid = [(int(t), k, remat) for t in FLAGS.memory_steps for k in FLAGS.memory_k
          for remat in ((True, False) if k == "all" else (True,))]
  for T, k_str, remat in grid:
    K = T if k_str == "all" else int(k_str)
    if K > T:
      continue
    c = nav1d_config.get_config("dp,full")
    c.diffusion.train_steps = max(c.diffusion.train_steps, T)
    c.diffusion.sample_steps = T
    c.align.rl.method = "qgrad"
    c.align.rl.num_grad_steps = (K,)
    dmc = builders.make_dmc(c, nav1d.OBS_DIM, nav1d.ACT_DIM)
    gen = dmc.sampling.gen
    dmc = dmc._replace(sampling=dmc.sampling._replace(gen=gen._replace(
        sample=gen.sample.replace(remat=remat))))
    q_fn, v_fn, critic = _nav1d_critic(c)
    params = dmc.init(jax.random.key(0))
    n_params = max(n_params, networks.param_count(params))
    reward = align_lib.make_reward_fn(c, dmc, q_fn, v_fn)
    aligner, _ = align_lib.build_aligner(c, "rl", dmc, reward, 0, None)
    state = aligner.init(jax.random.key(3), params)
    batch = {"hist": jnp.zeros((c.align.batch_size, dmc.history, nav1d.OBS_DIM))}
    t0 = time.perf_counter()
    compiled = jax.jit(aligner.update).lower(state, params, critic, batch,
                                             jax.random.key(4)).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    res[f"memory/qgrad/T{T}/K{k_str}" + ("" if remat else "/no_remat")] = (compile_s, 0.0, 0.0,
                                          {"temp_mib": mem.temp_size_in_bytes / 2 ** 20,
                                           "args_mib": mem.argument_size_in_bytes / 2 ** 20})
  return n_params, res


def run_e2e(repeats):
  """Whole jobs (``--e2e_configs``) in a subprocess, cold compilation cache."""
  del repeats
  import os
  import subprocess
  import sys
  import tempfile
  res = {}
  for cfg in FLAGS.e2e_configs:
    with tempfile.TemporaryDirectory(prefix="dmc_jax_e2e_") as tmp:
      env = dict(os.environ, MINARI_DATASETS_PATH=os.path.join(tmp, "minari"))
      cmd = [sys.executable, "-m", "launch.train", f"--config={cfg}",
             f"--workdir={os.path.join(tmp, 'work')}", "--compilation_cache=off"]
      t0 = time.perf_counter()
      subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
      wall = time.perf_counter() - t0
      with open(os.path.join(tmp, "work", "results.json")) as f:
        timing = json.load(f).get("timing_s", {})
    res[f"e2e/{cfg}"] = (0.0, wall, 0.0, {f"{k}_s": v for k, v in timing.items()})
  return 0, res


def run_mesh(repeats):
  """Updates per second of one critic chunk (IQL, default sizes), one DMC chunk (the
  default Nav1D DP) and one alignment chunk (PPO on that DP, ``shard_map``) on a mesh over the first 1, 2, 4, ... devices (``train.parallel =
  mesh``: each batch split, parameters replicated). Simulated CPU devices share the host's
  cores, so there the figure shows the path's overhead, not a speed-up; run it on a GPU/TPU
  host (or with ``XLA_FLAGS=--xla_force_host_platform_device_count=N``) for the scaling."""
  from jax.sharding import Mesh
  from configs import nav1d as nav1d_config
  from dmc_jax.data import episodes as ep_lib
  from dmc_jax.envs import nav1d
  from dmc_jax.train import builders, pretrain, sharding
  from dmc_jax.train import step as step_lib
  c = nav1d_config.get_config("dp,full")
  c.diffusion.clip_x0 = 1.0
  rng = np.random.default_rng(0)
  m, o, a = 32000, nav1d.OBS_DIM, nav1d.ACT_DIM
  trans = jax.tree.map(jnp.asarray, ep_lib.Transitions(
      rng.normal(size=(m, o)).astype(np.float32), rng.uniform(-1, 1, (m, a)).astype(np.float32),
      rng.normal(size=(m,)).astype(np.float32), rng.normal(size=(m, o)).astype(np.float32),
      np.zeros((m,), np.float32)))
  eps = ep_lib.Episodes(rng.normal(size=(200, 33, o)).astype(np.float32),
                        rng.uniform(-1, 1, (200, 32, a)).astype(np.float32),
                        np.zeros((200, 32), np.float32), np.zeros((200, 32), bool),
                        np.full((200,), 32, np.int32))
  critic = builders.make_critic(c)
  dmc = builders.make_dmc(c, o, a)
  norm_o = ep_lib.fit_normalizer(eps.observations.reshape(-1, o))
  norm_a = ep_lib.fit_normalizer(eps.actions.reshape(-1, a))
  seg = ep_lib.make_segment_data(eps, dmc.horizon, norm_o, norm_a)
  step_fn = step_lib.make_train_step(dmc.loss, c.train.ema_decay)
  counts = [k for k in (1, 2, 4, 8, 16, 32, 64) if k <= jax.device_count()]
  res, n = {}, 50
  for k in counts:
    mesh = None if k == 1 else Mesh(np.asarray(jax.devices()[:k]), (sharding.DATA,))
    for name, make, init, data in (
        ("critic", lambda: pretrain.make_critic_chunk(critic, jax.random.key(1),
                                                      c.critic.batch_size, mesh),
         lambda: critic.init(jax.random.key(0), o, a), trans),
        ("dmc", lambda: pretrain.make_dmc_chunk(dmc, step_fn, jax.random.key(1),
                                                c.train.batch_size, mesh),
         lambda: step_lib.create_train_state(dmc.init(jax.random.key(0)), optax.adam(1e-3)),
         seg)):
      run, state = make(), init()
      t0 = time.perf_counter()
      state, _ = _block(run(state, 0, n, data))
      compile_s = time.perf_counter() - t0
      times = []
      for r in range(repeats):
        t0 = time.perf_counter()
        state, _ = _block(run(state, (r + 1) * n, n, data))
        times.append((time.perf_counter() - t0) / n)
      sec = statistics.median(times)
      res[f"mesh/{name}/{k}dev"] = (max(compile_s - sec * n, 0.0), sec, 0.0,
                                    {"updates_per_s": 1.0 / sec})
    res[f"mesh/align/{k}dev"] = _mesh_align_case(repeats, k, FLAGS.align_chunk)
  for name in ("critic", "dmc", "align"):  # throughput against one device
    one = res[f"mesh/{name}/1dev"][1]
    for k in counts:
      res[f"mesh/{name}/{k}dev"][3]["x_one_device"] = one / res[f"mesh/{name}/{k}dev"][1]
  return 0, res


def _mesh_align_case(repeats, k, n):
  """One alignment chunk (PPO on the default Nav1D DP, ``n`` updates) over the first ``k``
  devices: ``align.parallel = shard_map`` (each device its share of ``align.batch_size``,
  gradients averaged), ``none`` for one device."""
  from configs import nav1d as nav1d_config
  from dmc_jax.envs import nav1d
  from dmc_jax.train import align as align_lib, builders, sharding
  c = nav1d_config.get_config("dp,full")
  c.diffusion.clip_x0 = 1.0
  dmc = builders.make_dmc(c, nav1d.OBS_DIM, nav1d.ACT_DIM)
  params = dmc.init(jax.random.key(0))
  q_fn, v_fn, critic = _nav1d_critic(c)
  deployed = builders.deployed_dmc(c, dmc)
  reward = align_lib.make_reward_fn(c, deployed, q_fn, v_fn)
  shape = (c.align.batch_size, dmc.history, nav1d.OBS_DIM)
  batch_fn = lambda u, aux: {"hist": aux * jax.random.uniform(
      jax.random.fold_in(jax.random.key(5), u), shape, minval=-1.0, maxval=1.0)}
  aligner, _ = align_lib.build_aligner(c, "rl", deployed, reward, 0, None)
  chunk, _ = sharding.parallelize_chunk(
      lambda ax: align_lib.build_aligner(c, "rl", deployed, reward, 0, ax)[0].update,
      "none" if k == 1 else "shard_map", batch_fn, n, devices=jax.devices()[:k])
  state = aligner.init(jax.random.key(3), params)
  args = [params, critic, jax.random.key(4), np.int32(0), np.float32(1.0)]
  t0 = time.perf_counter()
  state, _ = _block(chunk(state, *args))
  compile_s = time.perf_counter() - t0
  times = []
  for r in range(repeats):
    t0 = time.perf_counter()
    state, _ = _block(chunk(state, *args[:3], np.int32((r + 1) * n), args[4]))
    times.append((time.perf_counter() - t0) / n)
  sec = statistics.median(times)
  return (max(compile_s - sec * n, 0.0), sec, 0.0, {"updates_per_s": 1.0 / sec})


RUNNERS = {"unet": run_unet, "dit": run_dit, "mlp": run_mlp, "decision": run_decision,
           "align": run_align, "eval": run_eval, "memory": run_memory, "e2e": run_e2e,
           "mesh": run_mesh}


def main(argv):
  del argv
  unknown = set(FLAGS.cases) - set(RUNNERS)
  if unknown:
    raise app.UsageError(f"--cases: unknown {sorted(unknown)}; choose from {sorted(RUNNERS)}")
  try:
    for stage in FLAGS.align_stages:
      parse_align_stage(stage)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  peak = matmul_peak()
  results = {"device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
             "jax": jax.__version__, "matmul_peak_gflops": peak / 1e9, "params": {}, "cases": {}}
  for name in FLAGS.cases:
    n_params, res = RUNNERS[name](FLAGS.repeats)
    results["params"][name] = n_params
    for case, (compile_s, sec, flops, *extra) in res.items():
      row = {"compile_s": compile_s, "time_s": sec, "gflops": flops / 1e9,
             "peak_frac": (flops / sec) / peak if flops else None}
      row.update(extra[0] if extra else {})
      if case.startswith("align/"):
        row["updates_per_s"] = 1.0 / sec
      if case.startswith("e2e/"):  # issue #15's goal: each whole job in <= 5 min on 2 cores
        row.update(goal_s=300.0, meets_goal=bool(sec <= 300.0))
      if case in REFERENCE:
        ref, target = REFERENCE[case]
        row.update(reference_s=ref, speedup=ref / sec, target_speedup=target,
                   meets_target=bool(ref / sec >= target))
      results["cases"][case] = row
    for case, row in results["cases"].items():  # the compiled evaluation vs the Python loop
      loop = results["cases"].get(case.replace("/jit", "/python_loop"))
      if case.endswith("/jit") and loop:
        row.update(reference_s=loop["time_s"], speedup=loop["time_s"] / row["time_s"],
                   target_speedup=10.0, meets_target=bool(loop["time_s"] / row["time_s"] >= 10))
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
    ups += f"  {r['x_one_device']:.2f}x one device" if "x_one_device" in r else ""
    ups += "".join(f"  {k}={v:.1f}" for k, v in r.items() if k.endswith(("_mib", "_s"))
                   and k not in ("compile_s", "time_s", "reference_s", "updates_per_s"))
    print(f"{case:28s} {r['compile_s']:9.2f} {1e3 * r['time_s']:9.2f} {frac:>6s} {ref:>8s} "
          f"{sp:>8s} {tg:>6s}{ups}")
  print(json.dumps(results))
  if FLAGS.json:
    with open(FLAGS.json, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  app.run(main)
