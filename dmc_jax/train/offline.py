"""The offline pipeline (SHELL): data -> IQL critic -> DMC pretraining -> evaluation.

Writes into ``workdir``: ``config.json``, ``metrics.jsonl`` (every loss and evaluation),
``learning_curve.png``, ``results.json`` and ``results.md``.
"""
import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dmc_jax.critics import iql
from dmc_jax.critics.selection import SELECTIONS
from dmc_jax.data import episodes as ep_lib
from dmc_jax.data import minari_io, nav1d_data
from dmc_jax.envs import nav1d
from dmc_jax.eval import coherency, rollout as rollout_lib
from dmc_jax.models import dmc as dmc_lib
from dmc_jax.models import generator as gen_lib
from dmc_jax.models import policy as policy_lib
from dmc_jax.networks.temporal_unet import check_horizon
from dmc_jax.train import builders
from dmc_jax.train import checkpoint
from dmc_jax.train import logging as logging_lib
from dmc_jax.train import step as step_lib


# ---------------------------------------------------------------------------- validation
def validate_config(config) -> None:
  """Raises ``ValueError`` naming the key, the value and what is allowed (before any work)."""
  def bad(key, value, allowed):
    raise ValueError(f"config.{key}={value!r} is invalid: {allowed}")

  def one_of(key, value, allowed):
    if value not in allowed:
      bad(key, value, f"one of {tuple(allowed)}")

  def positive(*keys):
    for key in keys:
      group, name = key.split(".")
      v = config[group][name]
      if not (isinstance(v, (int, float)) and v > 0):
        bad(key, v, "a positive number")

  one_of("task", config.task, ("nav1d", "minari"))
  if config.task == "nav1d":
    one_of("data.dataset", config.data.dataset, nav1d.DATASET_KINDS)
  one_of("data.normalizer", config.data.normalizer, ep_lib.NORMALIZERS)
  one_of("model.kind", config.model.kind, dmc_lib.MODELS)
  one_of("model.backbone", config.model.backbone, builders.BACKBONES)
  one_of("diffusion.sampler", config.diffusion.sampler, gen_lib.SAMPLERS)
  one_of("diffusion.schedule", config.diffusion.schedule, tuple(gen_lib.SCHEDULES))
  one_of("diffusion.pred_type", config.diffusion.pred_type, ("eps", "x0", "v"))
  one_of("eval.selection", config.eval.selection, SELECTIONS)
  positive("env.horizon", "env.step_size", "env.max_steps", "data.num_episodes",
           "critic.steps", "critic.batch_size", "critic.lr", "model.horizon", "model.history",
           "model.execute_steps", "diffusion.train_steps", "diffusion.sample_steps",
           "train.steps", "train.batch_size", "train.lr", "train.log_every",
           "eval.num_episodes", "eval.curve_episodes", "eval.num_candidates",
           "eval.coherency_tol")
  if config.diffusion.sampler == "ddim" and (
      config.diffusion.sample_steps > config.diffusion.train_steps):
    bad("diffusion.sample_steps", config.diffusion.sample_steps,
        f"at most diffusion.train_steps={config.diffusion.train_steps} for DDIM")
  if not 0 <= config.train.ema_decay < 1:
    bad("train.ema_decay", config.train.ema_decay, "a number in [0, 1)")
  if not 0 < config.critic.expectile < 1:
    bad("critic.expectile", config.critic.expectile, "a number in (0, 1)")
  if not 0 <= config.critic.discount <= 1:
    bad("critic.discount", config.critic.discount, "a number in [0, 1]")
  if config.train.eval_every < 0:
    bad("train.eval_every", config.train.eval_every, "0 (end only) or a positive integer")
  m = config.model
  if m.execute_steps > m.horizon:
    bad("model.execute_steps", m.execute_steps, f"at most model.horizon={m.horizon}")
  if m.kind != "diffusion_policy":
    if m.backbone != "unet":
      bad("model.backbone", m.backbone, "'unet' for the planners (diffuser, decision_diffuser)")
    if m.horizon < 2:
      bad("model.horizon", m.horizon, "at least 2 for a planner")
    if not 1 <= m.max_known < m.horizon:
      bad("model.max_known", m.max_known, f"in [1, model.horizon - 1 = {m.horizon - 1}]")
    if m.history != 1:
      bad("model.history", m.history, "1 for the planners (they in-paint the current state)")
  if m.backbone == "unet":
    try:
      check_horizon(m.horizon, m.unet_dim_mults)
    except ValueError as e:
      bad("model.horizon", m.horizon, str(e))
  if m.backbone == "dit" and m.dit_d_model % m.dit_heads:
    bad("model.dit_d_model", m.dit_d_model, f"a multiple of model.dit_heads={m.dit_heads}")


# ---------------------------------------------------------------------------------- data
def load_data(config):
  """Returns ``(episodes, env_info)``; Nav1D datasets are generated when missing."""
  if config.task == "nav1d":
    did = nav1d_data.ensure_dataset(
        config.data.dataset, task_seed=config.env.task_seed, horizon=config.env.horizon,
        step_size=config.env.step_size, num_episodes=config.data.num_episodes,
        seed=config.data.collect_seed)
    eps, _ = minari_io.load_episodes(did, (nav1d.OBS_DIM,), (nav1d.ACT_DIM,))
    return eps, {"dataset_id": did}
  import gymnasium as gym
  ds = minari_io.open_dataset(config.data.dataset)
  env = ds.recover_environment()
  eps, _ = minari_io.load_episodes(config.data.dataset, env.observation_space.shape,
                                   env.action_space.shape)
  return eps, {"dataset_id": config.data.dataset, "env_spec": env.spec}


def _chunked(total, chunk):
  done = 0
  while done < total:
    n = min(chunk, total - done)
    yield done, n
    done += n


# -------------------------------------------------------------------------------- critic
def train_critic(config, trans_n, key, writer):
  """IQL on normalised transitions; returns the final :class:`~dmc_jax.critics.iql.IQLState`."""
  cc = config.critic
  q_mod, v_mod, q_fn, v_fn, update, tx_q, tx_v = builders.make_critic(config)
  k_init, k_train = jax.random.split(key)
  state = iql.init_iql(k_init, q_mod, v_mod, trans_n.obs.shape[-1], trans_n.actions.shape[-1],
                       tx_q, tx_v)

  @functools.partial(jax.jit, static_argnums=2, donate_argnums=0)
  def run(state, start, n, data):
    def body(s, i):
      batch = ep_lib.sample_transitions(jax.random.fold_in(k_train, i), data, cc.batch_size)
      return update(s, batch)
    return jax.lax.scan(body, state, start + jnp.arange(n))

  progress = logging_lib.Progress("train critic", cc.steps)
  for done, n in _chunked(cc.steps, config.train.log_every):
    state, m = run(state, done, n, trans_n)
    m = {k: float(v.mean()) for k, v in m.items()}
    if not all(np.isfinite(list(m.values()))):
      raise FloatingPointError(f"non-finite critic metrics at step {done + n}: {m}")
    writer.write_scalars(done + n, {f"critic/{k}": v for k, v in m.items()})
    progress.update(done + n, f"q_loss {m['q_loss']:.4f} v_loss {m['v_loss']:.4f}")
  return state, q_fn, v_fn


# ---------------------------------------------------------------------------- evaluation
def make_evaluator(config, dmc, obs_norm, act_norm, q_fn, v_fn, env_info):
  """``evaluate(params, critic_params, key, num_episodes) -> dict of floats`` (jit inside)."""
  e = config.eval
  act = policy_lib.make_policy(dmc, obs_norm=obs_norm, act_norm=act_norm,
                               selection=e.selection, num_candidates=e.num_candidates,
                               q_fn=q_fn, v_fn=v_fn, temperature=e.temperature,
                               expectile=config.critic.expectile)
  if config.task != "nav1d":
    return _gym_evaluator(config, dmc, act, env_info)
  env_params = nav1d.make_params(config.env.task_seed, config.env.horizon, config.env.step_size)
  values = jax.jit(nav1d.solve_values)(env_params)
  run = rollout_lib.make_rollout(nav1d.reset, nav1d.step, env_params,
                                 max_steps=config.env.horizon, act_fn=act,
                                 history=dmc.history, execute_steps=dmc.execute_steps)
  kind = config.data.dataset
  density = jax.vmap(jax.vmap(
      lambda t, o, a: nav1d.behaviour_density(kind, env_params, values, t, o[0], a[0]),
      (None, 0, 0)), (0, 1, 1), 1)
  err_fn = functools.partial(nav1d.plan_dynamics_error, env_params)

  @functools.partial(jax.jit, static_argnums=3)
  def evaluate(params, critic_params, key, num_episodes):
    out = run(params, critic_params, key, num_episodes)
    metrics = {"return_mean": jnp.mean(out["returns"]), "return_std": jnp.std(out["returns"]),
               "behaviour_density": coherency.policy_coherency(
                   density, out["t"], out["obs"], out["actions"], out["alive"])}
    if "plan_obs" in out["info"]:
      w = out["replanned"][:, None] & jnp.swapaxes(out["alive"], 0, 1)
      share, err = coherency.plan_coherency(err_fn, out["info"]["plan_obs"],
                                            out["info"]["plan_actions"],
                                            config.eval.coherency_tol, w)
      metrics.update(plan_coherency=share, plan_dynamics_error=err)
    return metrics, out["returns"]

  def wrapped(params, critic_params, key, num_episodes):
    metrics, returns = evaluate(params, critic_params, key, num_episodes)
    return {k: float(v) for k, v in metrics.items()}, np.asarray(returns)
  return wrapped


def _gym_evaluator(config, dmc, act, env_info):
  import gymnasium as gym
  from dmc_jax.eval import gym_rollout
  spec = env_info["env_spec"]
  act_jit = jax.jit(act)

  def evaluate(params, critic_params, key, num_episodes):
    fn = lambda k, hist: act_jit(params, critic_params, k, jnp.asarray(hist))[0]
    out = gym_rollout.rollout_gym(lambda: gym.make(spec), fn, key, num_episodes=num_episodes,
                                  max_steps=config.env.max_steps, history=dmc.history,
                                  execute_steps=dmc.execute_steps)
    r = out["returns"]
    return {"return_mean": float(np.mean(r)), "return_std": float(np.std(r))}, r
  return evaluate


def random_policy_returns(config, key, num_episodes):
  """Returns of the uniform random policy (the baseline every table reports)."""
  if config.task != "nav1d":
    return None
  env_params = nav1d.make_params(config.env.task_seed, config.env.horizon, config.env.step_size)
  act = lambda p, c, k, h: (jax.random.uniform(k, (h.shape[0], 1, 1), minval=-1, maxval=1), {})
  run = rollout_lib.make_rollout(nav1d.reset, nav1d.step, env_params,
                                 max_steps=config.env.horizon, act_fn=act)
  return np.asarray(jax.jit(run, static_argnums=3)(None, None, key, num_episodes)["returns"])


# ---------------------------------------------------------------------------------- main
def train_and_evaluate(config, workdir: str) -> dict:
  validate_config(config)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json(indent=1))
  writer = logging_lib.MetricWriter(workdir)
  t_start = time.time()
  key = jax.random.key(config.seed)
  k_critic, k_init, k_train, k_eval = jax.random.split(key, 4)

  eps, env_info = load_data(config)
  trans = ep_lib.to_transitions(eps)
  obs_norm = ep_lib.fit_normalizer(trans.obs, config.data.normalizer)
  act_norm = ep_lib.fit_normalizer(trans.actions, config.data.normalizer)
  trans_n = jax.tree.map(jnp.asarray, trans._replace(obs=obs_norm.normalize(trans.obs),
                                                     next_obs=obs_norm.normalize(trans.next_obs),
                                                     actions=act_norm.normalize(trans.actions)))
  print(f"data {env_info['dataset_id']}: {len(eps.lengths)} episodes, {len(trans.obs)} "
        f"transitions, mean return {eps.returns().mean():.2f}", flush=True)

  critic, q_fn, v_fn = train_critic(config, trans_n, k_critic, writer)
  critic_params = (critic.q.params, critic.v.params)

  dmc = builders.make_dmc(config, eps.obs_dim, eps.act_dim)
  seg_data = ep_lib.make_segment_data(eps, dmc.horizon, obs_norm, act_norm)
  state = step_lib.create_train_state(dmc.init(k_init), optax.adam(config.train.lr))
  step_fn = step_lib.make_train_step(dmc.loss, config.train.ema_decay)
  tc = config.train

  @functools.partial(jax.jit, static_argnums=2, donate_argnums=0)
  def run(state, start, n, data):
    def body(s, i):
      k_data, k_loss = jax.random.split(jax.random.fold_in(k_train, i))
      seg = ep_lib.sample_segments(k_data, data, tc.batch_size, dmc.horizon, dmc.history)
      return step_fn(s, k_loss, seg)
    return jax.lax.scan(body, state, start + jnp.arange(n))

  evaluate = make_evaluator(config, dmc, obs_norm, act_norm, q_fn, v_fn, env_info)
  curve = []
  eval_points = set(range(tc.eval_every, tc.steps + 1, tc.eval_every)) if tc.eval_every else set()
  eval_points.add(tc.steps)
  chunk = tc.log_every if not tc.eval_every else np.gcd(tc.log_every, tc.eval_every)
  progress = logging_lib.Progress(f"train {dmc.kind}", tc.steps)
  for done, n in _chunked(tc.steps, int(chunk)):
    state, m = run(state, done, n, seg_data)
    step = done + n
    m = {k: float(v.mean()) for k, v in m.items()}
    if not all(np.isfinite(list(m.values()))):
      raise FloatingPointError(f"non-finite {dmc.kind} metrics at step {step}: {m}")
    writer.write_scalars(step, {f"train/{k}": v for k, v in m.items()})
    if step % tc.log_every == 0 or step == tc.steps:
      progress.update(step, f"loss {m['loss']:.4f}")
    if step in eval_points and step != tc.steps:
      em, _ = evaluate(state.ema_params, critic_params, jax.random.fold_in(k_eval, step),
                       config.eval.curve_episodes)
      curve.append((step, em["return_mean"], em["return_std"]))
      writer.write_scalars(step, {f"curve/{k}": v for k, v in em.items()})
      print(f"eval @ {step}: return {em['return_mean']:.2f} ± {em['return_std']:.2f}",
            flush=True)

  final, returns = evaluate(state.ema_params, critic_params, jax.random.fold_in(k_eval, 0),
                            config.eval.num_episodes)
  curve.append((tc.steps, final["return_mean"], final["return_std"]))
  writer.write_scalars(tc.steps, {f"eval/{k}": v for k, v in final.items()})
  checkpoint.save(os.path.join(workdir, "model"), tc.steps,
                  model_bundle(state.ema_params, critic_params, obs_norm, act_norm))
  rand = random_policy_returns(config, jax.random.fold_in(k_eval, 1), config.eval.num_episodes)
  n_ep = len(returns)
  results = {
      "dataset": env_info["dataset_id"], "model": dmc.kind, "backbone": config.model.backbone,
      "sampler": config.diffusion.sampler, "selection": config.eval.selection,
      "num_episodes": n_ep, **final,
      "return_ci95": float(1.96 * np.std(returns, ddof=1) / np.sqrt(n_ep)) if n_ep > 1 else 0.0,
      "dataset_return": float(eps.returns().mean()),
      "random_return": None if rand is None else float(rand.mean()),
      "curve": curve, "wall_clock_s": time.time() - t_start,
  }
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=1)
  write_table(workdir, results)
  plot_curve(workdir, curve, f"{dmc.kind} on {env_info['dataset_id']}",
             {"dataset": results["dataset_return"], "random policy": results["random_return"]})
  print(f"final: return {final['return_mean']:.2f} ± {final['return_std']:.2f} "
        f"(95% CI ± {results['return_ci95']:.2f}, {n_ep} episodes); dataset "
        f"{results['dataset_return']:.2f}; random {results['random_return']}", flush=True)
  return results


def model_bundle(dmc_params, critic_params, obs_norm, act_norm) -> dict:
  """What evaluation needs: EMA DMC params, critic (Q, V) params and the normalisers."""
  return {"dmc": dmc_params, "critic": {"q": critic_params[0], "v": critic_params[1]},
          "obs_norm": obs_norm._asdict(), "act_norm": act_norm._asdict()}


def write_table(workdir, r):
  cols = [("dataset", r["dataset"]), ("model", r["model"]), ("sampler", r["sampler"]),
          ("selection", r["selection"]),
          ("return", f"{r['return_mean']:.2f} ± {r['return_std']:.2f}"),
          ("95% CI", f"± {r['return_ci95']:.2f}"),
          ("dataset return", f"{r['dataset_return']:.2f}"),
          ("random return", "-" if r["random_return"] is None else f"{r['random_return']:.2f}")]
  if "plan_coherency" in r:
    cols.append(("plan coherency", f"{r['plan_coherency']:.3f}"))
  if "behaviour_density" in r:
    cols.append(("behaviour density", f"{r['behaviour_density']:.3f}"))
  lines = ["| " + " | ".join(c for c, _ in cols) + " |", "|" + "---|" * len(cols),
           "| " + " | ".join(str(v) for _, v in cols) + " |"]
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write("\n".join(lines) + "\n")


def plot_curve(workdir, curve, title, baselines=None):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  steps, mean, std = (np.array(x, float) for x in zip(*curve))
  fig, ax = plt.subplots(figsize=(5, 3.5))
  ax.plot(steps, mean, marker="o")
  ax.fill_between(steps, mean - std, mean + std, alpha=0.25)
  for (name, value), style in zip((baselines or {}).items(), ("--", ":")):
    if value is not None:
      ax.axhline(value, color="gray", linestyle=style, label=name)
  if any(v is not None for v in (baselines or {}).values()):
    ax.legend(fontsize=8)
  ax.set_xlabel("training step")
  ax.set_ylabel("episode return (mean ± 1 std)")
  ax.set_title(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "learning_curve.png"), dpi=100)
  plt.close(fig)
