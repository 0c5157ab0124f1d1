"""Cascading: a second, conditional DMC ``p(x^r | x^cond)`` appended after the first. PURE.

The cascade's denoiser is the first model's denoiser (warm-started from its weights, adapted
with LoRA) plus a side network that sees ``x^cond``::

    f_c(x_t, t, (c, x^cond)) = f_first(x_t, t, c) + g(x_t, t, x^cond)

``g``'s output layer starts at zero (as ControlNet's zero convolutions), so the untrained
cascade *is* the first model, and it is always conditioned (``p = 1``). This works for every
backbone without changing its input layer.

Training pairs come from the first model: ``x^cond`` is its sample; ``num_candidates``
alternatives are generated *consistent with it*, either

* ``latent``: continuing ``x^cond``'s own chain from its latent ``z_t`` at ``share_step``
  with new noise (the sampler's stochastic knobs, e.g. DDIM ``eta``), or
* ``inpaint``: in-painting the contiguous block ``block`` (fractions of the horizon) of
  ``x^cond`` and regenerating the rest;

the best alternative ``x^r`` (by the critic) is kept when ``r(x^cond) < r(x^r)``, and the
cascade is trained with the ordinary diffusion loss on ``x^r`` given ``x^cond``. At inference
the cascade runs ``passes`` times after the first sampler, each pass conditioned on the
previous output (with the block in-painted from it in ``inpaint`` mode).
"""
import math
from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from dmc_jax.aligners import base
from dmc_jax.diffusion.chain import Inpaint
from dmc_jax.models import dmc as dmc_lib
from dmc_jax.networks import lora as lora_lib
from dmc_jax.networks.embeddings import mish, sinusoidal_embedding

MODES = ("latent", "inpaint")


class CascadeAdapter(nn.Module):
  """``g(x_t, t, x^cond)`` -> the shape of ``x_t``; zero at initialisation."""
  hidden: int = 128

  @nn.compact
  def __call__(self, x_t, t, x_cond):
    b = x_t.shape[0]
    h = jnp.concatenate([x_t.reshape(b, -1), x_cond.reshape(b, -1),
                         sinusoidal_embedding(t, 32)], -1)
    h = mish(nn.Dense(self.hidden)(h))
    h = mish(nn.Dense(self.hidden)(h))
    out = nn.Dense(math.prod(x_t.shape[1:]), kernel_init=nn.initializers.zeros)(h)
    return out.reshape(x_t.shape)


def make_cascade_denoise_fn(denoise_fn: Callable, adapter: CascadeAdapter) -> Callable:
  """Denoiser over params ``{"base", "adapter"}`` and condition ``(c, x^cond)``."""
  def fn(params, x_t, t, cond, cond_mask=None):
    c, x_cond = cond
    return (denoise_fn(params["base"], x_t, t, c, cond_mask)
            + adapter.apply({"params": params["adapter"]}, x_t, t, x_cond))
  return fn


def improving_targets(r_cond, r_alts):
  """``r_cond [b]`` (the first sample's reward), ``r_alts [b, M]`` -> ``(best [b], keep [b])``:
  the best alternative of each context and whether it is a training target, i.e.
  ``r(x^cond) < r(x^r)`` (a pair whose alternative is no better teaches nothing)."""
  best = jnp.argmax(r_alts, 1)
  keep = (jnp.max(r_alts, 1) > r_cond).astype(jnp.float32)
  return best, keep


def block_mask(shape, block) -> jax.Array:
  """``[H, D]`` bool: horizon steps ``floor(start H) .. ceil(stop H) - 1`` (all features)."""
  h = shape[0]
  lo, hi = int(math.floor(block[0] * h)), max(int(math.ceil(block[1] * h)), 1)
  steps = (jnp.arange(h) >= lo) & (jnp.arange(h) < hi)
  return jnp.broadcast_to(steps.reshape((h,) + (1,) * (len(shape) - 1)), shape)


class Cascade(NamedTuple):
  init: Callable               # (key, first_params, tx, hist [1, K, O]) -> AlignState
  make_update: Callable        # (reward_fn, tx, *, lora_scale, axis_name) -> update
  inference_params: Callable   # (first_params, state, scale) -> params of the cascaded DMC
  wrap: Callable               # (dmc) -> cascaded DMC over inference params
  gen: object                  # the cascade's Generator


def make_cascade(sampling: dmc_lib.Sampling, make_gen: Callable, *, mode: str = "latent",
                 share_step: int = 0, block=(0.5, 1.0), hidden: int = 128,
                 num_candidates: int = 4, passes: int = 1, lora_rank: int = 8) -> Cascade:
  """Builds the cascade for a DMC's :class:`~dmc_jax.models.dmc.Sampling`.

  ``make_gen(denoise_fn) -> Generator`` builds the cascade's generator with the first
  model's sampler settings; the first model's denoiser is ``sampling.gen.denoise_fn``.
  """
  if mode not in MODES:
    raise ValueError(f"cascade mode must be one of {MODES}, got {mode!r}")
  first_gen = sampling.gen
  if not 0 <= share_step < first_gen.num_steps:
    raise ValueError(f"share_step must be in [0, {first_gen.num_steps - 1}], got {share_step}")
  if passes < 1:
    raise ValueError(f"passes must be >= 1, got {passes}")
  if mode == "latent" and first_gen.stochastic is None:
    raise ValueError("latent sharing needs a sampler that can be made stochastic (continuing "
                     "a deterministic chain from z_t gives the same sample); use "
                     "mode='inpaint' with the ode sampler")
  adapter = CascadeAdapter(hidden)
  gen = make_gen(make_cascade_denoise_fn(first_gen.denoise_fn, adapter))

  def init(key, first_params, tx, hist):
    k_lora, k_ad, k_x = jax.random.split(key, 3)
    x_T, _, _ = sampling.prepare(k_x, hist)
    lora = lora_lib.init_lora(k_lora, sampling.get(first_params), lora_rank,
                              filter_fn=lora_lib.all_kernels)
    ad = adapter.init(k_ad, x_T, jnp.zeros((x_T.shape[0],)), x_T)["params"]
    return base.init_state({"lora": lora, "adapter": ad}, tx)

  def cascade_params(first_params, trainable, scale):
    return {"base": lora_lib.merge_lora(sampling.get(first_params), trainable["lora"], scale),
            "adapter": trainable["adapter"]}

  def consistent_inpaint(inpaint, x_cond):
    """The sampling in-paint plus, in ``inpaint`` mode, the block taken from ``x_cond``."""
    if mode != "inpaint":
      return inpaint
    blk = block_mask(x_cond.shape[1:], block)
    if inpaint is None:
      return Inpaint(jnp.broadcast_to(blk, x_cond.shape), x_cond)
    mask = jnp.broadcast_to(inpaint.mask, x_cond.shape) | blk
    return Inpaint(mask, jnp.where(blk, x_cond, inpaint.values))

  def refine(cparams, key, x_cond, cond, inpaint):
    """One cascade pass from fresh noise: ``[B, ...] -> [B, ...]``."""
    k_noise, k_s = jax.random.split(key)
    x_T = jax.random.normal(k_noise, x_cond.shape, x_cond.dtype)
    return gen.sample(cparams, k_s, x_T, (cond, x_cond),
                      consistent_inpaint(inpaint, x_cond)).x_0

  def make_update(reward_fn, tx, *, lora_scale: float = 1.0, axis_name=None):
    chain_sampler = first_gen.sample.replace(return_chain=True, num_grad_steps=None)

    def update(state, first_params, critic_params, batch, key):
      hist = batch["hist"]
      b = hist.shape[0]
      ids = base.global_ids(b, axis_name)
      k_first, k_alt, k_loss = jax.random.split(key, 3)
      first = jax.lax.stop_gradient(first_params)
      smp = base.sample_contexts(sampling, chain_sampler, first,
                                 base.per_sample_keys(k_first, ids), hist)
      x_cond = smp.x_0
      r_cond = reward_fn(first, critic_params, x_cond, hist)
      dfirst = sampling.get(first)

      def alternative(key, x_c, c, ip, z):
        c1 = jax.tree.map(lambda a: a[None], c)
        ip1 = None if ip is None else jax.tree.map(lambda a: a[None], ip)
        if mode == "latent":  # the remaining steps with new noise (stochastic knobs on)
          return first_gen.sample(dfirst, key, z[None], c1, ip1, start_step=share_step,
                                  **first_gen.stochastic).x_0[0]
        k_n, k_s = jax.random.split(key)
        x_T = jax.random.normal(k_n, (1,) + x_c.shape, x_c.dtype)
        return first_gen.sample(dfirst, k_s, x_T, c1,
                                consistent_inpaint(ip1, x_c[None])).x_0[0]

      z = smp.chain.x_t[:, share_step]
      alts, r_alts = [], []
      for m in range(num_candidates):
        keys = base.per_sample_keys(jax.random.fold_in(k_alt, m), ids)
        x_alt = jax.vmap(alternative)(keys, x_cond, smp.cond, smp.inpaint, z)
        alts.append(x_alt)
        r_alts.append(reward_fn(first, critic_params, x_alt, hist))
      alts, r_alts = jnp.stack(alts, 1), jnp.stack(r_alts, 1)          # [b, M, ...], [b, M]
      best, keep = improving_targets(r_cond, r_alts)
      x_r = jnp.take_along_axis(alts, best.reshape((b, 1) + (1,) * (alts.ndim - 2)), 1)[:, 0]
      r_best = jnp.max(r_alts, 1)
      total = base.psum(jnp.sum(keep), axis_name)
      w = keep / jnp.maximum(total, 1.0)
      ip = consistent_inpaint(smp.inpaint, x_cond)
      imask = None if ip is None else ip.mask
      keys = base.per_sample_keys(k_loss, ids)
      n_dev = base.num_devices(axis_name)

      def loss_fn(trainable):
        cparams = cascade_params(first, trainable, lora_scale)
        err, _ = base.sample_errors(gen.errors, cparams, keys, x_r, (smp.cond, x_cond), imask,
                                    sampling.loss_weights)
        # Global loss: sum_i w_i e_i over all devices (the caller averages over devices).
        return n_dev * jnp.sum(w * err), {}

      (loss, m), grads = base.value_and_grad(loss_fn, state.params, axis_name)
      new, m = base.apply_gradients(state, tx, loss, grads, m)
      m.update(kept=total / base.psum(b, axis_name),
               gain=base.psum(jnp.sum(keep * (r_best - r_cond)), axis_name)
               / jnp.maximum(total, 1.0))
      return new, m
    return update

  def inference_params(first_params, state, scale: float = 1.0):
    return {"first": first_params,
            "cascade": cascade_params(first_params, state.params, scale)}

  def wrap(dmc):
    """The DMC that samples with the first model, then ``passes`` cascade passes; its
    params are :func:`inference_params`'s."""
    def sample_fn(params, key, x_T, cond, inpaint):
      k_first, k_passes = jax.random.split(key)
      x = first_gen.sample(sampling.get(params["first"]), k_first, x_T, cond, inpaint).x_0
      for p in range(passes):
        x = refine(params["cascade"], jax.random.fold_in(k_passes, p), x, cond, inpaint)
      return x
    spec = sampling._replace(get=lambda p: sampling.get(p["first"]),
                             decode=lambda p, x: sampling.decode(p["first"], x))
    return dmc._replace(propose=dmc_lib.propose_with(spec, sample_fn), sampling=spec)

  return Cascade(init, make_update, inference_params, wrap, gen)
