"""The alignment phase (SHELL): the sequential scheduler over RL -> DPO -> SFT, checkpoints,
rollbacks, online fine-tuning and the cascade.

Runs after pretraining (the job, :mod:`dmc_jax.train.offline`, calls
:func:`align_and_evaluate`) when ``config.align.stages`` is not empty. Writes ``align/`` metrics rows (``metrics.jsonl``), every scheduler decision to
``decisions.jsonl``, and saves ``checkpoints/align`` after every good chunk: LoRA adapters,
optimiser state (with its learning rate), the step, the critic (changed by online
fine-tuning), the online buffer, and in the metadata the scheduler's position and history.
A killed run resumes from there and redraws the same keys (``fold_in(key, update)``).
"""
import dataclasses
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from dmc_jax import progress as progress_lib
from dmc_jax.aligners import base as base_lib
from dmc_jax.aligners import cascade as cascade_lib
from dmc_jax.aligners import dpo, rewards, rl, sequential, sft
from dmc_jax.data import episodes as ep_lib
from dmc_jax.data import replay
from dmc_jax.envs import nav1d
from dmc_jax.envs import registry
from dmc_jax.eval import evaluators, gym_rollout
from dmc_jax.eval import rollout as rollout_lib
from dmc_jax.models import dynamics as dynamics_lib
from dmc_jax.networks import lora as lora_lib
from dmc_jax.train import builders, checkpoint
from dmc_jax.train import hooks as hooks_lib
from dmc_jax.train import keys as keys_lib
from dmc_jax.train import logging as logging_lib
from dmc_jax.train import phases, sharding
from dmc_jax.train import results as results_lib


def scheduler_config(config) -> sequential.SchedulerConfig:
  a = config.align
  return sequential.SchedulerConfig(
      stages=tuple(a.stages), passes=a.passes, min_chunks=a.min_chunks,
      max_chunks=a.max_chunks, patience=a.patience, tol=a.tol, gain_se=a.gain_se,
      drop_tol=a.drop_tol, drop_min=a.drop_min,
      spike_factor=a.spike_factor, max_nonfinite=a.max_nonfinite, lr_decay=a.lr_decay,
      lr_decay_scope=a.lr_decay_scope,
      max_rollbacks=a.max_rollbacks)


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
        min_std=r.min_std, objective=r.objective, target_kl=r.target_kl, **common), tx)
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


def known_dynamics(config) -> bool:
  """Whether the dynamics term uses the task's own model (``align.dynamics_model``; ``auto``
  picks the known one where the task has it: Nav1D)."""
  m = config.align.dynamics_model
  return m == "known" or (m == "auto" and config.task == "nav1d")


def fit_dynamics(config, trans_n, key, obs_norm, act_norm):
  """The learned dynamics term's ``dynamics_error`` (:mod:`dmc_jax.models.dynamics`), fitted
  on the normalised dataset transitions with ``key``; prints its held-out error."""
  fitted = dynamics_lib.fit(key, trans_n.obs, trans_n.actions, trans_n.next_obs,
                            steps=config.align.dynamics_steps,
                            batch_size=config.critic.batch_size)
  print(f"learned dynamics model: held-out mean |error| {fitted.val_error:.4f} per normalised "
        f"dimension (s' = s: {fitted.static_error:.4f})", flush=True)
  return dynamics_lib.make_error_fn(fitted, obs_norm, act_norm)


def make_reward_fn(config, dmc, q_fn, v_fn, obs_norm=None, act_norm=None,
                   learned_dynamics=None):
  """The alignment reward of ``align.reward`` with the critic heads combined by
  ``critic.q_agg`` (see :mod:`dmc_jax.aligners.rewards`). ``learned_dynamics``: the
  :func:`fit_dynamics` error of a learned model, needed when ``align.dynamics_coef > 0`` on
  a task without a known one."""
  a = config.align
  dyn = None
  if a.dynamics_coef and known_dynamics(config):
    env_params = nav1d.make_params(config.env.task_seed, config.env.horizon,
                                   config.env.step_size)
    dyn = lambda o, u, n: nav1d.plan_dynamics_error(env_params, o, u, n)
  elif a.dynamics_coef:
    if learned_dynamics is None:
      raise ValueError("align.dynamics_coef > 0 with a learned dynamics model: pass "
                       "learned_dynamics (align.fit_dynamics)")
    dyn = learned_dynamics
  q_fn = evaluators.config_heads(config, q_fn, "reward")
  return rewards.make_reward(dmc.sampling, q_fn, v_fn, kind=a.reward,
                             q_agg=config.critic.q_agg, lcb_coef=config.critic.lcb_coef,
                             discount=config.critic.discount, dynamics_error=dyn,
                             dynamics_coef=a.dynamics_coef, obs_norm=obs_norm,
                             act_norm=act_norm)


def _online_critic_train(config, iql_update):
  """``train(critic_state, key, buf, trans)``: ``align.online.critic_steps`` IQL updates on
  batches of ``critic.batch_size``, a share ``align.online.mix`` of them from the online
  buffer and the rest from the dataset (jitted)."""
  bs, steps = config.critic.batch_size, config.align.online.critic_steps
  n_online = int(bs * config.align.online.mix)

  def train(critic_state, key, buf, trans):
    def body(s, i):
      k_d, k_o = jax.random.split(jax.random.fold_in(key, i))
      half = ep_lib.sample_transitions(k_d, trans, bs - n_online)
      online = replay.sample(buf, k_o, n_online)
      batch = jax.tree.map(lambda x, y: jnp.concatenate([x, y.astype(x.dtype)]), half, online)
      return iql_update(s, batch)
    return jax.lax.scan(body, critic_state, jnp.arange(steps))
  return jax.jit(train)


class _Online:
  """Online fine-tuning in Nav1D: roll out the aligned policy after every chunk (the pure env,
  one compiled program), keep the transitions in a ring buffer (:mod:`dmc_jax.data.replay`),
  and keep training the IQL critic on a dataset/online mix."""

  def __init__(self, config, dmc, obs_norm, act_norm, q_fn, v_fn, iql_update):
    o = config.align.online
    env_params = nav1d.make_params(config.env.task_seed, config.env.horizon,
                                   config.env.step_size)
    run = rollout_lib.make_rollout(nav1d.reset, nav1d.step, env_params,
                                   max_steps=config.env.horizon,
                                   act_fn=evaluators.make_act(config, dmc, obs_norm, act_norm,
                                                              q_fn, v_fn, selection=o.selection),
                                   history=dmc.history, execute_steps=dmc.execute_steps)

    def collect(params, critic_params, key, buf):
      out = run(params, critic_params, key, o.episodes)
      obs, acts = obs_norm.normalize(out["obs"]), act_norm.normalize(out["actions"])
      next_obs = jnp.concatenate([obs[:, 1:], obs[:, -1:]], 1)  # last one masked below
      alive = out["alive"]
      last = jnp.arange(obs.shape[1]) == obs.shape[1] - 1
      n = obs.shape[0] * obs.shape[1]
      rows = {"obs": obs.reshape(n, -1), "actions": acts.reshape(n, -1),
              "rewards": out["rewards"].reshape(n) * config.data.reward_scale,
              "next_obs": next_obs.reshape(n, -1),
              "dones": jnp.broadcast_to(last[None], alive.shape).reshape(n).astype(
                  jnp.float32)}
      valid = (alive & ~last[None]).reshape(n)
      return replay.add(buf, rows, valid), {"online_return": jnp.mean(out["returns"]),
                                            "online_env_steps": jnp.sum(alive)}

    self.collect = jax.jit(collect)
    self.train = _online_critic_train(config, iql_update)


class _GymOnline:
  """Online fine-tuning in a gymnasium env (``task=minari``: the dataset's env): the aligned
  policy, jitted, steps ``align.online.episodes`` envs of a vector env between chunks (host
  loop, :func:`~dmc_jax.eval.gym_rollout.rollout_gym`); every executed transition goes to the
  buffer (``dones`` = terminated; a time limit is not terminal), and the critic trains as in
  :class:`_Online`. The reset seeds are drawn from the chunk's key (distinct from the
  evaluation's seeds ``0..n-1``), so a resumed run collects the same episodes."""

  def __init__(self, config, dmc, obs_norm, act_norm, q_fn, v_fn, iql_update, env_info):
    import gymnasium as gym
    registry.register_all()
    o = config.align.online
    act = jax.jit(evaluators.make_act(config, dmc, obs_norm, act_norm, q_fn, v_fn,
                                      selection=o.selection))
    add = jax.jit(replay.add)
    spec = env_info["env_spec"]

    def collect(params, critic_params, key, buf):
      params, critic_params = sharding.on_first_device((params, critic_params))
      k_seed, k_act = jax.random.split(key)
      seeds = np.asarray(jax.random.randint(k_seed, (o.episodes,), 0, 2 ** 31 - 1))
      fn = lambda k, hist: act(params, critic_params, k, jnp.asarray(hist))[0]
      out = gym_rollout.rollout_gym(lambda: gym.make(spec), fn, k_act,
                                    num_episodes=o.episodes, max_steps=config.env.max_steps,
                                    history=dmc.history, execute_steps=dmc.execute_steps,
                                    seeds=seeds, name="online roll-out")
      n = out["obs"].shape[0] * out["obs"].shape[1]
      f32 = lambda x: np.asarray(x, np.float32)
      rows = {"obs": f32(obs_norm.normalize(out["obs"])).reshape(n, -1),
              "actions": f32(act_norm.normalize(out["actions"])).reshape(n, -1),
              "rewards": f32(out["rewards"]).reshape(n) * np.float32(config.data.reward_scale),
              "next_obs": f32(obs_norm.normalize(out["next_obs"])).reshape(n, -1),
              "dones": f32(out["terminated"]).reshape(n)}
      valid = out["alive"].reshape(n)
      buf = add(buf, rows, valid)
      return buf, {"online_return": float(np.mean(out["returns"])),
                   "online_env_steps": int(valid.sum())}

    self.collect = collect
    self.train = _online_critic_train(config, iql_update)


def run_alignment(config, workdir, *, dmc, base_params, critic_state, q_fn, v_fn,
                  iql_update, seg_data, trans_n, obs_norm, act_norm, evaluate, writer, key,
                  env_info=None, hooks=hooks_lib.NONE):
  """The sequential scheme. Returns ``dict(lora, critic_state, cascade, curve, decisions)``.

  ``evaluate(params, critic_params, key, n)`` evaluates full DMC params for the curve and the
  environment guard (``align_and_evaluate`` builds it with ``align.curve_selection``).
  ``key``: the job's alignment stream (:mod:`dmc_jax.train.keys`); ``hooks``: test hooks.
  """
  a = config.align
  hooks.at("align:start")
  sched_cfg = scheduler_config(config)
  dmc = builders.deployed_dmc(config, dmc)
  learned = None
  if a.dynamics_coef and not known_dynamics(config):  # fitted again on a resume: deterministic
    learned = fit_dynamics(config, trans_n, jax.random.fold_in(key, keys_lib.DYNAMICS),
                           obs_norm, act_norm)
  reward_fn = make_reward_fn(config, dmc, q_fn, v_fn, obs_norm, act_norm, learned)
  scale = lora_lib.lora_scale(a.lora_rank, a.lora_alpha)
  k_init, k_upd, k_ctx, k_track, k_curve, k_online = keys_lib.align_keys(key, a.seed)
  # Held-out contexts of the tracked reward: fixed for the whole run.
  track_hist = ep_lib.sample_segments(k_track, seg_data, a.track_contexts, dmc.horizon,
                                      dmc.history).history
  track = jax.jit(lambda lora, cp: _track(dmc, reward_fn, base_params, lora, cp, scale,
                                          jax.random.fold_in(k_track, keys_lib.TRACK_NOISE), track_hist))
  # One placement for every call, so that it compiles once.
  tracker = lambda lora, cp: track(*sharding.on_first_device((lora, cp)))
  def batch_fn(u, poison):
    """The contexts of update ``u`` (traced inside the compiled chunk); ``poison`` is 1, or
    NaN for a chunk listed in ``hooks.nan_chunks`` (a test of the NaN guard)."""
    return {"hist": ep_lib.sample_segments(jax.random.fold_in(k_ctx, u), seg_data,
                                           a.batch_size, dmc.horizon, dmc.history).history
            * poison}
  n_dev = len(jax.local_devices()) if a.parallel != "none" else 1
  sharding.check_batch(a.batch_size, n_dev)

  online = None
  buf = {}
  if a.online.enabled:
    if config.task == "nav1d":
      online = _Online(config, dmc, obs_norm, act_norm, q_fn, v_fn, iql_update)
    else:
      online = _GymOnline(config, dmc, obs_norm, act_norm, q_fn, v_fn, iql_update, env_info)
    buf = replay.init(a.online.capacity, trans_n.obs.shape[-1], trans_n.actions.shape[-1])

  def curve_eval(lora, critic):
    """Environment metrics and per-episode values of the model with ``lora`` merged (None:
    the reference), on the curve's fixed episode seeds."""
    params = merged_params(dmc, base_params, lora, scale)
    em, per_episode = evaluate(params, (critic.q.params, critic.v.params),
                               jax.random.fold_in(k_curve, keys_lib.CURVE_SEEDS),
                               config.eval.curve_episodes)
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
  # ``best``: the visit's best adapters by the tracked reward (kept when the visit ends, and
  # re-scored when online fine-tuning changes the critic).
  tree = {"state": state, "critic": critic_state, "buffer": buf, "visit_start": state.params,
          "best": state.params}
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints", "align"),
                                 max_to_keep=config.train.keep_checkpoints)
  decisions = logging_lib.MetricWriter(workdir, "decisions.jsonl")
  curve_pts = []
  visit_key, visit_progress = None, None  # the current stage visit and its rate / ETA
  try:
    restored = ckpt.restore(tree)
    if restored is not None:
      phases.check_same_config(restored.meta.get("config", {}), config, ckpt.directory, ignore=(),
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
      hooks.at("align:reference_evaluated")
    while not sched.done:
      name = sequential.stage(sched_cfg, sched)
      aligner, tx, update = get_update(name, sched.pass_idx)
      st = tree["state"]
      if sched.chunk == 0 and sched.rollbacks == 0:  # a new stage visit: fresh optimiser
        st = base_lib.init_state(st.params, tx)
        tree = dict(tree, visit_start=st.params)
        if sched.best is None:  # the visit's first best: where it starts (paired values)
          v0 = np.asarray(tracker(st.params, (tree["critic"].q.params,
                                              tree["critic"].v.params)), np.float64)
          sched = sequential.start_visit(sched, float(v0.mean()), v0)
          tree = dict(tree, best=st.params)
      if visit_key != (name, sched.pass_idx):
        # Updates of this visit; its end is decided on a plateau, so the ETA is an upper
        # bound (``align.max_chunks``). The first chunk compiles and is not timed.
        visit_key = (name, sched.pass_idx)
        visit_progress = progress_lib.Progress(f"align {name} pass {sched.pass_idx}",
                                               a.max_chunks * a.updates_per_chunk)
      st = base_lib.set_learning_rate(st, stage_lr(config, name) *
                                       sequential.lr_scale(sched_cfg, sched))
      critic_params = (tree["critic"].q.params, tree["critic"].v.params)
      chunk_no = done_updates // a.updates_per_chunk + 1
      poison = np.float32(np.nan if chunk_no in tuple(hooks.nan_chunks) else 1.0)
      # One compiled scan over the chunk's updates, one host sync for its metrics.
      st, m = update(st, base_params, critic_params, k_upd, np.int32(done_updates), poison)
      m = {k: np.asarray(v, np.float64) for k, v in jax.device_get(m).items()}
      bad = m["nonfinite"] > 0
      summary = {k: float(v[~bad].mean()) if (~bad).any() else float("nan")
                 for k, v in m.items() if k != "nonfinite"}
      summary["nonfinite"] = float(bad.mean())
      step = done_updates + a.updates_per_chunk
      new_tree = dict(tree, state=st)
      sched_in = sched
      if online is not None and not math.isnan(summary.get("loss", 0.0)):
        params = merged_params(dmc, base_params, st.params, scale)
        buf_new, om = online.collect(params, critic_params, jax.random.fold_in(k_online, step),
                                     tree["buffer"])
        k_critic = jax.random.fold_in(jax.random.fold_in(k_online, keys_lib.ONLINE_CRITIC),
                                      step)
        critic_new, cm = online.train(tree["critic"], k_critic, buf_new, trans_n)
        new_tree.update(buffer=buf_new, critic=critic_new)
        summary.update(online_return=float(om["online_return"]),
                       online_env_steps=float(om["online_env_steps"]),
                       online_q_loss=float(np.mean(cm["q_loss"])))
        # The critic moved: compare this chunk with the best adapters under the same
        # (new) critic, not with their value under the old one. (``sched_in`` keeps the old
        # scores, restored below on a rollback, which drops the new critic too.)
        sched = sequential.rescore_best(sched, np.asarray(tracker(
            tree["best"], (critic_new.q.params, critic_new.v.params)), np.float64))
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
      rate = visit_progress.status((sched.chunk + 1) * a.updates_per_chunk).replace(
          "ETA", "ETA <=")
      print(f"align {name} pass {sched.pass_idx} chunk {sched.chunk + 1} [{rate}]: reward "
            f"{reward:.4f} loss {summary.get('loss', float('nan')):.4f} -> "
            f"{decision['action']} ({decision['reason']})", flush=True)
      rolled_back = decision["action"] == "rollback" or decision.get("rollback", False)
      if decision.get("new_best"):
        new_tree["best"] = st.params
      if online is not None and rolled_back and sched_new.best is not None:
        sched_new = dataclasses.replace(sched_new, best=sched_in.best,
                                        best_values=sched_in.best_values)
      if not rolled_back:
        tree = new_tree
      # else: ``tree`` is still the last good state, the one the latest checkpoint holds; the
      # rolled-back updates are not replayed (the next chunk draws new keys).
      if decision["action"] in ("advance", "finish"):
        # The visit ends on its best adapters (by the tracked reward on the held-out
        # contexts), not on its last chunk: a plateau's last chunks may sit below it.
        tree = dict(tree, state=tree["state"].replace(params=tree["best"]))
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
        kept = reward if decision.get("new_best") else decision.get("best_before", reward)
        curve_pts.append((step, em["return_mean"], em["return_std"], kept, reward_std,
                          label))
        writer.write_scalars(step, {"align/curve_return_mean": em["return_mean"],
                                    "align/curve_return_std": em["return_std"]})
        print(f"  eval after {name}: return {em['return_mean']:.2f} ± {em['return_std']:.2f}",
              flush=True)
        hooks.at("align:curve_evaluated")
      sched = sched_new
      meta = {"config": json.loads(config.to_json()), "phase": "align",
              "scheduler": sched.to_json(), "curve": [list(p) for p in curve_pts],
              "guard_ref": guard_ref}
      hooks.at("align:before_checkpoint")
      ckpt.save(done_updates, tree, meta)  # after a rollback: the good state, new position
      hooks.at("align:after_checkpoint")
  finally:
    ckpt.close()
  cascade = None
  if a.cascade.enabled:
    cascade = train_cascade(config, workdir, dmc, base_params, tree, reward_fn, scale,
                            batch_fn, key, writer, hooks)
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
                  writer, hooks=hooks_lib.NONE):
  """Trains the cascade on pairs from the aligned model (own checkpoint, resumable), one
  compiled chunk of ``align.updates_per_chunk`` updates per checkpoint."""
  c = config.align.cascade
  hooks.at("cascade:start")
  first = merged_params(dmc, base_params, tree["state"].params, scale)
  spec = cascade_lib.make_cascade(
      dmc.sampling, lambda fn: builders.make_generator(config, fn), mode=c.mode,
      share_step=c.share_step, block=tuple(c.block), hidden=c.hidden,
      num_candidates=c.num_candidates, passes=c.passes, lora_rank=config.align.lora_rank)
  tx = base_lib.make_optimizer(c.lr)
  k_init, k_upd = jax.random.split(jax.random.fold_in(key, keys_lib.CASCADE))
  # ``align.seed`` redraws the cascade's init and updates too
  k_init, k_upd = (keys_lib.redraw_key(k, config.align.seed) for k in (k_init, k_upd))
  state = spec.init(k_init, first, tx, batch_fn(0, 1.0)["hist"][:1])
  crit = (tree["critic"].q.params, tree["critic"].v.params)
  # The cascade's contexts: the alignment's stream, from update CASCADE_CONTEXTS on.
  cascade_batch = lambda u, aux: batch_fn(keys_lib.CASCADE_CONTEXTS + u, aux)
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
      hooks.at("cascade:before_checkpoint")
      ckpt.save(step, state, {"config": json.loads(config.to_json()), "phase": "cascade"})
      hooks.at("cascade:after_checkpoint")
  finally:
    ckpt.close()
  # The eager merge needs ``state`` where ``first`` is (a mesh update returns it replicated).
  state = sharding.on_first_device(state)
  return {"dmc": spec.wrap(dmc), "params": spec.inference_params(first, state, scale)}


def guarded_evaluator(curve_evaluate, others: dict):
  """The curve's evaluator, whose per-episode values also hold ``SELECTION/MEASURE`` for
  every selection in ``others`` (same params, key and seeds): what the environment guard
  compares (:func:`dmc_jax.aligners.sequential.env_guard`). The metrics are the curve's."""
  if not others:
    return curve_evaluate

  def evaluate(params, critic_params, key, n):
    m, per_episode = curve_evaluate(params, critic_params, key, n)
    per_episode = dict(per_episode)
    for name, ev in others.items():
      _, extra = ev(params, critic_params, key, n)
      per_episode.update({f"{name}/{k}": v for k, v in extra.items()})
    return m, per_episode
  return evaluate


def align_and_evaluate(config, workdir, *, dmc, base_params, critic, critic_fns, seg_data,
                       trans_n, obs_norm, act_norm, env_info, writer, key, k_eval,
                       hooks=hooks_lib.NONE):
  """Aligns the pretrained DMC and evaluates reference vs aligned for every selection in
  ``align.eval_selections`` on the same episode seeds (``fold_in(k_eval, EVAL_ALIGN)``). The
  alignment curve and the environment guard evaluate with ``align.curve_selection``.
  ``critic``: the IQL state; ``critic_fns``: :func:`builders.make_critic`'s result."""
  q_fn, v_fn = critic_fns.q_fn, critic_fns.v_fn

  def evaluator(selection, model):
    cfg = config.copy_and_resolve_references()
    cfg.eval.selection = selection
    return evaluators.make_evaluator(cfg, model, obs_norm, act_norm, q_fn, v_fn, env_info)

  # The policy that alignment optimises is the one evaluated before and after it.
  deployed = builders.deployed_dmc(config, dmc)
  other = None  # the RL stage's sampler, when the deployed one differs from it
  if builders.uses_policy_gradient(config) and config.align.deploy_sampler != "rl":
    other = builders.rl_sampler_dmc(config, dmc)
  out = run_alignment(
      config, workdir, dmc=dmc, base_params=base_params, critic_state=critic, q_fn=q_fn,
      v_fn=v_fn, iql_update=critic_fns.update, seg_data=seg_data, trans_n=trans_n,
      obs_norm=obs_norm, act_norm=act_norm,
      evaluate=guarded_evaluator(evaluator(config.align.curve_selection, deployed),
                                 {s: evaluator(s, deployed)
                                  for s in config.align.guard_selections}),
      writer=writer, key=key, env_info=env_info, hooks=hooks)
  params = merged_params(dmc, base_params, out["lora"], out["lora_scale"])
  ref_critic = (critic.q.params, critic.v.params)
  new_critic = (out["critic_state"].q.params, out["critic_state"].v.params)
  results = {}
  k = jax.random.fold_in(k_eval, keys_lib.EVAL_ALIGN)

  def row_of(ev, p, cp):
    m, r = ev(p, cp, k, config.eval.num_episodes)
    return dict(m, **{f"return_{s}": v for s, v in results_lib.stats(r["return"]).items()})

  hooks.at("align:final_evaluation")
  for selection in config.align.eval_selections:
    ev = evaluator(selection, deployed)
    row = {"before": row_of(ev, base_params, ref_critic), "after": row_of(ev, params, new_critic)}
    if out["cascade"] is not None:
      row["cascade"] = row_of(evaluator(selection, out["cascade"]["dmc"]),
                              out["cascade"]["params"], new_critic)
    if other is not None:
      ev_rl = evaluator(selection, other)
      row["before_rl_sampler"] = row_of(ev_rl, base_params, ref_critic)
      row["after_rl_sampler"] = row_of(ev_rl, params, new_critic)
    results[selection] = row
    writer.write_scalars(config.train.steps, {
        f"eval/align_{selection}_{n}_return_mean": v["return_mean"] for n, v in row.items()})
    print(f"alignment, selection={selection}: " + "; ".join(
        f"{n} {v['return_mean']:.2f} ± {v['return_std']:.2f} (CI ± {v['return_ci95']:.2f})"
        for n, v in row.items()), flush=True)
  # Environment steps online fine-tuning consumed (rolled-back chunks included: their
  # interaction happened although their updates were dropped).
  env_steps = sum(int(v) for r in writer.rows() for k, v in r.items()
                  if k.startswith("align/") and k.endswith("/online_env_steps"))
  return {"params": params, "critic_params": new_critic, "results": results,
          "curve": out["curve"], "online_env_steps": env_steps}
