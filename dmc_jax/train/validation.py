"""Config validation (SHELL helper): every rule of the job's config in one place, checked
before the workdir is touched. One error form: ``config.KEY=VALUE is invalid: WHAT IS
ALLOWED``.

Rules that a constructor already enforces are checked by calling that constructor's check
(``check_horizon``, ``gym_data.check_dataset_id``, the builders' name tables) and re-raised
with the config key; the cross-group rules are written here.
"""
import numpy as np

from dmc_jax.aligners import base as base_lib
from dmc_jax.aligners import cascade as cascade_lib
from dmc_jax.aligners import dpo, rewards, rl, sequential, sft
from dmc_jax.critics import selection as sel
from dmc_jax.data import episodes as ep_lib
from dmc_jax.data import gym_data
from dmc_jax.envs import nav1d
from dmc_jax.models import dmc as dmc_lib
from dmc_jax.models import generator as gen_lib
from dmc_jax.networks.temporal_unet import check_horizon
from dmc_jax.train import builders
from dmc_jax.train import sharding
from dmc_jax.train.builders import uses_policy_gradient
from dmc_jax.train.schema import check_schema

STAGES = ("rl", "dpo", "sft")
DEPLOY_SAMPLERS = ("rl", "config")
DYNAMICS_MODELS = ("auto", "known", "learned")
CASCADE_MODES = cascade_lib.MODES


def _bad(key, value, allowed):
  raise ValueError(f"config.{key}={value!r} is invalid: {allowed}")


def sampling_steps(config) -> int:
  """The chain length of the configured sampler."""
  d = config.diffusion
  if d.sampler == "ddpm":
    return d.train_steps
  return max(d.sample_steps, 2) if d.sampler == "sde" else d.sample_steps


def validate_config(config) -> None:
  """Raises ``ValueError`` naming the key, the value and what is allowed (before any work)."""
  bad = _bad

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
  one_of("eval.selection", config.eval.selection, sel.SELECTIONS)
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
  if config.critic.get("split_heads", False) and config.critic.num_q < 4:
    bad("critic.split_heads", True, f"num_q >= 4 (two heads per half), not num_q = "
        f"{config.critic.num_q}")
  if config.critic.lcb_coef < 0:
    bad("critic.lcb_coef", config.critic.lcb_coef, "a non-negative number")
  if not 0 <= config.critic.discount <= 1:
    bad("critic.discount", config.critic.discount, "a number in [0, 1]")
  if config.train.eval_every < 0:
    bad("train.eval_every", config.train.eval_every, "0 (end only) or a positive integer")
  one_of("train.parallel", config.train.parallel, sharding.PRETRAIN_PARALLEL)
  n_dev = sharding.mesh_size(sharding.job_mesh(config.train.parallel))
  for key in ("critic.batch_size", "train.batch_size"):
    group, name = key.split(".")
    if config[group][name] % n_dev:
      bad(key, config[group][name], f"a multiple of the {n_dev} devices the pretraining "
          "mesh splits each batch over (train.parallel='mesh'; 'none' uses one device)")
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
  validate_align(config, sampling_steps(config))


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


def validate_align(config, num_sampling_steps: int) -> None:
  """The ``align`` group: one error naming the key, the value and what is allowed."""
  a = config.align

  def bad(key, value, allowed):
    _bad(f"align.{key}", value, allowed)

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
  for key in ("tol", "gain_se", "drop_tol", "drop_min"):
    if not a[key] >= 0:
      bad(key, a[key], "a non-negative number")
  if not 0 < a.lr_decay <= 1:
    bad("lr_decay", a.lr_decay, "a number in (0, 1]")
  if a.lr_decay_scope not in sequential.LR_DECAY_SCOPES:
    bad("lr_decay_scope", a.lr_decay_scope, f"one of {sequential.LR_DECAY_SCOPES}")
  if a.parallel not in sharding.PARALLEL:
    bad("parallel", a.parallel, f"one of {sharding.PARALLEL}")
  for s in a.eval_selections:
    if s not in sel.SELECTIONS:
      bad("eval_selections", tuple(a.eval_selections), f"selections from "
          f"{sel.SELECTIONS}")
  if a.curve_selection not in sel.SELECTIONS:
    bad("curve_selection", a.curve_selection, f"one of {sel.SELECTIONS}")
  for s in tuple(a.guard_selections):
    if s not in sel.SELECTIONS or s == a.curve_selection:
      bad("guard_selections", tuple(a.guard_selections),
          f"selections from {sel.SELECTIONS} other than curve_selection={a.curve_selection!r}")
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
  if not 0 < a.online.mix <= 1:
    bad("online.mix", a.online.mix, "a share in (0, 1] of each critic batch")
  for key in ("episodes", "critic_steps", "capacity"):
    if not (isinstance(a.online[key], int) and a.online[key] >= 1):
      bad(f"online.{key}", a.online[key], "a positive integer")
  if a.online.selection and a.online.selection not in sel.SELECTIONS:
    bad("online.selection", a.online.selection,
        f"'' (the deployed eval.selection) or one of {sel.SELECTIONS}")
  if a.reward not in rewards.KINDS:
    bad("reward", a.reward, f"one of {rewards.KINDS}")
  planner = config.model.kind != "diffusion_policy"
  if a.reward != "first" and not planner and config.model.execute_steps > 1:
    bad("reward", a.reward, "'first' for a diffusion policy that executes "
        f"{config.model.execute_steps} actions (it plans no states to score the rest with)")
  if a.dynamics_coef < 0:
    bad("dynamics_coef", a.dynamics_coef, "a non-negative number")
  if a.dynamics_model not in DYNAMICS_MODELS:
    bad("dynamics_model", a.dynamics_model, f"one of {DYNAMICS_MODELS}")
  if a.dynamics_coef > 0 and not planner:
    bad("dynamics_coef", a.dynamics_coef, "0 for a diffusion policy (it plans no states "
        "whose dynamics could be checked)")
  if a.dynamics_coef > 0 and a.dynamics_model == "known" and config.task != "nav1d":
    bad("dynamics_model", a.dynamics_model, "'learned' or 'auto' on this task (Nav1D is the "
        "only task with a known dynamics model here)")
  if not (isinstance(a.dynamics_steps, int) and a.dynamics_steps >= 1):
    bad("dynamics_steps", a.dynamics_steps, "a positive integer")
  if not (isinstance(a.seed, int) and not isinstance(a.seed, bool) and 0 <= a.seed < 2**31):
    bad("seed", a.seed, "an integer in [0, 2**31) (0: the job's own alignment keys)")
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
  if a.rl.target_kl < 0:
    bad("rl.target_kl", a.rl.target_kl, "a non-negative number (0: no early stopping)")
  if uses_policy_gradient(config) and config.diffusion.sampler in ("ddim", "flow") and (
      not a.rl.stochastic_scale > 0):
    bad("rl.stochastic_scale", a.rl.stochastic_scale, f"> 0 for {a.rl.method} with "
        f"{config.diffusion.sampler} (a deterministic chain has no log-probs)")
  if a.sft.rank not in sft.RANKS:
    bad("sft.rank", a.sft.rank, f"one of {sft.RANKS}")
