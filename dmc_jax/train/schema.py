"""The job's config schema and defaults (owned by the package, not by an experiment file).

:func:`base_config` is every key the job reads, with its default (the Nav1D DP job);
experiment configs (``configs/*.py``) start from it and change values only.
:func:`check_schema` refuses unknown or missing keys and wrong types.
"""
import ml_collections


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
  c.data.reward_scale = 1.0  # rewards are multiplied by this for the critic (Q scale)

  c.critic = ml_collections.ConfigDict()
  # The critic's defaults were chosen by measurement (BUILD_NOTES, "The critic's ceiling"):
  # 30 000 steps let the values propagate over a whole episode (the target's EMA time is
  # 1 / 0.005 = 200 steps per backup), tau 0.99 makes V close to the in-sample maximum, and
  # ten heads with their LCB keep alignment off the actions the data does not cover.
  c.critic.hidden_dims = (128, 128)  # MLP widths of V and of every Q head
  c.critic.steps = 30000  # IQL optimiser steps
  c.critic.batch_size = 256  # transitions per step
  c.critic.lr = 3e-4  # Adam learning rate
  c.critic.discount = 0.99  # gamma
  c.critic.expectile = 0.99  # IQL expectile tau
  c.critic.target_update_rate = 0.005  # EMA rate of the target Q
  c.critic.num_q = 10  # Q heads (one vmapped ensemble; 2 = twin Q); the IQL target is their min
  c.critic.layer_norm = True  # LayerNorm in every critic layer (Q heads and V)
  c.critic.q_agg = "lcb"  # how the heads combine in selection and alignment rewards: min | lcb
  c.critic.lcb_coef = 1.0  # lcb: mean - lcb_coef * std over the heads (2 heads, 1.0 = min)
  # True: alignment rewards combine the first half of the Q heads and the deployed selection
  # the other half, so the controller does not rank candidates with the heads they were
  # pushed against (double-Q style decoupling; needs num_q >= 4). Training is unchanged.
  c.critic.split_heads = False

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
  c.diffusion.clip_x0 = 1.0  # clip the predicted x0 to [-c, c] in normalised units (0 = none,
  # -1 = auto: the data's range); must not cut the normalised data (checked): 1 suits minmax
  c.diffusion.ddim_eta = 0.0  # DDIM stochasticity

  c.train = ml_collections.ConfigDict()
  c.train.steps = 4000  # DMC optimiser steps
  c.train.batch_size = 256  # segments per step
  c.train.lr = 1e-3  # Adam learning rate
  c.train.ema_decay = 0.995  # EMA of weights used for evaluation
  c.train.log_every = 500  # steps per compiled chunk / progress line
  c.train.eval_every = 1000  # steps between learning-curve evaluations (0 = only at the end)
  # Critic and DMC pretraining: "mesh" splits every batch over all devices (of all processes)
  # with parameters replicated (GSPMD); "none" runs on one device. One device: identical.
  c.train.parallel = "mesh"
  c.train.keep_checkpoints = 3  # checkpoints kept per phase (saved after every chunk)

  c.align = ml_collections.ConfigDict()
  c.align.stages = ("rl", "dpo", "sft")  # stage order in each pass ((): no alignment)
  # Alignment seed: 0 = the job's alignment keys; another value redraws the optimisation's
  # randomness (adapter init, update keys, contexts, online roll-outs) on the same pretrained
  # model, the same tracked contexts and curve episodes (run-to-run spread of alignment).
  c.align.seed = 0
  c.align.passes = 1  # passes over the stages
  c.align.batch_size = 32  # contexts (dataset histories) per update, split over devices
  c.align.updates_per_chunk = 20  # updates between two scheduler decisions / checkpoints
  c.align.min_chunks = 2  # chunks before a plateau can end a stage
  c.align.max_chunks = 6  # chunks per stage visit at most
  c.align.patience = 2  # chunks without a gain above tol that count as a plateau
  c.align.tol = 0.02  # gain that counts, in units of the tracked reward's initial std
  # (only without per-context values); with them a gain beats the best by gain_se x paired SE
  c.align.gain_se = 2.0
  c.align.drop_tol = 3.0  # collapse: tracked reward below the best by this x paired SE
  c.align.drop_min = 0.05  # ... and by more than this x its initial spread over contexts
  c.align.spike_factor = 10.0  # |loss| above this times the stage's median is a collapse
  c.align.max_nonfinite = 0.5  # share of skipped (non-finite) updates that is a collapse
  c.align.lr_decay = 0.5  # learning-rate factor after each rollback
  # ... of the stage that rolled back ("stage") or of it and every later stage ("run")
  c.align.lr_decay_scope = "run"
  c.align.env_guard = 1.0  # revert a visit whose env return/success falls > this x paired SE
  c.align.curve_selection = "first"  # selection of the curve / guard evaluations (the sampler)
  # Further selections the environment guard also watches on the same curve seeds (a visit
  # is reverted when any of them falls), e.g. ("argmax",) for the deployed IDQL controller.
  c.align.guard_selections = ()
  c.align.max_rollbacks = 3  # rollbacks per stage visit before moving on
  c.align.lora_rank = 8  # LoRA rank on every dense/conv kernel of the denoiser
  c.align.lora_alpha = 8.0  # LoRA scale alpha / rank
  c.align.track_contexts = 256  # held-out contexts of the tracked reward
  c.align.parallel = "shard_map"  # none | pmap | shard_map (over all local devices)
  c.align.eval_selections = ("first", "argmax")  # selections evaluated before -> after
  c.align.reward = "plan_q"  # first | plan_q | plan_return_v (planners; a DP that executes
  # one action has no plan: every kind is Q of that action; configs/nav1d.apply_model sets
  # `first` for Decision Diffuser, measured better for it, BUILD_NOTES issue #14)
  c.align.dynamics_coef = 0.0  # planners: penalty x mean |T(s, a) - s'| of the plan
  # The model T of that penalty: known (Nav1D's own dynamics) | learned (an MLP fitted on the
  # dataset's transitions when alignment starts, models/dynamics.py) | auto (known where
  # the task has one, else learned).
  c.align.dynamics_model = "auto"
  c.align.dynamics_steps = 5000  # Adam steps of the learned model's fit (batch critic.batch_size)
  # (get_config sets NAV1D_PLANNER_DYNAMICS_COEF for Nav1D planners; off elsewhere: no
  # weight was measured there)
  c.align.deploy_sampler = "rl"  # rl: align and evaluate with the RL stage's stochastic
  # sampler (the policy optimised is the policy deployed) | config: diffusion.ddim_eta (the
  # RL sampler's after-rows are reported beside it)
  c.align.rl = ml_collections.ConfigDict()
  c.align.rl.method = "ppo"  # ppo | reinforce | qgrad
  c.align.rl.lr = 3e-3  # Adam learning rate (LoRA adapters)
  c.align.rl.num_samples = 8  # chains per context (advantage baseline = the context's mean)
  c.align.rl.epochs = 2  # PPO passes over each sampled batch
  c.align.rl.minibatches = 1  # PPO sample minibatches per pass
  c.align.rl.step_groups = 2  # PPO denoising-step groups per pass (steps shuffled per sample)
  c.align.rl.clip_eps = 0.01  # PPO ratio clip per denoising step (DPPO range; BUILD_NOTES #14)
  c.align.rl.kl_coef = 0.01  # weight of the per-step KL to the reference
  c.align.rl.credit = "uniform"  # uniform | decreasing | similarity (per-step credit)
  c.align.rl.credit_decay = 0.9  # decreasing credit: decay per step away from x_0
  c.align.rl.adv_clip = 5.0  # advantage clip (in stds)
  c.align.rl.stochastic_scale = 1.0  # DDIM eta / flow noise scale of the RL sampler
  c.align.rl.objective = "mixed"  # mean: E[r] of one sample | best_of_n: E[max of the samples]
  # (what argmax selection deploys) | mixed: the average of both advantages
  c.align.rl.last_k = 0  # REINFORCE/PPO: train only the last K stochastic steps (0 = all)
  c.align.rl.min_std = 0.0  # floor on every stochastic step's std (sampling and log-probs)
  c.align.rl.target_kl = 0.0  # PPO early stop: approx KL per denoising step (0 = off)
  c.align.rl.entropy_coef = 0.0  # nearest-neighbour entropy bonus of the candidates
  c.align.rl.num_grad_steps = (2,)  # qgrad: K per pass (the last one repeats)
  c.align.rl.reg_coef = 1.0  # qgrad: weight of ||x_0 - x_0_ref||^2 (same noise)
  c.align.dpo = ml_collections.ConfigDict()
  c.align.dpo.lr = 3e-3  # Adam learning rate (LoRA adapters)
  c.align.dpo.beta = 200.0  # DPO beta
  c.align.dpo.num_samples = 4  # samples per context; best and worst form the pair
  c.align.dpo.weighting = "constant"  # constant | snr | min_snr | sigmoid
  c.align.dpo.sample_from = "current"  # current | reference
  c.align.sft = ml_collections.ConfigDict()
  c.align.sft.lr = 1e-3  # Adam learning rate (LoRA adapters)
  c.align.sft.num_samples = 8  # samples per context
  c.align.sft.keep_frac = 0.25  # share of all samples kept (highest rewards)
  c.align.sft.lik_quantile = 0.2  # drop samples below this quantile of reference likelihood
  c.align.sft.lik_draws = 4  # noise draws of the likelihood proxy
  c.align.sft.sample_from = "current"  # current (iterated SFT) | reference
  c.align.sft.rank = "context"  # context (top per context) | centred | global (raw reward)
  c.align.cascade = ml_collections.ConfigDict()
  c.align.cascade.enabled = False  # train a cascade after the stages and append it
  c.align.cascade.mode = "latent"  # latent (share z_t) | inpaint (share a contiguous block)
  c.align.cascade.share_step = 5  # latent: chain step whose z_t the pair shares
  c.align.cascade.block = (0.5, 1.0)  # inpaint: shared block, fractions of the horizon
  c.align.cascade.num_candidates = 4  # alternatives generated per first sample
  c.align.cascade.updates = 100  # cascade optimiser steps
  c.align.cascade.lr = 1e-3  # Adam learning rate
  c.align.cascade.hidden = 128  # adapter MLP width
  c.align.cascade.passes = 1  # cascade passes at inference (1-2)
  c.align.online = ml_collections.ConfigDict()
  c.align.online.enabled = False  # roll out the aligned model and keep training the critic
  c.align.online.episodes = 16  # episodes rolled out after every chunk
  c.align.online.critic_steps = 50  # IQL steps after every chunk (half online data)
  c.align.online.capacity = 20000  # online transitions kept
  c.align.online.mix = 0.5  # share of each critic batch drawn from the online buffer
  # Selection of the online roll-outs over the evaluator's candidates: softmax samples by the
  # critic (IDQL's softmax(eval.temperature * (Q - V)), chosen by measurement over argmax and
  # first: BUILD_NOTES "Online roll-outs that explore"); "" = the deployed eval.selection
  c.align.online.selection = "softmax"

  c.eval = ml_collections.ConfigDict()
  c.eval.num_episodes = 64  # episode seeds of the final evaluation
  c.eval.curve_episodes = 16  # episode seeds of each learning-curve point
  c.eval.num_candidates = 8  # sampled candidates per action step (16 for planners)
  c.eval.selection = "argmax"  # expectation | argmax | softmax | expectile | first
  c.eval.temperature = 3.0  # softmax selection temperature on Q - V
  c.eval.coherency_tol = 0.025  # planners: |T(s, a) - s'| below this counts as coherent
  return c


def check_schema(config, reference=None, prefix="config") -> None:
  """Unknown keys, missing keys and wrong types against the reference config
  (:func:`base_config`): one error naming the key."""
  if reference is None:
    reference = base_config()
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
