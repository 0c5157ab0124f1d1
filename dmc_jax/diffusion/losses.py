"""Denoising training losses for eps-, x0- and v-prediction. PURE."""
from typing import Optional

import jax
import jax.numpy as jnp

from dmc_jax.diffusion import parametrization as P
from dmc_jax.diffusion import schedules as S
from dmc_jax.types import Array, DenoiseFn


def weighted_mse(pred: Array, target: Array, weights: Optional[Array] = None,
                 mask: Optional[Array] = None) -> Array:
  """``sum(w m (pred - target)^2) / sum(m)``, with ``w, m`` broadcast to ``pred``.

  Without a mask this is the plain (weighted) mean over every element.
  """
  err = jnp.square(pred - target)
  if weights is not None:
    err = err * jnp.broadcast_to(weights, err.shape)
  if mask is None:
    return jnp.mean(err)
  m = jnp.broadcast_to(jnp.asarray(mask, err.dtype), err.shape)
  return jnp.sum(err * m) / jnp.maximum(jnp.sum(m), 1.0)


def impose_known(x_t: Array, x_0: Array, inpaint_mask: Optional[Array],
                 mask: Optional[Array]):
  """Copies the in-painted entries of ``x_0`` into ``x_t`` (as the sampler imposes them) and
  drops them from the loss mask. Returns ``(x_t, mask)``; a no-op without ``inpaint_mask``."""
  if inpaint_mask is None:
    return x_t, mask
  free = jnp.logical_not(inpaint_mask)
  return (jnp.where(inpaint_mask, x_0, x_t),
          free if mask is None else jnp.logical_and(mask, free))


def sample_cond_mask(key, batch: int, cond_drop_prob) -> Array:
  """``[B]`` float mask: 1 keeps the condition, 0 drops it (prob ``cond_drop_prob``)."""
  return (jax.random.uniform(key, (batch,)) >= cond_drop_prob).astype(jnp.float32)


def sample_time(key, sched: S.AnySchedule, batch: int, t_eps: float = 1e-3):
  """Draws training noise levels: ``(t_net [B], alpha [B], sigma [B])``.

  Discrete schedule: ``i ~ U{0..T-1}``, ``t_net = (i + 1) / T``. Continuous VP:
  ``t ~ U(t_eps, 1)``.
  """
  if isinstance(sched, S.Schedule):
    i = jax.random.randint(key, (batch,), 0, sched.num_steps)
    return (S.network_time(sched, i), jnp.asarray(sched.sqrt_alphas_cumprod)[i],
            jnp.asarray(sched.sqrt_one_minus_alphas_cumprod)[i])
  t = jax.random.uniform(key, (batch,), minval=t_eps, maxval=1.0)
  alpha, sigma = S.marginal(sched, t)
  return t, alpha, sigma


def diffusion_loss(params, key, x_0: Array, cond=None, *, denoise_fn: DenoiseFn,
                   sched: S.AnySchedule, pred_type: str = "eps",
                   weights: Optional[Array] = None, mask: Optional[Array] = None,
                   inpaint_mask: Optional[Array] = None, cond_drop_prob: float = 0.0,
                   t_eps: float = 1e-3, per_sample: bool = False):
  """Denoising loss ``E_{t, eps} || f_theta(x_t, t, c) - target ||^2`` (weighted, masked).

  Args:
    params: network parameters.
    key: PRNG key.
    x_0: ``[B, ...]`` clean data.
    cond: optional condition pytree, passed to ``denoise_fn``.
    denoise_fn: ``(params, x_t, t [B], cond, cond_mask [B] or None) -> prediction``.
    sched: discrete :class:`~dmc_jax.diffusion.schedules.Schedule` or ``ContinuousVP``.
    pred_type: what the network predicts: "eps", "x0" or "v" (``alpha eps - sigma x_0``).
    weights: optional per-element weights broadcastable to ``x_0`` (e.g. Diffuser's
      ``action_weight`` on the first action).
    mask: optional loss mask broadcastable to ``x_0`` (e.g. padding after episode ends).
    inpaint_mask: optional bool broadcastable to ``x_0``: imposed entries; they are copied
      from ``x_0`` into ``x_t`` (as the sampler imposes them) and excluded from the loss.
    cond_drop_prob: classifier-free-guidance dropout probability of ``cond``.
    t_eps: smallest time for a continuous schedule.

    per_sample: return ``(errors [B], log_snr [B])`` instead: each sample's error (the same
      ``weights``, masked mean over its entries) and its noise level ``log(alpha^2 / sigma^2)``.
      Two calls with the same ``key`` draw the same ``t`` and ``eps`` (Diffusion-DPO).

  Returns:
    ``(loss, metrics)``: scalar loss and a flat dict of scalars.
  """
  P.check_pred_type(pred_type)
  k_t, k_eps, k_drop = jax.random.split(key, 3)
  batch = x_0.shape[0]
  t, alpha, sigma = sample_time(k_t, sched, batch, t_eps)
  eps = jax.random.normal(k_eps, x_0.shape, x_0.dtype)
  x_t = P.q_sample(x_0, eps, alpha, sigma)
  x_t, mask = impose_known(x_t, x_0, inpaint_mask, mask)
  cond_mask = sample_cond_mask(k_drop, batch, cond_drop_prob)
  pred = denoise_fn(params, x_t, t, cond, cond_mask)
  target = P.target(x_0, eps, alpha, sigma, pred_type)
  if per_sample:
    return per_sample_mse(pred, target, mask, weights), jnp.log(jnp.square(alpha) / jnp.square(sigma))
  loss = weighted_mse(pred, target, weights, mask)
  return loss, {"loss": loss}


def per_sample_mse(pred: Array, target: Array, mask: Optional[Array] = None,
                   weights: Optional[Array] = None) -> Array:
  """``[B]``: each sample's (weighted) squared error averaged over its (masked) entries; the
  per-sample form of :func:`weighted_mse` (same weights, same normaliser ``sum(mask)``)."""
  err = jnp.square(pred - target)
  if weights is not None:
    err = err * jnp.broadcast_to(weights, err.shape)
  err = err.reshape(pred.shape[0], -1)
  if mask is None:
    return jnp.mean(err, -1)
  m = jnp.broadcast_to(jnp.asarray(mask, err.dtype), pred.shape).reshape(pred.shape[0], -1)
  return jnp.sum(err * m, -1) / jnp.maximum(jnp.sum(m, -1), 1.0)
