"""Diffusion-DPO (Wallace et al., 2024). PURE.

Winner ``x^w`` and loser ``x^l`` are noised with the same ``t`` and ``eps``; with
``e(p, x) = ||eps - eps_p(x_t, t)||^2`` (mean over the entries of a sample),
``loss = -log sigmoid(-beta * w(lambda_t) * [(e(theta, x^w) - e(ref, x^w)) -
(e(theta, x^l) - e(ref, x^l))])``. At ``theta = ref`` it is ``log 2``.
"""
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from dmc_jax.diffusion import losses
from dmc_jax.diffusion import parametrization as P
from dmc_jax.diffusion import schedules as S

SNR_WEIGHTS = ("constant", "snr", "min_snr", "sigmoid")


def snr_weight(kind: str, log_snr, gamma: float = 5.0):
  """``w(lambda)``: ``constant`` 1; ``snr`` ``e^lambda``; ``min_snr`` ``min(e^lambda, gamma)``
  (Hang et al., 2023); ``sigmoid`` ``sigmoid(lambda)``."""
  if kind == "constant":
    return jnp.ones_like(log_snr)
  if kind == "snr":
    return jnp.exp(log_snr)
  if kind == "min_snr":
    return jnp.minimum(jnp.exp(log_snr), gamma)
  if kind == "sigmoid":
    return jax.nn.sigmoid(log_snr)
  raise ValueError(f"unknown SNR weighting {kind!r}; known: {SNR_WEIGHTS}")


def eps_error(denoise_fn: Callable, params, x_t, t, alpha, sigma, eps, cond, pred_type: str,
              mask=None):
  """Per-sample ``||eps - eps_hat||^2`` averaged over the (masked) entries -> ``[B]``."""
  pred = denoise_fn(params, x_t, t, cond, None)
  _, eps_hat = P.to_x0_eps(pred, x_t, alpha, sigma, pred_type)
  err = jnp.square(eps - eps_hat)
  if mask is None:
    return jnp.mean(err.reshape(err.shape[0], -1), -1)
  m = jnp.broadcast_to(jnp.asarray(mask, err.dtype), err.shape).reshape(err.shape[0], -1)
  return jnp.sum(err.reshape(err.shape[0], -1) * m, -1) / jnp.maximum(jnp.sum(m, -1), 1.0)


def dpo_loss(params, ref_params, key, x_w, x_l, cond=None, *, denoise_fn: Callable,
             sched: S.Schedule, beta, pred_type: str = "eps", weighting: str = "constant",
             mask: Optional[jax.Array] = None, inpaint_mask: Optional[jax.Array] = None):
  """Diffusion-DPO loss on pairs ``x_w, x_l [B, ...]`` (``beta`` may be traced).

  Returns ``(loss, metrics)`` with the implicit reward margin and the preference accuracy
  (the share of pairs where the model already prefers the winner more than the reference).
  """
  k_t, k_eps = jax.random.split(key)
  batch = x_w.shape[0]
  t, alpha, sigma = losses.sample_time(k_t, sched, batch)
  eps = jax.random.normal(k_eps, x_w.shape, x_w.dtype)
  free = mask
  xs = []
  for x in (x_w, x_l):
    x_t = P.q_sample(x, eps, alpha, sigma)
    x_t, free = losses.impose_known(x_t, x, inpaint_mask, mask)
    xs.append(x_t)
  err = lambda p, x_t: eps_error(denoise_fn, p, x_t, t, alpha, sigma, eps, cond, pred_type, free)
  ref = jax.lax.stop_gradient(ref_params)
  margin = (err(params, xs[0]) - err(ref, xs[0])) - (err(params, xs[1]) - err(ref, xs[1]))
  lam = jnp.log(jnp.square(alpha) / jnp.square(sigma))
  logits = -beta * snr_weight(weighting, lam) * margin
  loss = -jnp.mean(jax.nn.log_sigmoid(logits))
  return loss, {"loss": loss, "dpo_margin": jnp.mean(-margin),
                "dpo_accuracy": jnp.mean(logits > 0)}
