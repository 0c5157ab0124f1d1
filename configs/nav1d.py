"""Nav1D offline pipeline: critic + DMC pretraining + evaluation (``python -m launch.train``).

``--config=configs/nav1d.py:MODEL,DATASET[,smoke]`` with MODEL in ``diffuser | dd | dp`` and
DATASET in ``partial | full | expert`` (or a Minari id / dataset path, for ``task=minari``).
The per-model files ``configs/nav1d_{diffuser,dd,dp}.py`` take ``DATASET[,smoke]``.
"""
import ml_collections

from dmc_jax.train.schema import base_config

MODEL_ALIASES = {"diffuser": "diffuser", "dd": "decision_diffuser",
                 "decision_diffuser": "decision_diffuser", "dp": "diffusion_policy",
                 "diffusion_policy": "diffusion_policy"}


def parse_arg(arg):
  parts = [p for p in (arg or "").split(",") if p]
  smoke = "smoke" in parts
  parts = [p for p in parts if p != "smoke"]
  return parts, smoke


# Decision Diffuser's alignment reward (the others keep the schema's `plan_q`), measured per
# planner on Nav1D `partial` and `full` (BUILD_NOTES, "The alignment reward per planner").
DD_ALIGN_REWARD = "first"


# Diffuser's RL stage: the Q-value gradient through the sampler (the paper's QV-PG; the
# method's defaults K = 2, regulariser 1.0) instead of PPO, for every suite. Measured on
# Nav1D's six DDIM cells (BUILD_NOTES, issue #14, "PPO or the Q-gradient per model"): on
# Diffuser every selection ends higher than with PPO on both datasets (`first` 15.85 / 11.01
# against 13.99 / 8.50), `argmax` within its CI, plan coherency up; on DP `full` `first` ends
# 9.5 lower than with PPO, and on DD `argmax` falls below its before-CI on both datasets, so
# they keep PPO. On MetaWorld `medium` (four tasks, BUILD_NOTES "MetaWorld: the Diffuser
# aligns with the Q-gradient") the RL visit is kept in 2 of 4 cells against PPO's 1, with
# `argmax` success after >= before in 3 of 4 (PPO: 3 of 4) and 40-76 % of PPO's alignment
# time. MuJoCo's Diffuser was measured with neither.
DIFFUSER_RL_METHOD = "qgrad"


def apply_model(c, model: str):
  kind = MODEL_ALIASES.get(model)
  if kind is None:
    raise ValueError(f"unknown model {model!r}; known: {sorted(MODEL_ALIASES)}")
  c.model.kind = kind
  if kind in ("diffuser", "decision_diffuser"):
    c.model.backbone = "unet"
    c.model.horizon = 16
    c.model.history = 1
    c.model.max_known = 4
    c.eval.num_candidates = 16
    c.train.batch_size = 128
  if kind == "diffuser":
    c.align.rl.method = DIFFUSER_RL_METHOD
  if kind == "decision_diffuser":
    # DD executes the inverse-dynamics action of its first planned transition and replans
    # every step; scoring that action alone beat the plan-level mean on both Nav1D cells, for
    # every selection. Diffuser keeps `plan_q`: its action is a free coordinate of the plan,
    # and `first` let RL buy first-action Q with plans that then lost `argmax` (full -2.4).
    c.align.reward = DD_ALIGN_REWARD
  return c


def apply_smoke(c):
  c.critic.steps, c.critic.hidden_dims = 200, (32, 32)
  c.train.steps, c.train.log_every, c.train.eval_every, c.train.batch_size = 100, 50, 50, 32
  c.model.unet_dim, c.model.unet_dim_mults = 8, (1, 2)
  c.model.mlp_hidden, c.model.mlp_width, c.model.mlp_blocks = 32, 64, 1
  c.model.dit_d_model, c.model.dit_heads, c.model.dit_depth = 16, 2, 1
  c.model.inverse_hidden = (32, 32)
  c.diffusion.train_steps, c.diffusion.sample_steps = 10, 4
  c.eval.num_episodes, c.eval.curve_episodes, c.eval.num_candidates = 8, 4, 4
  c.data.num_episodes = 100
  c.align.batch_size, c.align.updates_per_chunk, c.align.max_chunks = 8, 2, 2
  c.align.min_chunks, c.align.track_contexts = 1, 16
  c.align.rl.num_samples, c.align.sft.num_samples, c.align.dpo.num_samples = 4, 4, 2
  c.align.sft.lik_draws, c.align.cascade.updates, c.align.cascade.hidden = 2, 4, 16
  c.align.cascade.share_step = 2
  c.align.online.episodes, c.align.online.critic_steps = 4, 4
  if c.model.horizon > 8:
    c.model.horizon = 8
  return c


# The dynamics-consistency weight of every Nav1D planner cell (Diffuser and DD), chosen by a
# sweep on Diffuser `full` (BUILD_NOTES, issue #14): 0 / 20 / 80 / 250 kept 17 / 51 / 68 / 91 %
# of the pretrained plan coherency; 250 is the smallest that keeps >= 80 %.
NAV1D_PLANNER_DYNAMICS_COEF = 250.0

# Chunks per stage visit at most on Nav1D (the schema's default is 6), measured on the six
# DDIM cells (BUILD_NOTES, issue #14, "PPO or the Q-gradient per model"): the Diffuser's
# Q-gradient visits were still climbing at chunk 6 on both datasets, and with 12 `full`'s
# `first` ends beyond both CIs (11.01 -> 11.45) at the price of `partial`'s `expectation`
# (17.30 -> 16.41, still +4.2 over before); in the four PPO cells no visit makes a new best
# after chunk 6, so they give the same figures to every digit. The same for every Nav1D model and
# dataset; MetaWorld and MuJoCo keep 6 (not measured there).
NAV1D_MAX_CHUNKS = 12

# The entropy bonus of Nav1D's PPO models (DP and DD; the Diffuser aligns with the Q-gradient,
# where it was measured and not taken), chosen over alignment seeds on the four DDIM cells
# (BUILD_NOTES, issue #14, "How much one alignment run varies"). The deployed `argmax` after
# alignment, mean over seeds: DP `partial` 21.26 against 20.18 without it (not below its
# before-CI in 3 of 3 seeds against 0 of 3), DD `full` 22.98 against 21.35 (3 of 3 against
# 1 of 3; above it beyond both CIs in 2), DP `full` 25.74 against 25.55 (beyond both CIs in
# 3 of 3 against 2 of 3), DD `partial` 20.44 (one seed) against 20.45. The sampler alone
# (`first`) gains less on DP `full` (22.90 against 25.11) and DD `partial` (15.10 against
# 17.43), still beyond both CIs everywhere. MetaWorld and MuJoCo keep 0 (not measured there).
NAV1D_PPO_ENTROPY_COEF = 1.0


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  parts, smoke = parse_arg(arg)
  model = parts[0] if parts else "dp"
  dataset = parts[1] if len(parts) > 1 else "full"
  if len(parts) > 2:
    raise ValueError(f"config arg {arg!r}: expected MODEL,DATASET[,smoke]")
  c = apply_model(base_config(), model)
  c.data.dataset = dataset
  if c.model.kind in ("diffuser", "decision_diffuser"):  # Nav1D's known model
    c.align.dynamics_coef = NAV1D_PLANNER_DYNAMICS_COEF
  c.align.max_chunks = NAV1D_MAX_CHUNKS
  if c.align.rl.method == "ppo":
    c.align.rl.entropy_coef = NAV1D_PPO_ENTROPY_COEF
  return apply_smoke(c) if smoke else c
