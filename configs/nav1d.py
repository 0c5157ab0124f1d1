"""Nav1D offline pipeline: critic + DMC pretraining + evaluation (``python -m launch.train``).

``--config=configs/nav1d.py:MODEL,DATASET[,smoke]`` with MODEL in ``diffuser | dd | dp`` and
DATASET in ``partial | full | expert`` (or a Minari id / dataset path, for ``task=minari``).
The per-model files ``configs/nav1d_{diffuser,dd,dp}.py`` take ``DATASET[,smoke]``.
"""
import ml_collections

MODEL_ALIASES = {"diffuser": "diffuser", "dd": "decision_diffuser",
                 "decision_diffuser": "decision_diffuser", "dp": "diffusion_policy",
                 "diffusion_policy": "diffusion_policy"}


def parse_arg(arg):
  parts = [p for p in (arg or "").split(",") if p]
  smoke = "smoke" in parts
  parts = [p for p in parts if p != "smoke"]
  return parts, smoke


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0  # every key derives from this with fold_in
  c.task = "nav1d"  # nav1d (pure-JAX env, jit roll-outs) | minari (gymnasium env of the dataset)

  c.env = ml_collections.ConfigDict()
  c.env.task_seed = 0  # Nav1D reward sequence
  c.env.horizon = 32  # Nav1D episode length
  c.env.step_size = 0.1  # Nav1D step size gamma
  c.env.max_steps = 1000  # episode cap for gymnasium envs (task=minari)

  c.data = ml_collections.ConfigDict()
  c.data.dataset = "full"  # Nav1D: partial | full | expert; minari: a dataset id or path
  c.data.num_episodes = 1000  # episodes written when a Nav1D dataset is generated
  c.data.collect_seed = 0  # seed of the Nav1D behaviour roll-outs
  c.data.normalizer = "minmax"  # minmax | gaussian | none (observations and actions)

  c.critic = ml_collections.ConfigDict()
  c.critic.hidden_dims = (128, 128)  # MLP widths of V and both Q heads
  c.critic.steps = 3000  # IQL optimiser steps
  c.critic.batch_size = 256  # transitions per step
  c.critic.lr = 3e-4  # Adam learning rate
  c.critic.discount = 0.99  # gamma
  c.critic.expectile = 0.7  # IQL expectile tau
  c.critic.target_update_rate = 0.005  # EMA rate of the target Q

  c.model = ml_collections.ConfigDict()
  c.model.kind = "diffusion_policy"  # diffuser | decision_diffuser | diffusion_policy
  c.model.backbone = "mlp"  # unet | dit | mlp
  c.model.horizon = 4  # planning horizon (planners) or action chunk length (DP)
  c.model.history = 2  # observations the DP sees (planners use 1)
  c.model.execute_steps = 1  # actions executed per call before re-planning
  c.model.max_known = 1  # planners: largest random causal in-painted prefix in training
  c.model.action_weight = 10.0  # Diffuser: loss weight of the first action
  c.model.inverse_hidden = (128, 128)  # DD: inverse-dynamics MLP widths
  c.model.unet_dim = 16  # U-Net base width
  c.model.unet_dim_mults = (1, 2, 4)  # U-Net absolute width multipliers per level
  c.model.unet_kernel = 5  # U-Net conv kernel size
  c.model.unet_attention = False  # U-Net bottleneck self-attention
  c.model.dit_d_model = 64  # DiT width
  c.model.dit_heads = 4  # DiT heads
  c.model.dit_depth = 2  # DiT blocks
  c.model.mlp_hidden = 128  # MLP residual stream width
  c.model.mlp_blocks = 2  # MLP residual blocks
  c.model.mlp_width = 256  # MLP block inner width

  c.diffusion = ml_collections.ConfigDict()
  c.diffusion.sampler = "ddim"  # ddpm | ddim | sde | ode | flow (flow trains a velocity model)
  c.diffusion.schedule = "cosine"  # linear | cosine | vp
  c.diffusion.train_steps = 20  # training diffusion steps T (DDPM samples with all of them)
  c.diffusion.sample_steps = 10  # DDIM / SDE / ODE / flow sampling steps
  c.diffusion.pred_type = "eps"  # eps | x0 | v
  c.diffusion.clip_x0 = 1.0  # clip the predicted x0 to [-c, c] (0 = no clipping)
  c.diffusion.ddim_eta = 0.0  # DDIM stochasticity

  c.train = ml_collections.ConfigDict()
  c.train.steps = 4000  # DMC optimiser steps
  c.train.batch_size = 256  # segments per step
  c.train.lr = 1e-3  # Adam learning rate
  c.train.ema_decay = 0.995  # EMA of weights used for evaluation
  c.train.log_every = 500  # steps per compiled chunk / progress line
  c.train.eval_every = 1000  # steps between learning-curve evaluations (0 = only at the end)
  c.train.keep_checkpoints = 3  # checkpoints kept per phase (saved after every chunk)

  c.eval = ml_collections.ConfigDict()
  c.eval.num_episodes = 64  # episode seeds of the final evaluation
  c.eval.curve_episodes = 16  # episode seeds of each learning-curve point
  c.eval.num_candidates = 8  # sampled candidates per action step (16 for planners)
  c.eval.selection = "argmax"  # expectation | argmax | softmax | expectile | first
  c.eval.temperature = 3.0  # softmax selection temperature on Q - V
  c.eval.coherency_tol = 0.025  # planners: |T(s, a) - s'| below this counts as coherent
  return c


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
  if c.model.horizon > 8:
    c.model.horizon = 8
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  parts, smoke = parse_arg(arg)
  model = parts[0] if parts else "dp"
  dataset = parts[1] if len(parts) > 1 else "full"
  if len(parts) > 2:
    raise ValueError(f"config arg {arg!r}: expected MODEL,DATASET[,smoke]")
  c = apply_model(base_config(), model)
  c.data.dataset = dataset
  return apply_smoke(c) if smoke else c
