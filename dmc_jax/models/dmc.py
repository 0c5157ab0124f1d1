"""The three diffusion controllers (DMCs): Diffuser, Decision Diffuser, Diffusion Policy. PURE.

Every model is a :class:`DMC`: ``init(key) -> params``, ``loss(params, key, segment) ->
(loss, metrics)`` on a normalised :class:`~dmc_jax.data.episodes.Segment`, and
``propose(params, key, history [B, K, O], num_candidates) -> Proposal`` (normalised). The
model never sees a config: the shell builds it with explicit arguments.

* **Diffuser** (Janner et al., 2022): diffuses ``[s_t, a_t]`` over horizon ``H`` with the
  temporal U-Net; the current state is in-painted and the plan's first action executed.
  Trained with random causal in-painting masks: the states of a random prefix of ``k``
  steps (``1 <= k <= max_known``) are given; the loss covers the rest.
* **Decision Diffuser** (Ajay et al., 2023): diffuses state-only plans; an inverse-dynamics
  MLP maps ``(s_t, s_{t+1})`` to ``a_t``. No return conditioning (select with Q instead).
* **Diffusion Policy** (Chi et al., 2023): diffuses an action chunk ``[L, A]`` conditioned on
  the last ``K`` observations (DiT-1D or MLP backbone).
"""
from typing import Callable, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from dmc_jax.data.episodes import Segment
from dmc_jax.diffusion.chain import Inpaint
from dmc_jax.models.generator import Generator
from dmc_jax.networks.critic import MLP

MODELS = ("diffuser", "decision_diffuser", "diffusion_policy")


class Proposal(NamedTuple):
  """``N`` candidates per batch element (normalised units).

  Attributes:
    actions: ``[B, N, E, A]`` the first ``E`` actions to execute.
    plan_obs: ``[B, N, H, O]`` planned states (planners) or ``None``.
    plan_actions: ``[B, N, H - 1, A]`` the plan's actions between consecutive planned
      states (planners) or ``None``.
  """
  actions: jax.Array
  plan_obs: Optional[jax.Array]
  plan_actions: Optional[jax.Array]


class Sampling(NamedTuple):
  """How a DMC turns contexts into samples; what the aligners work with.

  Attributes:
    gen: the denoiser's :class:`~dmc_jax.models.generator.Generator`.
    get: ``params -> denoiser params`` (the part the aligners adapt).
    put: ``(params, denoiser_params) -> params``.
    prepare: ``(key, history [B, K, O]) -> (x_T [B, ...], cond, inpaint)`` (normalised units;
      ``cond`` and ``inpaint`` may be ``None``): one sample per context.
    decode: ``(params, x_0 [B, ...]) -> Proposal`` with ``N`` = 1 squeezed: ``actions
      [B, E, A]``, plans ``[B, H, O]`` / ``[B, H - 1, A]`` or ``None``.
    loss_weights: per-entry weights of the pretraining loss (broadcastable to one sample,
      e.g. Diffuser's ``action_weight`` on the first action) or ``None``; the aligners' own
      denoising errors (DPO, SFT, the cascade) use the same weights.
  """
  gen: Generator
  get: Callable
  put: Callable
  prepare: Callable
  decode: Callable
  loss_weights: Optional[jax.Array] = None


class DMC(NamedTuple):
  kind: str
  init: Callable
  loss: Callable
  propose: Callable
  horizon: int        # H: planning horizon / action-chunk length
  history: int        # K: observations the model sees
  execute_steps: int  # E: actions executed per call
  sampling: Optional[Sampling] = None


def propose_with(sampling: Sampling, sample_fn: Optional[Callable] = None) -> Callable:
  """``propose(params, key, history [B, K, O], N) -> Proposal``: ``N`` samples per context
  from ``sample_fn(params, key, x_T, cond, inpaint) -> x_0`` (default: the generator)."""
  if sample_fn is None:
    sample_fn = lambda p, k, x_T, c, ip: sampling.gen.sample(sampling.get(p), k, x_T, c, ip).x_0

  def propose(params, key, history, num_candidates: int):
    b = history.shape[0]
    k_prep, k_sample = jax.random.split(key)
    x_T, cond, inpaint = sampling.prepare(k_prep, _repeat(history, num_candidates))
    x_0 = sample_fn(params, k_sample, x_T, cond, inpaint)
    return jax.tree.map(lambda a: _split(a, b, num_candidates), sampling.decode(params, x_0))
  return propose


def _identity_get(params):
  return params


def _identity_put(params, dparams):
  del params
  return dparams


def _repeat(x, n):
  """``[B, ...] -> [B * n, ...]`` (each row ``n`` times)."""
  return jnp.repeat(x, n, axis=0)


def _split(x, b, n):
  return x.reshape((b, n) + x.shape[1:])


def _zero_padding(x, mask):
  """Padded steps (``mask`` False) are set to 0, so that what the backbone sees there (a conv
  or an MLP mixes steps) never depends on the padding's content."""
  return jnp.where(mask[..., None], x, 0.0)


def causal_known_mask(key, batch: int, horizon: int, obs_dim: int, act_dim: int,
                      max_known: int):
  """``[B, H, O + A]`` bool: the states of the first ``k ~ U{1..max_known}`` steps."""
  k = jax.random.randint(key, (batch, 1), 1, max_known + 1)
  steps = jnp.arange(horizon)[None] < k                               # [B, H]
  is_obs = jnp.arange(obs_dim + act_dim) < obs_dim                    # [D]
  return steps[:, :, None] & is_obs[None, None]


def make_diffuser(denoise_fn: Callable, module: nn.Module, gen: Generator, *, obs_dim: int,
                  act_dim: int, horizon: int, max_known: int = 1, action_weight: float = 1.0,
                  execute_steps: int = 1) -> DMC:
  """Diffuser over ``x = [obs, act]`` of shape ``[B, H, O + A]``.

  Args:
    denoise_fn, module: the backbone (``module`` for ``init``).
    gen: loss and sampler.
    max_known: largest in-painted prefix during training (1 = only the current state).
    action_weight: loss weight of the first action (Diffuser uses 10).
  """
  dim = obs_dim + act_dim
  if not 1 <= max_known < horizon:
    raise ValueError(f"max_known must be in [1, horizon - 1 = {horizon - 1}], got {max_known}")

  def init(key):
    return module.init(key, jnp.zeros((1, horizon, dim)), jnp.zeros((1,)))["params"]

  weights = jnp.ones((horizon, dim)).at[0, obs_dim:].set(action_weight)

  def loss(params, key, seg: Segment):
    k_mask, k_loss = jax.random.split(key)
    x_0 = _zero_padding(jnp.concatenate([seg.obs, seg.actions], -1), seg.mask)
    b = x_0.shape[0]
    known = causal_known_mask(k_mask, b, horizon, obs_dim, act_dim, max_known)
    return gen.loss(params, k_loss, x_0, None, weights=weights, mask=seg.mask[..., None],
                    inpaint_mask=known)

  def prepare(key, history):
    x_T = jax.random.normal(key, (history.shape[0], horizon, dim))
    mask = jnp.zeros((horizon, dim), bool).at[0, :obs_dim].set(True)
    values = jnp.zeros_like(x_T).at[:, 0, :obs_dim].set(history[:, -1])
    return x_T, None, Inpaint(mask, values)

  def decode(params, x):
    del params
    obs, act = x[..., :obs_dim], x[..., obs_dim:]
    return Proposal(act[:, :execute_steps], obs, act[:, :-1])

  sampling = Sampling(gen, _identity_get, _identity_put, prepare, decode, weights)
  return DMC("diffuser", jax.jit(init), loss, propose_with(sampling), horizon, 1, execute_steps,
             sampling)


class InverseDynamics(nn.Module):
  """``a_t = f(s_t, s_{t+1})`` -> ``[..., A]`` (tanh: normalised actions lie in ``[-1, 1]``)."""
  act_dim: int
  hidden_dims: tuple = (256, 256)

  @nn.compact
  def __call__(self, obs, next_obs):
    return jnp.tanh(MLP(self.hidden_dims, self.act_dim)(jnp.concatenate([obs, next_obs], -1)))


def make_decision_diffuser(denoise_fn: Callable, module: nn.Module, gen: Generator, *,
                           obs_dim: int, act_dim: int, horizon: int,
                           inverse_hidden: tuple = (256, 256), max_known: int = 1,
                           execute_steps: int = 1) -> DMC:
  """Decision Diffuser: params ``{"diffusion": ..., "inverse": ...}`` trained jointly
  (denoising loss on states + MSE of the inverse dynamics on the data's state pairs)."""
  inv = InverseDynamics(act_dim, tuple(inverse_hidden))
  if not 1 <= max_known < horizon:
    raise ValueError(f"max_known must be in [1, horizon - 1 = {horizon - 1}], got {max_known}")

  def init(key):
    k_d, k_i = jax.random.split(key)
    return {"diffusion": module.init(k_d, jnp.zeros((1, horizon, obs_dim)),
                                     jnp.zeros((1,)))["params"],
            "inverse": inv.init(k_i, jnp.zeros((1, obs_dim)), jnp.zeros((1, obs_dim)))["params"]}

  def inverse(params, obs, next_obs):
    return inv.apply({"params": params["inverse"]}, obs, next_obs)

  def loss(params, key, seg: Segment):
    k_mask, k_loss = jax.random.split(key)
    b = seg.obs.shape[0]
    known = causal_known_mask(k_mask, b, horizon, obs_dim, 0, max_known)
    d_loss, _ = gen.loss(params["diffusion"], k_loss, _zero_padding(seg.obs, seg.mask), None,
                         mask=seg.mask[..., None], inpaint_mask=known)
    pred = inverse(params, seg.obs[:, :-1], seg.obs[:, 1:])
    pair = (seg.mask[:, :-1] & seg.mask[:, 1:])[..., None].astype(jnp.float32)
    inv_loss = jnp.sum(pair * jnp.square(pred - seg.actions[:, :-1])) / jnp.maximum(
        jnp.sum(pair) * act_dim, 1.0)
    return d_loss + inv_loss, {"diffusion_loss": d_loss, "inverse_loss": inv_loss,
                               "loss": d_loss + inv_loss}

  def prepare(key, history):
    x_T = jax.random.normal(key, (history.shape[0], horizon, obs_dim))
    mask = jnp.zeros((horizon, obs_dim), bool).at[0].set(True)
    values = jnp.zeros_like(x_T).at[:, 0].set(history[:, -1])
    return x_T, None, Inpaint(mask, values)

  def decode(params, plan):
    acts = inverse(params, plan[:, :-1], plan[:, 1:])
    return Proposal(acts[:, :execute_steps], plan, acts)

  sampling = Sampling(gen, lambda p: p["diffusion"], lambda p, d: dict(p, diffusion=d),
                      prepare, decode)
  return DMC("decision_diffuser", jax.jit(init), loss, propose_with(sampling), horizon, 1,
             execute_steps, sampling)


def make_diffusion_policy(denoise_fn: Callable, module: nn.Module, gen: Generator, *,
                          obs_dim: int, act_dim: int, chunk: int, history: int = 1,
                          execute_steps: int = 1) -> DMC:
  """Diffusion Policy: ``x = a_{t..t+L-1} [B, L, A]``, condition = the last ``K``
  observations flattened ``[B, K * O]``."""
  if not 1 <= execute_steps <= chunk:
    raise ValueError(f"execute_steps must be in [1, chunk = {chunk}], got {execute_steps}")

  def init(key):
    return module.init(key, jnp.zeros((1, chunk, act_dim)), jnp.zeros((1,)),
                       jnp.zeros((1, history * obs_dim)))["params"]

  def loss(params, key, seg: Segment):
    cond = seg.history.reshape(seg.history.shape[0], -1)
    mask = seg.mask[:, :chunk]
    return gen.loss(params, key, _zero_padding(seg.actions[:, :chunk], mask), cond,
                    mask=mask[..., None])

  def prepare(key, hist):
    b = hist.shape[0]
    return jax.random.normal(key, (b, chunk, act_dim)), hist.reshape(b, -1), None

  def decode(params, acts):
    del params
    return Proposal(acts[:, :execute_steps], None, None)

  sampling = Sampling(gen, _identity_get, _identity_put, prepare, decode)
  return DMC("diffusion_policy", jax.jit(init), loss, propose_with(sampling), chunk, history,
             execute_steps, sampling)
