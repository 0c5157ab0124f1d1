"""Config -> explicit objects (SHELL): networks, generators, DMCs, critics.

The only place that reads model/diffusion/critic config groups; everything it returns is a
plain function or module with explicit arguments.
"""
import optax

from dmc_jax import networks
from dmc_jax.critics import iql
from dmc_jax.models import dmc as dmc_lib
from dmc_jax.models import generator as gen_lib
from dmc_jax.networks.critic import EnsembleQ, ValueNet

BACKBONES = ("unet", "dit", "mlp")


def make_backbone(cm):
  if cm.backbone == "unet":
    return networks.TemporalUnet(dim=cm.unet_dim, dim_mults=tuple(cm.unet_dim_mults),
                                 kernel_size=cm.unet_kernel, attention=cm.unet_attention)
  if cm.backbone == "dit":
    return networks.DiT1D(d_model=cm.dit_d_model, num_heads=cm.dit_heads, depth=cm.dit_depth)
  if cm.backbone == "mlp":
    return networks.MLPDenoiser(hidden_dim=cm.mlp_hidden, num_blocks=cm.mlp_blocks,
                                block_width=cm.mlp_width, time_dim=32, cond_dim=64)
  raise ValueError(f"config.model.backbone={cm.backbone!r} is invalid: one of {BACKBONES}")


def make_generator(config, denoise_fn, **overrides):
  d = config.diffusion
  kw = dict(sampler=d.sampler, schedule=d.schedule, train_steps=d.train_steps,
            sample_steps=d.sample_steps, pred_type=d.pred_type,
            clip_x0=d.clip_x0 if d.clip_x0 > 0 else None, ddim_eta=d.ddim_eta)
  kw.update(overrides)
  if "clip_x0" not in overrides and d.clip_x0 < 0:
    raise ValueError("config.diffusion.clip_x0=-1 (auto) is resolved from the data by the "
                     "main job (offline.resolve_clip); pass a resolved config")
  return gen_lib.make_generator(denoise_fn, **kw)


def make_dmc(config, obs_dim: int, act_dim: int, **gen_overrides) -> dmc_lib.DMC:
  cm = config.model
  module = make_backbone(cm)
  fn = networks.make_denoise_fn(module)
  gen = make_generator(config, fn, **gen_overrides)
  if cm.kind == "diffuser":
    return dmc_lib.make_diffuser(fn, module, gen, obs_dim=obs_dim, act_dim=act_dim,
                                 horizon=cm.horizon, max_known=cm.max_known,
                                 action_weight=cm.action_weight,
                                 execute_steps=cm.execute_steps)
  if cm.kind == "decision_diffuser":
    return dmc_lib.make_decision_diffuser(fn, module, gen, obs_dim=obs_dim, act_dim=act_dim,
                                          horizon=cm.horizon, max_known=cm.max_known,
                                          inverse_hidden=tuple(cm.inverse_hidden),
                                          execute_steps=cm.execute_steps)
  if cm.kind == "diffusion_policy":
    return dmc_lib.make_diffusion_policy(fn, module, gen, obs_dim=obs_dim, act_dim=act_dim,
                                         chunk=cm.horizon, history=cm.history,
                                         execute_steps=cm.execute_steps)
  raise ValueError(f"config.model.kind={cm.kind!r} is invalid: one of {dmc_lib.MODELS}")


def make_critic(config):
  """``(q_module, v_module, q_fn, v_fn, update_fn, tx_q, tx_v)`` for IQL: ``critic.num_q``
  Q heads in one vmapped ensemble (2: the twin Q), LayerNorm by ``critic.layer_norm``."""
  cc = config.critic
  q_mod = EnsembleQ(tuple(cc.hidden_dims), num_heads=cc.num_q, layer_norm=cc.layer_norm)
  v_mod = ValueNet(tuple(cc.hidden_dims), layer_norm=cc.layer_norm)
  q_fn = lambda p, o, a: q_mod.apply({"params": p}, o, a)
  v_fn = lambda p, o: v_mod.apply({"params": p}, o)
  update = iql.make_iql_update(q_fn, v_fn, discount=cc.discount, expectile=cc.expectile,
                               target_update_rate=cc.target_update_rate)
  return q_mod, v_mod, q_fn, v_fn, update, optax.adam(cc.lr), optax.adam(cc.lr)
