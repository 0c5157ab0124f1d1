"""Config -> explicit objects (SHELL): networks, generators, DMCs, critics.

The only place that reads model/diffusion/critic config groups; everything it returns is a
plain function or module with explicit arguments.
"""
import dataclasses
from typing import Callable

import optax

from dmc_jax import networks
from dmc_jax.aligners import rl
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
                     "main job (validation.resolve_clip); pass a resolved config")
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


@dataclasses.dataclass(frozen=True)
class Critic:
  """The IQL critic of ``config.critic``: modules, apply functions, update and optimisers."""
  q_module: EnsembleQ
  v_module: ValueNet
  q_fn: Callable  # (q_params, obs, act) -> [num_q, ...] values of every head
  v_fn: Callable  # (v_params, obs) -> values
  update: Callable  # IQLState, batch -> (IQLState, metrics)
  tx_q: optax.GradientTransformation
  tx_v: optax.GradientTransformation

  def init(self, key, obs_dim: int, act_dim: int) -> iql.IQLState:
    return iql.init_iql(key, self.q_module, self.v_module, obs_dim, act_dim, self.tx_q,
                        self.tx_v)


def make_critic(config) -> Critic:
  """IQL with ``critic.num_q`` Q heads in one vmapped ensemble (2: the twin Q), LayerNorm by
  ``critic.layer_norm``."""
  cc = config.critic
  q_mod = EnsembleQ(tuple(cc.hidden_dims), num_heads=cc.num_q, layer_norm=cc.layer_norm)
  v_mod = ValueNet(tuple(cc.hidden_dims), layer_norm=cc.layer_norm)
  q_fn = lambda p, o, a: q_mod.apply({"params": p}, o, a)
  v_fn = lambda p, o: v_mod.apply({"params": p}, o)
  update = iql.make_iql_update(q_fn, v_fn, discount=cc.discount, expectile=cc.expectile,
                               target_update_rate=cc.target_update_rate)
  return Critic(q_mod, v_mod, q_fn, v_fn, update, optax.adam(cc.lr), optax.adam(cc.lr))


# ------------------------------------------------------------- the sampler alignment deploys
def uses_policy_gradient(config) -> bool:
  """The config has an RL stage trained with REINFORCE/PPO (a stochastic chain)."""
  a = config.align
  return "rl" in a.stages and a.rl.method in rl.PG_METHODS


def with_stochastic(config, dmc):
  """The DMC with its generator's stochastic knob set from ``align.rl.stochastic_scale``."""
  gen = dmc.sampling.gen
  if gen.stochastic:
    knob = {k: config.align.rl.stochastic_scale for k in gen.stochastic}
    gen = gen._replace(stochastic=knob)
  return dmc._replace(sampling=dmc.sampling._replace(gen=gen))


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
