"""The alignment phase (SHELL): the sequential scheduler over RL -> DPO -> SFT, checkpoints,
rollbacks, online fine-tuning and the cascade.

Runs after pretraining (``offline.train_and_evaluate``) when ``config.align.stages`` is not
empty. Writes ``align/`` metrics rows (``metrics.jsonl``), every scheduler decision to
``decisions.jsonl``, and saves ``checkpoints/align`` after every good chunk: LoRA adapters,
optimiser state (with its learning rate), the step, the critic (changed by online
fine-tuning), the online buffer, and in the metadata the scheduler's position and history.
A killed run resumes from there and redraws the same keys (``fold_in(key, update)``).
"""
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from dmc_jax.aligners import base as base_lib
from dmc_jax.aligners import cascade as cascade_lib
from dmc_jax.aligners import dpo, rewards, rl, sequential, sft
from dmc_jax.critics import iql
from dmc_jax.data import episodes as ep_lib
from dmc_jax.envs import nav1d
from dmc_jax.eval import rollout as rollout_lib
from dmc_jax.models import dmc as dmc_lib
from dmc_jax.models import policy as policy_lib
from dmc_jax.networks import lora as lora_lib
from dmc_jax.train import checkpoint
from dmc_jax.train import logging as logging_lib
from dmc_jax.train import sharding

STAGES = ("rl", "dpo", "sft")
DEPLOY_SAMPLERS = ("rl", "config")
CASCADE_MODES = cascade_lib.MODES


def scheduler_config(config) -> sequential.SchedulerConfig:
  a = config.align
  return sequential.SchedulerConfig(
      stages=tuple(a.stages), passes=a.passes, min_chunks=a.min_chunks,
      max_chunks=a.max_chunks, patience=a.patience, tol=a.tol, drop_tol=a.drop_tol,
      drop_min=a.drop_min,
      spike_factor=a.spike_factor, max_nonfinite=a.max_nonfinite, lr_decay=a.lr_decay,
      max_rollbacks=a.max_rollbacks)


def validate(config, num_sampling_steps: int) -> None:
  """The ``align`` group: one error naming the key, the value and what is allowed."""
  a = config.align

  def bad(key, value, allowed):
    raise ValueError(f"config.align.{key}={value!r} is invalid: {allowed}")

  for s in a.stages:
    if s not in STAGES:
      bad("stages", tuple(a.stages), f"a sequence of stage names from {STAGES}")
  if not a.stages:
    return
  for key in ("passes", "batch_size", "updates_per_chunk", "min_chunks", "max_chunks",
              "patience", "lora_rank", "track_contexts", "max_rollbacks"):
    if not (isinstance(a[key], int) and a[key] >= (0 if key == "max_rollbacks" else 1)):
      bad(key, a[key], "a positive integer")
  if a.max_chunks < a.min_chunks:
    bad("max_chunks", a.max_chunks, f"at least align.min_chunks={a.min_chunks}")
  for key in ("drop_tol", "drop_min"):
    if not a[key] >= 0:
      bad(key, a[key], "a non-negative number")
  if not 0 < a.lr_decay <= 1:
    bad("lr_decay", a.lr_decay, "a number in (0, 1]")
  if a.parallel not in sharding.PARALLEL:
    bad("parallel", a.parallel, f"one of {sharding.PARALLEL}")
  for s in a.eval_selections:
    if s not in policy_lib.sel.SELECTIONS:
      bad("eval_selections", tuple(a.eval_selections), f"selections from "
          f"{policy_lib.sel.SELECTIONS}")
  if a.curve_selection not in policy_lib.sel.SELECTIONS:
    bad("curve_selection", a.curve_selection, f"one of {policy_lib.sel.SELECTIONS}")
  if a.rl.method not in rl.METHODS:
    bad("rl.method", a.rl.method, f"one of {rl.METHODS}")
  if a.rl.credit not in rl.CREDITS:
    bad("rl.credit", a.rl.credit, f"one of {rl.CREDITS}")
  if a.rl.method == "qgrad" and a.rl.credit == "similarity":
    bad("rl.credit", a.rl.credit, "uniform or decreasing for qgrad (similarity needs the "
        "sampled chain, i.e. ppo/reinforce)")
  if a.rl.method != "qgrad" and "rl" in a.stages and config.diffusion.sampler == "ode":
    bad("rl.method", a.rl.method, "qgrad with the deterministic ode sampler (REINFORCE/PPO "
        "need Gaussian transitions)")
  for k in a.rl.num_grad_steps:
    if not (isinstance(k, int) and 0 <= k <= num_sampling_steps):
      bad("rl.num_grad_steps", tuple(a.rl.num_grad_steps),
          f"integers K in [0, {num_sampling_steps}] (the number of denoising steps)")
  if not a.rl.num_grad_steps:
    bad("rl.num_grad_steps", tuple(a.rl.num_grad_steps), "at least one K")
  if num_sampling_steps % a.rl.step_groups:
    bad("rl.step_groups", a.rl.step_groups,
        f"a divisor of the {num_sampling_steps} sampling steps")
  for key, v in (("rl.lr", a.rl.lr), ("dpo.lr", a.dpo.lr), ("sft.lr", a.sft.lr),
                 ("dpo.beta", a.dpo.beta), ("rl.clip_eps", a.rl.clip_eps),
                 ("cascade.lr", a.cascade.lr)):
    if not v > 0:
      bad(key, v, "a positive number")
  if a.env_guard < 0:
    bad("env_guard", a.env_guard, "a non-negative number (0 turns the guard off)")
  for key, v in (("rl.kl_coef", a.rl.kl_coef), ("rl.entropy_coef", a.rl.entropy_coef),
                 ("rl.reg_coef", a.rl.reg_coef)):
    if v < 0:
      bad(key, v, "a non-negative number")
  if a.dpo.num_samples < 2:
    bad("dpo.num_samples", a.dpo.num_samples, "at least 2 (a winner and a loser)")
  if a.dpo.weighting not in dpo.SNR_WEIGHTS:
    bad("dpo.weighting", a.dpo.weighting, f"one of {dpo.SNR_WEIGHTS}")
  for key, v in (("dpo.sample_from", a.dpo.sample_from), ("sft.sample_from",
                                                         a.sft.sample_from)):
    if v not in base_lib.SAMPLE_FROM:
      bad(key, v, f"one of {base_lib.SAMPLE_FROM}")
  if not 0 < a.sft.keep_frac <= 1:
    bad("sft.keep_frac", a.sft.keep_frac, "a number in (0, 1]")
  if not 0 <= a.sft.lik_quantile < 1:
    bad("sft.lik_quantile", a.sft.lik_quantile, "a number in [0, 1)")
  c = a.cascade
  if c.mode not in CASCADE_MODES:
    bad("cascade.mode", c.mode, f"one of {CASCADE_MODES}")
  if not 0 <= c.share_step < num_sampling_steps:
    bad("cascade.share_step", c.share_step, f"in [0, {num_sampling_steps - 1}]")
  if not (len(c.block) == 2 and 0 <= c.block[0] < c.block[1] <= 1):
    bad("cascade.block", tuple(c.block), "(start, stop) fractions with 0 <= start < stop <= 1")
  if c.passes not in (1, 2):
    bad("cascade.passes", c.passes, "1 or 2")
  if a.online.enabled and config.task != "nav1d":
    bad("online.enabled", True, "False for task=minari (online roll-outs need a pure env)")
  if a.reward not in rewards.KINDS:
    bad("reward", a.reward, f"one of {rewards.KINDS}")
  planner = config.model.kind != "diffusion_policy"
  if a.reward != "first" and not planner and config.model.execute_steps > 1:
    bad("reward", a.reward, "'first' for a diffusion policy that executes "
        f"{config.model.execute_steps} actions (it plans no states to score the rest with)")
  if a.dynamics_coef < 0:
    bad("dynamics_coef", a.dynamics_coef, "a non-negative number")
  if a.dynamics_coef > 0 and not (planner and config.task == "nav1d"):
    bad("dynamics_coef", a.dynamics_coef, "0 unless a planner runs on Nav1D (the only task "
        "with a known dynamics model here)")
  if a.deploy_sampler not in DEPLOY_SAMPLERS:
    bad("deploy_sampler", a.deploy_sampler, f"one of {DEPLOY_SAMPLERS}")
  if not (isinstance(a.rl.last_k, int) and 0 <= a.rl.last_k < num_sampling_steps):
    bad("rl.last_k", a.rl.last_k, f"an integer in [0, {num_sampling_steps - 1}] (0: every "
        "stochastic step; the last step is deterministic)")
  if a.rl.objective not in rl.OBJECTIVES:
    bad("rl.objective", a.rl.objective, f"one of {rl.OBJECTIVES}")
  if a.rl.objective != "mean" and a.rl.num_samples < 2:
    bad("rl.num_samples", a.rl.num_samples, f"at least 2 for rl.objective={a.rl.objective!r}")
  if a.rl.min_std < 0:
    bad("rl.min_std", a.rl.min_std, "a non-negative number")
  if uses_policy_gradient(config) and config.diffusion.sampler in ("ddim", "flow") and (
      not a.rl.stochastic_scale > 0):
    bad("rl.stochastic_scale", a.rl.stochastic_scale, f"> 0 for {a.rl.method} with "
        f"{config.diffusion.sampler} (a deterministic chain has no log-probs)")
  if a.sft.rank not in sft.RANKS:
    bad("sft.rank", a.sft.rank, f"one of {sft.RANKS}")


def build_aligner(config, name: str, dmc, reward_fn, pass_idx: int, axis_name):
  """``(Aligner, optimizer)`` of stage ``name`` (K of the Q-gradient may change by pass)."""
  a = config.align
  scale = lora_lib.lora_scale(a.lora_rank, a.lora_alpha)
  common = dict(lora_rank=a.lora_rank, lora_scale=scale, axis_name=axis_name)
  if name == "rl":
    r = a.rl
    tx = base_lib.make_optimizer(r.lr)
    if r.method == "qgrad":
      k = r.num_grad_steps[min(pass_idx, len(r.num_grad_steps) - 1)]
      return (rl.make_qgrad_aligner(
          dmc.sampling, reward_fn, tx, num_samples=r.num_samples, num_grad_steps=k,
          reg_coef=r.reg_coef, credit=r.credit, credit_decay=r.credit_decay,
          entropy_coef=r.entropy_coef, **common), tx)
    return (rl.make_policy_gradient_aligner(
        dmc.sampling, reward_fn, tx, method=r.method, num_samples=r.num_samples,
        epochs=r.epochs, minibatches=r.minibatches, step_groups=r.step_groups,
        clip_eps=r.clip_eps, kl_coef=r.kl_coef, credit=r.credit, credit_decay=r.credit_decay,
        adv_clip=r.adv_clip, entropy_coef=r.entropy_coef, last_k=r.last_k,
        min_std=r.min_std, objective=r.objective, **common), tx)
  if name == "dpo":
    tx = base_lib.make_optimizer(a.dpo.lr)
    return (dpo.make_dpo_aligner(
        dmc.sampling, reward_fn, tx, beta=a.dpo.beta, num_samples=a.dpo.num_samples,
        weighting=a.dpo.weighting, sample_from=a.dpo.sample_from, **common), tx)
  tx = base_lib.make_optimizer(a.sft.lr)
  return (sft.make_sft_aligner(
      dmc.sampling, reward_fn, tx, num_samples=a.sft.num_samples, keep_frac=a.sft.keep_frac,
      lik_quantile=a.sft.lik_quantile, lik_draws=a.sft.lik_draws,
      sample_from=a.sft.sample_from, rank=a.sft.rank, **common), tx)


def stage_lr(config, name: str) -> float:
  return float(config.align[name].lr)


def with_stochastic(config, dmc):
  """The DMC with its generator's stochastic knob set from ``align.rl.stochastic_scale``."""
  gen = dmc.sampling.gen
  if gen.stochastic:
    knob = {k: config.align.rl.stochastic_scale for k in gen.stochastic}
    gen = gen._replace(stochastic=knob)
  return dmc._replace(sampling=dmc.sampling._replace(gen=gen))


def uses_policy_gradient(config) -> bool:
  a = config.align
  return "rl" in a.stages and a.rl.method in rl.PG_METHODS


def rl_sampler_dmc(config, dmc):
  """The DMC that *samples* with the RL stage's stochastic sampler (knobs
  ``align.rl.stochastic_scale``, std floor ``align.rl.min_std``): the policy REINFORCE/PPO
  optimise. Its ``propose`` is rebuilt on the new sampler."""
  d = with_stochastic(config, dmc)
  gen = d.sampling.gen
  sample = gen.sample.replace(defaults=dict(gen.stochastic or {}),
                              min_std=float(config.align.rl.min_std))
  sampling = d.sampling._replace(gen=gen._replace(sample=sample))
  return d._replace(sampling=sampling, propose=dmc_lib.propose_with(sampling))


def deployed_dmc(config, dmc):
  """The DMC that alignment samples from and that is evaluated before and after it. With a
  REINFORCE/PPO stage and ``align.deploy_sampler="rl"`` (default) it is the RL stage's
  stochastic sampler, so the policy optimised is the policy evaluated (DPO, SFT and the
  tracked reward then rank the samples of that same policy); otherwise the configured
  sampler (``diffusion.ddim_eta``), with the stochastic knobs set for the RL stage only."""
  if uses_policy_gradient(config) and config.align.deploy_sampler == "rl":
    return rl_sampler_dmc(config, dmc)
  return with_stochastic(config, dmc)


def make_reward_fn(config, dmc, q_fn, v_fn, obs_norm=None, act_norm=None):
  """The alignment reward of ``align.reward`` with the critic heads combined by
  ``critic.q_agg`` (see :mod:`dmc_jax.aligners.rewards`)."""
  a = config.align
  dyn = None
  if a.dynamics_coef:
    env_params = nav1d.make_params(config.env.task_seed, config.env.horizon,
                                   config.env.step_size)
    dyn = lambda o, u, n: nav1d.plan_dynamics_error(env_params, o, u, n)
  return rewards.make_reward(dmc.sampling, q_fn, v_fn, kind=a.reward,
                             q_agg=config.critic.q_agg, lcb_coef=config.critic.lcb_coef,
                             discount=config.critic.discount, dynamics_error=dyn,
                             dynamics_coef=a.dynamics_coef, obs_norm=obs_norm,
                             act_norm=act_norm)


class _Online:
  """Online fine-tuning: roll out the aligned policy in Nav1D after every chunk, keep the
  transitions in a ring buffer, and keep training the IQL critic on half dataset, half
  online batches."""

  def __init__(self, config, dmc, obs_norm, act_norm, q_fn, v_fn, iql_update, trans_n):
    o, self.config = config.align.online, config
    self.capacity, self.episodes, self.steps = o.capacity, o.episodes, o.critic_steps
    env_params = nav1d.make_params(config.env.task_seed, config.env.horizon,
                                   config.env.step_size)
    act = policy_lib.make_policy(dmc, obs_norm=obs_norm, act_norm=act_norm,
                                 selection=config.eval.selection,
                                 num_candidates=config.eval.num_candidates, q_fn=q_fn,
                                 v_fn=v_fn, temperature=config.eval.temperature,
                                 expectile=config.critic.expectile,
                                 q_agg=config.critic.q_agg, lcb_coef=config.critic.lcb_coef)
    run = rollout_lib.make_rollout(nav1d.reset, nav1d.step, env_params,
                                   max_steps=config.env.horizon, act_fn=act,
                                   history=dmc.history, execute_steps=dmc.execute_steps)
    bs = config.critic.batch_size

    def collect(params, critic_params, key, buf):
      out = run(params, critic_params, key, self.episodes)
      obs, acts = obs_norm.normalize(out["obs"]), act_norm.normalize(out["actions"])
      next_obs = jnp.concatenate([obs[:, 1:], obs[:, -1:]], 1)  # last one masked below
      alive = out["alive"]
      last = jnp.arange(obs.shape[1]) == obs.shape[1] - 1
      n = obs.shape[0] * obs.shape[1]
      new = {"obs": obs.reshape(n, -1), "actions": acts.reshape(n, -1),
             "rewards": out["rewards"].reshape(n) * config.data.reward_scale,
             "next_obs": next_obs.reshape(n, -1),
             "dones": jnp.broadcast_to(last[None], alive.shape).reshape(n).astype(jnp.float32),
             "valid": (alive & ~last[None]).reshape(n)}
      idx = (buf["ptr"] + jnp.cumsum(new["valid"]) - 1) % self.capacity
      idx = jnp.where(new["valid"], idx, self.capacity)  # invalid rows are dropped
      data = {k: buf[k].at[idx].set(new[k], mode="drop") for k in new if k != "valid"}
      added = jnp.sum(new["valid"])
      return dict(data, ptr=(buf["ptr"] + added) % self.capacity,
                  size=jnp.minimum(buf["size"] + added, self.capacity)), jnp.mean(out["returns"])

    def train(critic_state, key, buf, trans):
      def body(s, i):
        k_d, k_o = jax.random.split(jax.random.fold_in(key, i))
        half = ep_lib.sample_transitions(k_d, trans, bs - bs // 2)
        j = jax.random.randint(k_o, (bs // 2,), 0, jnp.maximum(buf["size"], 1))
        online = ep_lib.Transitions(buf["obs"][j], buf["actions"][j], buf["rewards"][j],
                                    buf["next_obs"][j], buf["dones"][j])
        batch = jax.tree.map(lambda x, y: jnp.concatenate([x, y.astype(x.dtype)]), half,
                             online)
        return iql_update(s, batch)
      return jax.lax.scan(body, critic_state, jnp.arange(self.steps))

    self.collect = jax.jit(collect)
    self.train = jax.jit(train)
    self.trans_n = trans_n

  def empty_buffer(self, obs_dim, act_dim):
    c = self.capacity
    return {"obs": jnp.zeros((c, obs_dim)), "actions": jnp.zeros((c, act_dim)),
            "rewards": jnp.zeros((c,)), "next_obs": jnp.zeros((c, obs_dim)),
            "dones": jnp.zeros((c,)), "ptr": jnp.zeros((), jnp.int32),
            "size": jnp.zeros((), jnp.int32)}


def run_alignment(config, workdir, *, dmc, base_params, critic_state, q_fn, v_fn,
                  iql_update, seg_data, trans_n, obs_norm, act_norm, evaluate, writer, key):
  """The sequential scheme. Returns ``dict(lora, critic_state, cascade, curve, decisions)``.

  ``evaluate(params, critic_params, key, n)`` evaluates full DMC params for the curve and the
  environment guard (``offline`` builds it with ``align.curve_selection``).
  """
  a = config.align
  sched_cfg = scheduler_config(config)
  dmc = deployed_dmc(config, dmc)
  reward_fn = make_reward_fn(config, dmc, q_fn, v_fn, obs_norm, act_norm)
  scale = lora_lib.lora_scale(a.lora_rank, a.lora_alpha)
  k_init, k_upd, k_ctx, k_track, k_curve, k_online = jax.random.split(key, 6)
  # Held-out contexts of the tracked reward: fixed for the whole run.
  track_hist = ep_lib.sample_segments(k_track, seg_data, a.track_contexts, dmc.horizon,
                                      dmc.history).history
  track = jax.jit(lambda lora, cp: _track(dmc, reward_fn, base_params, lora, cp, scale,
                                          jax.random.fold_in(k_track, 1), track_hist))
  # One placement for every call, so that it compiles once.
  tracker = lambda lora, cp: track(*sharding.on_first_device((lora, cp)))
  def batch_fn(u, poison):
    """The contexts of update ``u`` (traced inside the compiled chunk); ``poison`` is 1, or
    NaN for a chunk listed in ``align.inject_nan_chunks`` (a test of the NaN guard)."""
    return {"hist": ep_lib.sample_segments(jax.random.fold_in(k_ctx, u), seg_data,
                                           a.batch_size, dmc.horizon, dmc.history).history
            * poison}
  n_dev = len(jax.local_devices()) if a.parallel != "none" else 1
  sharding.check_batch(a.batch_size, n_dev)

  online = None
  buf = {}
  if a.online.enabled:
    online = _Online(config, dmc, obs_norm, act_norm, q_fn, v_fn, iql_update, trans_n)
    buf = online.empty_buffer(trans_n.obs.shape[-1], trans_n.actions.shape[-1])

  def curve_eval(lora, critic):
    """Environment metrics and per-episode values of the model with ``lora`` merged (None:
    the reference), on the curve's fixed episode seeds."""
    params = merged_params(dmc, base_params, lora, scale)
    em, per_episode = evaluate(params, (critic.q.params, critic.v.params),
                               jax.random.fold_in(k_curve, 0), config.eval.curve_episodes)
    return em, {k: np.asarray(v, np.float64).tolist() for k, v in per_episode.items()}

  updates = {}

  def get_update(name, pass_idx):
    k = (name, pass_idx if name == "rl" and a.rl.method == "qgrad" else 0)
    if k not in updates:
      aligner, tx = build_aligner(config, name, dmc, reward_fn, pass_idx, None)
      fn, _ = sharding.parallelize_chunk(
          lambda ax: build_aligner(config, name, dmc, reward_fn, pass_idx, ax)[0].update,
          a.parallel, batch_fn, a.updates_per_chunk)
      updates[k] = (aligner, tx, fn)
    return updates[k]

  aligner0, _, _ = get_update(sched_cfg.stages[0], 0)
  state = aligner0.init(k_init, base_params)
  # ``visit_start``: the adapters a stage visit started from (restored by the env guard).
  tree = {"state": state, "critic": critic_state, "buffer": buf, "visit_start": state.params}
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints", "align"),
                                 max_to_keep=config.train.keep_checkpoints)
  decisions = logging_lib.MetricWriter(workdir, "decisions.jsonl")
  curve_pts = []
  try:
    restored = ckpt.restore(tree)
    if restored is not None:
      from dmc_jax.train.offline import check_same_config
      check_same_config(restored.meta.get("config", {}), config, ckpt.directory, ignore=(),
                        hint=f"remove {ckpt.directory} to align again with the new settings, "
                             "or use another --workdir")
      tree, done_updates = restored.tree, restored.step
      sched = sequential.SchedulerState.from_json(restored.meta["scheduler"])
      curve_pts = [tuple(p) for p in restored.meta["curve"]]
      guard_ref = restored.meta["guard_ref"]
      print(f"resumed alignment at update {done_updates} ({ckpt.directory}): pass "
            f"{sched.pass_idx}, stage {sequential.stage(sched_cfg, sched)}", flush=True)
    else:
      done_updates = 0
    # Rows written after the checkpoint are written again by this run; with no checkpoint
    # that is every alignment row, the step-0 reference rows included (a run killed after
    # writing them and before its first checkpoint must not leave a second copy).
    kept = lambda r: restored is not None and r["step"] <= done_updates
    writer.rewind(lambda r: not any(k.startswith("align/") for k in r) or kept(r))
    decisions.rewind(kept)
    if restored is None:
      r0_values = np.asarray(tracker(None, (critic_state.q.params, critic_state.v.params)))
      r0, r0_std = float(r0_values.mean()), float(r0_values.std())
      sched = sequential.init_state(r0_std)
      em, guard_ref = curve_eval(None, critic_state)
      curve_pts = [(0, em["return_mean"], em["return_std"], r0, r0_std, "reference")]
      writer.write_scalars(0, {"align/curve_return_mean": em["return_mean"],
                               "align/curve_return_std": em["return_std"],
                               "align/track_reward": r0})
    while not sched.done:
      name = sequential.stage(sched_cfg, sched)
      aligner, tx, update = get_update(name, sched.pass_idx)
      st = tree["state"]
      if sched.chunk == 0 and sched.rollbacks == 0:  # a new stage visit: fresh optimiser
        st = base_lib.init_state(st.params, tx)
        tree = dict(tree, visit_start=st.params)
      st = base_lib.set_learning_rate(st, stage_lr(config, name) * sched.lr_scale)
      critic_params = (tree["critic"].q.params, tree["critic"].v.params)
      chunk_no = done_updates // a.updates_per_chunk + 1
      poison = np.float32(np.nan if chunk_no in tuple(a.inject_nan_chunks) else 1.0)
      # One compiled scan over the chunk's updates, one host sync for its metrics.
      st, m = update(st, base_params, critic_params, k_upd, np.int32(done_updates), poison)
      m = {k: np.asarray(v, np.float64) for k, v in jax.device_get(m).items()}
      bad = m["nonfinite"] > 0
      summary = {k: float(v[~bad].mean()) if (~bad).any() else float("nan")
                 for k, v in m.items() if k != "nonfinite"}
      summary["nonfinite"] = float(bad.mean())
      step = done_updates + a.updates_per_chunk
      new_tree = dict(tree, state=st)
      if online is not None and not math.isnan(summary.get("loss", 0.0)):
        params = merged_params(dmc, base_params, st.params, scale)
        buf_new, online_return = online.collect(params, critic_params,
                                                jax.random.fold_in(k_online, step),
                                                tree["buffer"])
        k_critic = jax.random.fold_in(jax.random.fold_in(k_online, 1 << 30), step)
        critic_new, cm = online.train(tree["critic"], k_critic, buf_new, trans_n)
        new_tree.update(buffer=buf_new, critic=critic_new)
        summary.update(online_return=float(online_return),
                       online_q_loss=float(np.mean(cm["q_loss"])))
      values = np.asarray(tracker(st.params, (new_tree["critic"].q.params,
                                              new_tree["critic"].v.params)), np.float64)
      reward, reward_std = float(values.mean()), float(values.std())
      sched_new, decision = sequential.decide(sched_cfg, sched, reward=reward,
                                              loss=summary.get("loss", float("nan")),
                                              nonfinite=summary["nonfinite"], values=values)
      decisions.write_row(step, decision)
      writer.write_scalars(step, {f"align/{name}/{k}": v for k, v in summary.items()}
                           | {"align/track_reward": reward, "align/track_reward_std": reward_std,
                              "align/lr": float(base_lib.learning_rate(st))})
      print(f"align {name} pass {sched.pass_idx} chunk {sched.chunk + 1}: reward {reward:.4f} "
            f"loss {summary.get('loss', float('nan')):.4f} -> {decision['action']} "
            f"({decision['reason']})", flush=True)
      rolled_back = decision["action"] == "rollback" or decision.get("rollback", False)
      if not rolled_back:
        tree = new_tree
      # else: ``tree`` is still the last good state, the one the latest checkpoint holds; the
      # rolled-back updates are not replayed (the next chunk draws new keys).
      done_updates = step
      if decision["action"] in ("advance", "finish"):
        em, per_episode = curve_eval(tree["state"].params, tree["critic"])
        label = f"{name} (pass {sched.pass_idx})"
        # ``guard_ref``: per-episode values of the state this visit started from (same seeds).
        why = sequential.env_guard(guard_ref, per_episode, a.env_guard)
        if why is None:
          guard_ref = per_episode
        else:  # revert the visit: back to the adapters it started from
          tree = dict(tree, state=tree["state"].replace(params=tree["visit_start"]))
          decisions.write_row(step, {"action": "revert", "stage": name,
                                     "pass": sched.pass_idx, "reason": why,
                                     "rejected_return": em["return_mean"]})
          print(f"  revert {name}: {why}", flush=True)
          # The state the next visit starts from (with an online critic, not the old one).
          em, guard_ref = curve_eval(tree["state"].params, tree["critic"])
          label += " reverted"
        curve_pts.append((step, em["return_mean"], em["return_std"], reward, reward_std,
                          label))
        writer.write_scalars(step, {"align/curve_return_mean": em["return_mean"],
                                    "align/curve_return_std": em["return_std"]})
        print(f"  eval after {name}: return {em['return_mean']:.2f} ± {em['return_std']:.2f}",
              flush=True)
      sched = sched_new
      meta = {"config": json.loads(config.to_json()), "phase": "align",
              "scheduler": sched.to_json(), "curve": [list(p) for p in curve_pts],
              "guard_ref": guard_ref}
      ckpt.save(done_updates, tree, meta)  # after a rollback: the good state, new position
  finally:
    ckpt.close()
  cascade = None
  if a.cascade.enabled:
    cascade = train_cascade(config, workdir, dmc, base_params, tree, reward_fn, scale,
                            batch_fn, key, writer)
  return {"lora": tree["state"].params, "critic_state": tree["critic"], "cascade": cascade,
          "curve": curve_pts, "decisions": decisions.rows(), "lora_scale": scale}


def merged_params(dmc, base_params, lora, scale):
  """The denoiser params with ``lora`` merged (None: the reference), outside ``jit``. Both on
  one device first: the adapters come back from a mesh update replicated, the base params
  from a checkpoint committed to one device (a resumed job), and eager ops refuse to mix."""
  base_params, lora = sharding.on_first_device((base_params, lora))
  return base_lib.aligned_params(dmc.sampling, base_params, lora, scale)


def _track(dmc, reward_fn, base_params, lora, critic_params, scale, key, hist):
  """The reward of one sample per held-out context (fixed key): ``[n]``, paired across
  chunks (the same contexts and noise), so the scheduler can test a drop on the pairs."""
  params = base_lib.aligned_params(dmc.sampling, base_params, lora, scale)
  ids = jnp.arange(hist.shape[0])
  smp = base_lib.sample_contexts(dmc.sampling, dmc.sampling.gen.sample, params,
                                 base_lib.per_sample_keys(key, ids), hist)
  return reward_fn(params, critic_params, smp.x_0, hist)


def train_cascade(config, workdir, dmc, base_params, tree, reward_fn, scale, batch_fn, key,
                  writer):
  """Trains the cascade on pairs from the aligned model (own checkpoint, resumable), one
  compiled chunk of ``align.updates_per_chunk`` updates per checkpoint."""
  from dmc_jax.train import builders
  c = config.align.cascade
  first = merged_params(dmc, base_params, tree["state"].params, scale)
  spec = cascade_lib.make_cascade(
      dmc.sampling, lambda fn: builders.make_generator(config, fn), mode=c.mode,
      share_step=c.share_step, block=tuple(c.block), hidden=c.hidden,
      num_candidates=c.num_candidates, passes=c.passes, lora_rank=config.align.lora_rank)
  tx = base_lib.make_optimizer(c.lr)
  k_init, k_upd = jax.random.split(jax.random.fold_in(key, 7))
  state = spec.init(k_init, first, tx, batch_fn(0, 1.0)["hist"][:1])
  crit = (tree["critic"].q.params, tree["critic"].v.params)
  # The cascade's contexts: the alignment's stream, from update 10^7 on.
  cascade_batch = lambda u, aux: batch_fn(10_000_000 + u, aux)
  chunks = {}

  def get_chunk(n):
    if n not in chunks:
      chunks[n] = sharding.parallelize_chunk(
          lambda ax: spec.make_update(reward_fn, tx, lora_scale=scale, axis_name=ax),
          config.align.parallel, cascade_batch, n)[0]
    return chunks[n]

  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints", "cascade"),
                                 max_to_keep=config.train.keep_checkpoints)
  try:
    restored = ckpt.restore(state)
    start = 0 if restored is None else restored.step
    state = state if restored is None else restored.tree
    writer.rewind(lambda r: not any(k.startswith("cascade/") for k in r) or r["step"] <= start)
    chunk = config.align.updates_per_chunk
    for done in range(start, c.updates, chunk):
      step = min(done + chunk, c.updates)
      state, m = get_chunk(step - done)(state, first, crit, k_upd, np.int32(done),
                                        np.float32(1.0))
      summary = {k: float(np.mean(np.asarray(v, np.float64)))
                 for k, v in jax.device_get(m).items()}
      writer.write_scalars(step, {f"cascade/{k}": v for k, v in summary.items()})
      print(f"cascade {step}/{c.updates}: loss {summary['loss']:.4f} kept "
            f"{summary['kept']:.2f} gain {summary['gain']:.4f}", flush=True)
      ckpt.save(step, state, {"config": json.loads(config.to_json()), "phase": "cascade"})
  finally:
    ckpt.close()
  # The eager merge needs ``state`` where ``first`` is (a mesh update returns it replicated).
  state = sharding.on_first_device(state)
  return {"dmc": spec.wrap(dmc), "params": spec.inference_params(first, state, scale)}
