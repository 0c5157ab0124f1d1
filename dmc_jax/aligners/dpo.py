"""Diffusion-DPO (Wallace et al., 2024). PURE.

Winner ``x^w`` and loser ``x^l`` are noised with the same ``t`` and ``eps``; with
``e(p, x) = ||eps - eps_p(x_t, t)||^2`` (mean over the entries of a sample),
``loss = -log sigmoid(-beta * w(lambda_t) * [(e(theta, x^w) - e(ref, x^w)) -
(e(theta, x^l) - e(ref, x^l))])``. At ``theta = ref`` it is ``log 2``.

``dpo_loss`` on given pairs, and ``make_dpo_aligner``: the per-device update that makes the
pairs from the model's own samples ranked by the critic.
"""
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from dmc_jax.aligners import base

SNR_WEIGHTS = ("constant", "snr", "min_snr", "sigmoid")


def snr_weight(kind: str, log_snr, gamma: float = 5.0, bias: float = 0.0):
  """``w(lambda)`` on the eps-prediction error (the paper's ``||eps - eps_theta||^2``),
  ``lambda = log SNR``:

  * ``constant``: 1 (Diffusion-DPO);
  * ``snr``: ``SNR = e^lambda`` (the eps error turned into the x0 error);
  * ``min_snr``: Min-SNR-gamma (Hang et al., 2023) in its eps form,
    ``min(SNR, gamma) / SNR = min(1, gamma e^-lambda)``: 1 at high noise, down-weights the
    low-noise steps whose SNR exceeds ``gamma``;
  * ``sigmoid``: Kingma & Gao (2023), ``sigmoid(bias - lambda)``: near 1 at high noise,
    decays with ``e^-lambda`` at low noise.

  Both ``min_snr`` and ``sigmoid`` are non-increasing in ``lambda``.
  """
  if kind == "constant":
    return jnp.ones_like(log_snr)
  if kind == "snr":
    return jnp.exp(log_snr)
  if kind == "min_snr":
    return jnp.minimum(1.0, gamma * jnp.exp(-log_snr))
  if kind == "sigmoid":
    return jax.nn.sigmoid(bias - log_snr)
  raise ValueError(f"unknown SNR weighting {kind!r}; known: {SNR_WEIGHTS}")


def dpo_loss(params, ref_params, keys, x_w, x_l, cond=None, *, errors_fn: Callable, beta,
             weighting: str = "constant", inpaint_mask: Optional[jax.Array] = None,
             weights: Optional[jax.Array] = None, denom=None,
             loss_weights: Optional[jax.Array] = None):
  """Diffusion-DPO loss on pairs ``x_w, x_l [B, ...]`` (``beta`` may be traced).

  Args:
    params, ref_params: denoiser params of the aligned model and of the reference.
    keys: ``[B]`` one key per pair: its winner and loser, under ``params`` and under the
      reference, are noised with the same ``t`` and ``eps``.
    errors_fn: a generator's ``errors`` (each sample's training error, with its log-SNR):
      ``||eps - eps_hat||^2`` for eps-prediction (the paper's form), the model's own target
      (``x0``, ``v``, flow velocity) otherwise.
    weighting: the SNR weighting ``w(lambda_t)``.
    inpaint_mask: ``[B, ...]`` entries imposed at sampling time (left out of the errors).
    weights: optional ``[B]`` pair weights (e.g. 0 for pairs with equal rewards).
    denom: the normaliser of the weighted sums (default ``sum(weights)``); data-parallel
      callers pass the global one.
    loss_weights: per-entry weights of the errors (the pretraining loss's, e.g. Diffuser's
      first-action weight; ``Sampling.loss_weights``).

  Returns ``(loss, metrics)`` with the implicit reward margin and the preference accuracy
  (the share of pairs where the model already prefers the winner more than the reference).
  """
  err = lambda p, x: base.sample_errors(errors_fn, p, keys, x, cond, inpaint_mask,
                                       loss_weights)
  ref = jax.lax.stop_gradient(ref_params)
  (e_w, lam), (e_l, _) = err(params, x_w), err(params, x_l)
  (r_w, _), (r_l, _) = err(ref, x_w), err(ref, x_l)
  margin = (e_w - r_w) - (e_l - r_l)
  logits = -beta * snr_weight(weighting, lam) * margin
  if weights is None:
    weights = jnp.ones_like(margin)
  denom = jnp.maximum(jnp.sum(weights) if denom is None else denom, 1e-8)
  loss = -jnp.sum(weights * jax.nn.log_sigmoid(logits)) / denom
  return loss, {"dpo_loss": loss, "dpo_margin": jnp.sum(weights * -margin) / denom,
                "dpo_accuracy": jnp.sum(weights * (logits > 0)) / denom}


def make_dpo_aligner(sampling, reward_fn: Callable, tx, *, beta: float, num_samples: int = 4,
                     weighting: str = "constant", lora_rank: int = 8, lora_scale: float = 1.0,
                     sample_from: str = "current", axis_name=None):
  """Diffusion-DPO update: per context, ``num_samples`` samples from the current model (or
  the reference, ``sample_from="reference"``) ranked by ``reward_fn``; the best and the worst
  form the pair (pairs with equal rewards get weight 0); one gradient step on
  :func:`dpo_loss` against the reference (the base params, adapters off)."""
  base.check_sample_from(sample_from)
  if num_samples < 2:
    raise ValueError(f"DPO needs at least 2 samples per context, got {num_samples}")
  if weighting not in SNR_WEIGHTS:
    raise ValueError(f"unknown SNR weighting {weighting!r}; known: {SNR_WEIGHTS}")

  def update(state, base_params, critic_params, batch, key):
    hist = batch["hist"]
    b = hist.shape[0]
    k_sample, k_noise = jax.random.split(key)
    ids = base.global_ids(b, axis_name)
    hist_rep, sid = base.repeat_contexts(hist, ids, num_samples)
    params = base.sampling_params(sampling, base_params, state.params, sample_from, lora_scale)
    smp = base.sample_contexts(sampling, sampling.gen.sample, params,
                               base.per_sample_keys(k_sample, sid), hist_rep)
    r = reward_fn(params, critic_params, smp.x_0, hist_rep).reshape(b, num_samples)
    x = smp.x_0.reshape((b, num_samples) + smp.x_0.shape[1:])
    pick = lambda idx: jnp.take_along_axis(
        x, idx.reshape((b, 1) + (1,) * (x.ndim - 2)), 1)[:, 0]
    x_w, x_l = pick(jnp.argmax(r, 1)), pick(jnp.argmin(r, 1))
    first = lambda a: a.reshape((b, num_samples) + a.shape[1:])[:, 0]
    cond = jax.tree.map(first, smp.cond)
    imask = None if smp.inpaint is None else first(smp.inpaint.mask)
    pair_w = (jnp.max(r, 1) > jnp.min(r, 1)).astype(jnp.float32)
    keys = base.per_sample_keys(k_noise, ids)
    ref_d = sampling.get(base_params)
    # Global weighted mean: the caller averages the per-device losses over devices.
    denom = base.psum(jnp.sum(pair_w), axis_name) / base.num_devices(axis_name)

    def loss_fn(lo):
      dparams = sampling.get(base.aligned_params(sampling, base_params, lo, lora_scale))
      return dpo_loss(dparams, ref_d, keys, x_w, x_l, cond, errors_fn=sampling.gen.errors,
                      beta=beta, weighting=weighting, inpaint_mask=imask, weights=pair_w,
                      denom=denom, loss_weights=sampling.loss_weights)

    (loss, m), grads = base.value_and_grad(loss_fn, state.params, axis_name)
    new, m = base.apply_gradients(state, tx, loss, grads, m)
    m["reward"], m["reward_std"] = base.global_mean_std(r, axis_name)
    m.update(reward_gap=base.pmean(jnp.mean(jnp.max(r, 1) - jnp.min(r, 1)), axis_name))
    return new, m

  return base.Aligner(base.make_lora_init(sampling, lora_rank, tx), update)
