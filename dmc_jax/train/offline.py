"""The offline pipeline (SHELL): data -> IQL critic -> DMC pretraining -> evaluation.

Writes into ``workdir``: ``config.json``, ``metrics.jsonl`` (every loss and evaluation),
``checkpoints/{critic,dmc}`` (orbax, after every chunk), ``learning_curve.png``,
``results.json``, ``results.md`` and ``model/`` (the bundle evaluation needs).

Re-running the same command on the same workdir resumes from the latest checkpoints; a run
killed at any moment and resumed ends with the same parameters and metrics (see
``launch/fault_injection.py``).
"""
import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from dmc_jax.critics import iql
from dmc_jax.critics import selection as sel
from dmc_jax.critics.selection import SELECTIONS
from dmc_jax.data import episodes as ep_lib
from dmc_jax.data import gym_data, minari_io, nav1d_data
from dmc_jax.envs import nav1d
from dmc_jax.eval import coherency, report, rollout as rollout_lib
from dmc_jax.models import dmc as dmc_lib
from dmc_jax.models import generator as gen_lib
from dmc_jax.models import policy as policy_lib
from dmc_jax.networks.temporal_unet import check_horizon
from dmc_jax.train import builders
from dmc_jax.train import checkpoint
from dmc_jax.train import logging as logging_lib
from dmc_jax.train import sharding
from dmc_jax.train import step as step_lib


# ---------------------------------------------------------------------------- validation
def check_schema(config, reference=None, prefix="config") -> None:
  """Unknown keys, missing keys and wrong types against the reference config
  (``configs/nav1d.py``'s ``base_config``): one error naming the key."""
  if reference is None:
    from configs import nav1d as nav1d_config
    reference = nav1d_config.base_config()
  for key in config.keys():
    if key not in reference:
      raise ValueError(f"{prefix}.{key} is not a known key; known keys of {prefix}: "
                       f"{sorted(reference.keys())}")
  for key in reference.keys():
    if key not in config:
      raise ValueError(f"{prefix}.{key} is missing (default {reference[key]!r})")
    value, ref = config[key], reference[key]
    if hasattr(ref, "keys"):
      if not hasattr(value, "keys"):
        raise ValueError(f"{prefix}.{key} must be a group of keys, got {value!r}")
      check_schema(value, ref, f"{prefix}.{key}")
      continue
    ok = (isinstance(value, type(ref)) and not (isinstance(value, bool) and
                                                 not isinstance(ref, bool))) or (
        isinstance(ref, float) and isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(ref, (tuple, list)) and isinstance(value, (tuple, list)))
    if not ok:
      raise ValueError(f"{prefix}.{key}={value!r} has type {type(value).__name__}; expected "
                       f"{type(ref).__name__} (like the default {ref!r})")


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

  check_schema(config)
  one_of("task", config.task, ("nav1d", "minari"))
  if config.task == "nav1d":
    one_of("data.dataset", config.data.dataset, nav1d.DATASET_KINDS)
  else:
    try:
      gym_data.check_dataset_id(config.data.dataset)
    except ValueError as e:
      bad("data.dataset", config.data.dataset, str(e))
  one_of("data.normalizer", config.data.normalizer, ep_lib.NORMALIZERS)
  one_of("model.kind", config.model.kind, dmc_lib.MODELS)
  one_of("model.backbone", config.model.backbone, builders.BACKBONES)
  one_of("diffusion.sampler", config.diffusion.sampler, gen_lib.SAMPLERS)
  one_of("diffusion.schedule", config.diffusion.schedule, tuple(gen_lib.SCHEDULES))
  one_of("diffusion.pred_type", config.diffusion.pred_type, ("eps", "x0", "v"))
  one_of("eval.selection", config.eval.selection, SELECTIONS)
  positive("env.horizon", "env.step_size", "env.max_steps", "data.num_episodes",
           "data.reward_scale",
           "critic.steps", "critic.batch_size", "critic.lr", "model.horizon", "model.history",
           "model.execute_steps", "diffusion.train_steps", "diffusion.sample_steps",
           "train.steps", "train.batch_size", "train.lr", "train.log_every",
           "eval.num_episodes", "eval.curve_episodes", "eval.num_candidates",
           "eval.coherency_tol")
  if config.diffusion.sampler == "ddim" and (
      config.diffusion.sample_steps > config.diffusion.train_steps):
    bad("diffusion.sample_steps", config.diffusion.sample_steps,
        f"at most diffusion.train_steps={config.diffusion.train_steps} for DDIM")
  if config.diffusion.clip_x0 < 0 and config.diffusion.clip_x0 != -1:
    bad("diffusion.clip_x0", config.diffusion.clip_x0, "-1 (auto: the normalised data's "
        "range), 0 (no clip) or a positive bound")
  if not 0 <= config.train.ema_decay < 1:
    bad("train.ema_decay", config.train.ema_decay, "a number in [0, 1)")
  if not 0 < config.critic.expectile < 1:
    bad("critic.expectile", config.critic.expectile, "a number in (0, 1)")
  one_of("critic.q_agg", config.critic.q_agg, sel.Q_AGGS)
  if not (isinstance(config.critic.num_q, int) and config.critic.num_q >= 1):
    bad("critic.num_q", config.critic.num_q, "a positive integer (the number of Q heads)")
  if config.critic.lcb_coef < 0:
    bad("critic.lcb_coef", config.critic.lcb_coef, "a non-negative number")
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
  from dmc_jax.train import align as align_lib
  align_lib.validate(config, sampling_steps(config))


CLIP_FIELDS = {"diffusion_policy": ("actions",), "diffuser": ("obs", "actions"),
               "decision_diffuser": ("obs",)}


def field_ranges(config, trans_n) -> dict:
  """``{field: largest |normalised value|}`` of what the model diffuses (DP: actions;
  Diffuser: observations and actions; DD: observations)."""
  out = {}
  for f in CLIP_FIELDS[config.model.kind]:
    x = np.asarray(getattr(trans_n, f))
    out[f] = float(np.max(np.abs(x))) if x.size else 0.0
  return out


def resolve_clip(config, trans_n):
  """``diffusion.clip_x0 = -1`` (auto) -> a copy of the config whose clip is the normalised
  data's range (the largest of :func:`field_ranges`): the predicted ``x0`` stays bounded at
  the first, noisiest steps (with a cosine schedule ``alpha_T`` is ~0 and an unclipped
  eps-model's ``x0`` estimate can explode: unclipped, a DP on Hopper's gaussian-normalised
  data returned -600), and no value of the data is cut. Any other value is returned as is."""
  if config.diffusion.clip_x0 >= 0:
    return config
  resolved = config.copy_and_resolve_references()
  resolved.diffusion.clip_x0 = float(np.float32(max(field_ranges(config, trans_n).values())))
  return resolved


def check_clip(config, trans_n) -> None:
  """``diffusion.clip_x0`` must not cut the normalised data: the samplers clip the predicted
  ``x0`` at every step, so a clip inside the data's range removes the tails of the very
  distribution the model learned (with the exact denoiser of N(0, 1) and a clip at 1 the
  samples' variance falls to ~0.5). Checked on what the model diffuses."""
  clip = float(config.diffusion.clip_x0)
  if clip <= 0:
    return
  for f, top in field_ranges(config, trans_n).items():
    if top > clip * (1 + 1e-5):
      raise ValueError(
          f"config.diffusion.clip_x0={clip:g} cuts the normalised data: the dataset's {f} "
          f"reach {top:.4g} in data.normalizer={config.data.normalizer!r} units; set "
          f"diffusion.clip_x0=-1 (auto: the data's range), 0 (no clip) or at least {top:.4g}")


def sampling_steps(config) -> int:
  """The chain length of the configured sampler."""
  d = config.diffusion
  if d.sampler == "ddpm":
    return d.train_steps
  return max(d.sample_steps, 2) if d.sampler == "sde" else d.sample_steps


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
  gym_data.ensure_dataset(config.data.dataset, num_episodes=config.data.num_episodes,
                          seed=config.data.collect_seed)
  ds = minari_io.open_dataset(config.data.dataset)
  env = ds.recover_environment()
  eps, _ = minari_io.load_episodes(config.data.dataset, env.observation_space.shape,
                                   env.action_space.shape)
  meta = ds.storage.metadata
  ref = (meta.get("ref_min_score"), meta.get("ref_max_score"))
  return eps, {"dataset_id": config.data.dataset, "env_spec": env.spec,
               "ref_scores": None if None in ref else tuple(float(x) for x in ref)}


def _chunked(start, total, chunk):
  done = start
  while done < total:
    n = min(chunk, total - done)
    yield done, n
    done += n


PHASES = ("critic", "dmc", "align", "eval")
_PREFIX_PHASE = {"critic": 0, "train": 1, "curve": 1, "align": 2, "cascade": 2, "eval": 3}
# Keys that may change between a run and its resumption (they do not change what is trained).
RESUMABLE_KEYS = ("train.steps", "critic.steps")
RESUMABLE_GROUPS = ("eval.",)


def _row_phase(row) -> int:
  for k in row:
    if "/" in k:
      return _PREFIX_PHASE.get(k.split("/")[0], 3)
  return 3


# The pretraining phases do not depend on the ``align`` group: a pretrained workdir can be
# aligned again with other settings (after removing ``checkpoints/align``).
PRETRAIN_IGNORED = ("align.",)


def check_same_config(saved: dict, config, where: str, ignore: tuple = PRETRAIN_IGNORED,
                      hint: str = "use another --workdir, or the checkpoint's config") -> None:
  """A checkpoint made with another config is an error naming the differing keys."""
  now = traverse_util.flatten_dict(json.loads(config.to_json()), sep=".")
  old = traverse_util.flatten_dict(saved, sep=".")
  skip = RESUMABLE_GROUPS + tuple(ignore)
  diff = [k for k in sorted(set(now) | set(old)) if not k.startswith(skip)
          and k not in RESUMABLE_KEYS and now.get(k) != old.get(k)]
  if diff:
    shown = "; ".join(f"{k}: {old.get(k)!r} (checkpoint) vs {now.get(k)!r} (now)"
                      for k in diff[:6])
    raise checkpoint.CheckpointMismatchError(
        f"{where} holds a checkpoint made with a different config ({shown}); {hint}")


def summarize(metrics, name, done, step) -> dict:
  """Chunk means over the finite updates; all updates non-finite is an error (the state is
  unchanged, so the last checkpoint stays good)."""
  m = {k: np.asarray(v) for k, v in metrics.items()}
  bad = m.pop("nonfinite") > 0
  if bad.all():
    raise FloatingPointError(
        f"all {len(bad)} {name} updates of steps {done + 1}..{step} were non-finite and "
        f"skipped; the state (and the last checkpoint) is still that of step {done}")
  out = {k: float(v[~bad].mean()) for k, v in m.items()}
  out["nonfinite"] = float(bad.sum())
  return out


def run_phase(name: str, workdir: str, config, state, *, total: int, chunk: int, run_chunk,
              writer, log_fn, after_chunk=None):
  """Runs ``run_chunk(state, start, n) -> (state, metrics)`` from the latest checkpoint of
  ``workdir/checkpoints/<name>`` to ``total`` steps, saving after every chunk.

  Randomness depends only on the step index, so a resumed phase redraws the same keys and ends
  bit-for-bit where an uninterrupted one would (on CPU).
  """
  phase = PHASES.index(name)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints", name),
                                 max_to_keep=config.train.keep_checkpoints)
  try:
    restored = ckpt.restore(state)
    start = 0
    if restored is not None:
      check_same_config(restored.meta.get("config", {}), config, ckpt.directory)
      state, start = restored.tree, restored.step
      print(f"resumed {name} from step {start} ({ckpt.directory})", flush=True)
    if start < total:  # rows this phase (and every later one) will write again
      writer.rewind(lambda r: _row_phase(r) < phase or (
          _row_phase(r) == phase and r["step"] <= start))
    meta = {"config": json.loads(config.to_json()), "phase": name}
    progress = logging_lib.Progress(f"train {name}", total)
    for done, n in _chunked(start, total, chunk):
      state, m = run_chunk(state, done, n)
      step = done + n
      m = summarize(m, name, done, step)
      log_fn(step, m, progress)
      if after_chunk is not None:
        after_chunk(state, step)
      ckpt.save(step, state, meta)
  finally:
    ckpt.close()
  return state


# -------------------------------------------------------------------------------- critic
def train_critic(config, trans_n, key, writer, workdir):
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

  def log(step, m, progress):
    writer.write_scalars(step, {f"critic/{k}": v for k, v in m.items()})
    progress.update(step, f"q_loss {m['q_loss']:.4f} v_loss {m['v_loss']:.4f}")

  state = run_phase("critic", workdir, config, state, total=cc.steps,
                    chunk=config.train.log_every,
                    run_chunk=lambda st, start, n: run(st, start, n, trans_n), writer=writer,
                    log_fn=log)
  return state, q_fn, v_fn


# ---------------------------------------------------------------------------- evaluation
def make_evaluator(config, dmc, obs_norm, act_norm, q_fn, v_fn, env_info):
  """``evaluate(params, critic_params, key, num_episodes) -> (metrics, per_episode)``: a dict
  of floats, and per-episode arrays (``return``; ``success`` where the env reports it), in the
  order of the episode seeds drawn from ``key`` (jit inside). ``first`` (the sampler alone)
  draws one candidate: the first of ``eval.num_candidates`` has the same distribution."""
  e = config.eval
  act = policy_lib.make_policy(dmc, obs_norm=obs_norm, act_norm=act_norm,
                               selection=e.selection,
                               num_candidates=1 if e.selection == "first" else e.num_candidates,
                               q_fn=q_fn, v_fn=v_fn, temperature=e.temperature,
                               expectile=config.critic.expectile,
                               q_agg=config.critic.q_agg, lcb_coef=config.critic.lcb_coef)
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

  disc = jnp.asarray(config.critic.discount ** np.arange(config.env.horizon), jnp.float32)

  def critic_gap(critic_params, out):
    """The critic's over-estimation at the start: its value of the first executed action
    (heads combined as in selection) minus the discounted return that followed (in the
    critic's reward units)."""
    q0 = sel.aggregate_heads(q_fn(critic_params[0], obs_norm.normalize(out["obs"][:, 0]),
                                  act_norm.normalize(out["actions"][:, 0])),
                             config.critic.q_agg, config.critic.lcb_coef)
    ret = jnp.sum(out["rewards"] * disc[None], 1) * config.data.reward_scale
    return jnp.mean(q0 - ret)

  @functools.partial(jax.jit, static_argnums=3)
  def evaluate(params, critic_params, key, num_episodes):
    out = run(params, critic_params, key, num_episodes)
    metrics = {"return_mean": jnp.mean(out["returns"]), "return_std": jnp.std(out["returns"]),
               "behaviour_density": coherency.policy_coherency(
                   density, out["t"], out["obs"], out["actions"], out["alive"]),
               "critic_gap": critic_gap(critic_params, out)}
    if "plan_obs" in out["info"]:
      w = out["replanned"][:, None] & jnp.swapaxes(out["alive"], 0, 1)
      share, err = coherency.plan_coherency(err_fn, out["info"]["plan_obs"],
                                            out["info"]["plan_actions"],
                                            config.eval.coherency_tol, w)
      metrics.update(plan_coherency=share, plan_dynamics_error=err)
    return metrics, out["returns"]

  def wrapped(params, critic_params, key, num_episodes):
    # One placement for every call (the aligned params come back replicated over the
    # alignment's mesh, the reference's uncommitted): otherwise each compiles again.
    params, critic_params, key = sharding.on_first_device((params, critic_params, key))
    metrics, returns = evaluate(params, critic_params, key, num_episodes)
    return {k: float(v) for k, v in metrics.items()}, {"return": np.asarray(returns)}
  return wrapped


def _gym_evaluator(config, dmc, act, env_info):
  import gymnasium as gym
  from dmc_jax.eval import gym_rollout
  spec = env_info["env_spec"]
  act_jit = jax.jit(act)

  def evaluate(params, critic_params, key, num_episodes):
    params, critic_params = sharding.on_first_device((params, critic_params))
    fn = lambda k, hist: act_jit(params, critic_params, k, jnp.asarray(hist))[0]
    out = gym_rollout.rollout_gym(lambda: gym.make(spec), fn, key, num_episodes=num_episodes,
                                  max_steps=config.env.max_steps, history=dmc.history,
                                  execute_steps=dmc.execute_steps)
    r = out["returns"]
    m = {"return_mean": float(np.mean(r)), "return_std": float(np.std(r))}
    per_episode = {"return": np.asarray(r)}
    if "success" in out:
      m["success_rate"] = float(np.mean(out["success"]))
      per_episode["success"] = np.asarray(out["success"])
    if env_info.get("ref_scores"):
      m["normalized_score"] = normalized_score(np.mean(r), env_info["ref_scores"])
    return m, per_episode
  return evaluate


def normalized_score(ret, ref_scores) -> float:
  """D4RL's normalised score ``100 * (R - R_random) / (R_expert - R_random)`` (the formula of
  :func:`minari.get_normalized_score`, from the dataset's ``ref_min_score`` / ``ref_max_score``)."""
  lo, hi = ref_scores
  return float(100.0 * (ret - lo) / (hi - lo))


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
  config_path = os.path.join(workdir, "config.json")
  if os.path.exists(config_path):  # resuming: the same config, or a clear error before any work
    with open(config_path) as f:
      check_same_config(json.load(f), config, workdir)
  os.makedirs(workdir, exist_ok=True)
  _write_atomic(config_path, config.to_json(indent=1))
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
                                                     actions=act_norm.normalize(trans.actions),
                                                     rewards=trans.rewards *
                                                     np.float32(config.data.reward_scale)))
  config = resolve_clip(config, trans_n)  # -1: the data's range (deterministic: resumes match)
  check_clip(config, trans_n)
  print(f"data {env_info['dataset_id']}: {len(eps.lengths)} episodes, {len(trans.obs)} "
        f"transitions, mean return {eps.returns().mean():.2f}", flush=True)

  timing = {"data": time.time() - t_start}
  t0 = time.time()
  critic, q_fn, v_fn = train_critic(config, trans_n, k_critic, writer, workdir)
  timing["critic"] = time.time() - t0
  t0 = time.time()
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
  eval_points = set(range(tc.eval_every, tc.steps + 1, tc.eval_every)) if tc.eval_every else set()
  chunk = tc.log_every if not tc.eval_every else int(np.gcd(tc.log_every, tc.eval_every))

  def log(step, m, progress):
    writer.write_scalars(step, {f"train/{k}": v for k, v in m.items()})
    if step % tc.log_every == 0 or step == tc.steps:
      progress.update(step, f"loss {m['loss']:.4f}")

  def curve_point(phase_state, step):
    if step in eval_points and step != tc.steps:
      em, _ = evaluate(phase_state["train_state"].ema_params, critic_params,
                       jax.random.fold_in(k_eval, step), config.eval.curve_episodes)
      writer.write_scalars(step, {f"curve/{k}": v for k, v in em.items()})
      print(f"eval @ {step}: return {em['return_mean']:.2f} ± {em['return_std']:.2f}",
            flush=True)

  # The normalisers travel with the state: a resumed run on other data is a clear error.
  phase_state = {"train_state": state, "obs_norm": obs_norm._asdict(),
                 "act_norm": act_norm._asdict()}

  def run_dmc(ps, start, n):
    ts, m = run(ps["train_state"], start, n, seg_data)
    return dict(ps, train_state=ts), m

  phase_state = run_phase("dmc", workdir, config, phase_state, total=tc.steps, chunk=chunk,
                          run_chunk=run_dmc, writer=writer, log_fn=log, after_chunk=curve_point)
  for k, norm in (("obs_norm", obs_norm), ("act_norm", act_norm)):
    saved, now = phase_state[k], norm._asdict()
    if not all(np.array_equal(saved[f], now[f]) for f in now):
      raise checkpoint.CheckpointMismatchError(
          f"the checkpoint's {k} differs from the one fitted on {env_info['dataset_id']}: the "
          "dataset changed since the checkpoint was made; use another --workdir")
  state = phase_state["train_state"]
  writer.rewind(lambda r: _row_phase(r) < 3)
  curve = [(r["step"], r["curve/return_mean"], r["curve/return_std"]) for r in writer.rows()
           if "curve/return_mean" in r]

  timing["dmc"] = time.time() - t0
  t0 = time.time()
  final, per_episode = evaluate(state.ema_params, critic_params,
                                jax.random.fold_in(k_eval, 0), config.eval.num_episodes)
  timing["eval"] = time.time() - t0
  t0 = time.time()
  returns = per_episode["return"]
  curve.append((tc.steps, final["return_mean"], final["return_std"]))
  aligned = None
  if config.align.stages:
    aligned = _align(config, workdir, dmc=dmc, base_params=state.ema_params, critic=critic,
                     q_fn=q_fn, v_fn=v_fn, seg_data=seg_data, trans_n=trans_n,
                     obs_norm=obs_norm, act_norm=act_norm, env_info=env_info, writer=writer,
                     key=jax.random.fold_in(key, 0x616C69), k_eval=k_eval)
    timing["align"] = time.time() - t0
    checkpoint.save(os.path.join(workdir, "model_reference"), tc.steps,
                    model_bundle(state.ema_params, critic_params, obs_norm, act_norm))
    checkpoint.save(os.path.join(workdir, "model"), tc.steps,
                    model_bundle(aligned["params"], aligned["critic_params"], obs_norm,
                                 act_norm))
  else:
    checkpoint.save(os.path.join(workdir, "model"), tc.steps,
                    model_bundle(state.ema_params, critic_params, obs_norm, act_norm))
  # Written after the alignment rows, so that a run resumed mid-alignment writes its rows in
  # the same order as an uninterrupted one.
  writer.write_scalars(tc.steps, {f"eval/{k}": v for k, v in final.items()})
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
      "timing_s": timing,  # this process's wall-clock per phase (compilation included)
  }
  if aligned is not None:
    results["align"] = aligned["results"]
    results["align_curve"] = aligned["curve"]
  _write_atomic(os.path.join(workdir, "results.json"), json.dumps(results, indent=1))
  write_table(workdir, results)
  plot_curve(workdir, curve, f"{dmc.kind} on {env_info['dataset_id']}",
             {"dataset": results["dataset_return"], "random policy": results["random_return"]})
  if aligned is not None:  # this run's rows and curve of the report (dmc_jax.eval.report)
    run = report.as_run(results, workdir)
    _write_atomic(os.path.join(workdir, "align_results.md"),
                  report.detail_table(report.rows_of([run])))
    report.plot_curves([run], os.path.join(workdir, "align_curve.png"))
  print(f"final: return {final['return_mean']:.2f} ± {final['return_std']:.2f} "
        f"(95% CI ± {results['return_ci95']:.2f}, {n_ep} episodes); dataset "
        f"{results['dataset_return']:.2f}; random {results['random_return']}", flush=True)
  return results


def _write_atomic(path, text):
  with open(path + ".tmp", "w") as f:
    f.write(text)
  os.replace(path + ".tmp", path)


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
  _write_atomic(os.path.join(workdir, "results.md"), "\n".join(lines) + "\n")


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


# ----------------------------------------------------------------------------- alignment
def _stats(returns) -> dict:
  r = np.asarray(returns, np.float64)
  n = len(r)
  return {"mean": float(r.mean()), "std": float(r.std()),
          "ci95": float(1.96 * r.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0}


def _align(config, workdir, *, dmc, base_params, critic, q_fn, v_fn, seg_data, trans_n,
           obs_norm, act_norm, env_info, writer, key, k_eval):
  """Aligns the pretrained DMC and evaluates reference vs aligned for every selection in
  ``align.eval_selections`` on the same episode seeds. The alignment curve and the
  environment guard evaluate with ``align.curve_selection``."""
  from dmc_jax.train import align as align_lib

  def evaluator(selection, model):
    cfg = config.copy_and_resolve_references()
    cfg.eval.selection = selection
    return make_evaluator(cfg, model, obs_norm, act_norm, q_fn, v_fn, env_info)

  # The policy that alignment optimises is the one evaluated before and after it.
  deployed = align_lib.deployed_dmc(config, dmc)
  other = None  # the RL stage's sampler, when the deployed one differs from it
  if align_lib.uses_policy_gradient(config) and config.align.deploy_sampler != "rl":
    other = align_lib.rl_sampler_dmc(config, dmc)
  _, _, _, _, iql_update, _, _ = builders.make_critic(config)
  out = align_lib.run_alignment(
      config, workdir, dmc=dmc, base_params=base_params, critic_state=critic, q_fn=q_fn,
      v_fn=v_fn, iql_update=iql_update, seg_data=seg_data, trans_n=trans_n, obs_norm=obs_norm,
      act_norm=act_norm, evaluate=evaluator(config.align.curve_selection, deployed),
      writer=writer, key=key)
  params = align_lib.merged_params(dmc, base_params, out["lora"], out["lora_scale"])
  ref_critic = (critic.q.params, critic.v.params)
  new_critic = (out["critic_state"].q.params, out["critic_state"].v.params)
  results = {}
  k = jax.random.fold_in(k_eval, 2)

  def row_of(ev, p, cp):
    m, r = ev(p, cp, k, config.eval.num_episodes)
    return dict(m, **{f"return_{s}": v for s, v in _stats(r["return"]).items()})

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
  return {"params": params, "critic_params": new_critic, "results": results,
          "curve": out["curve"]}
