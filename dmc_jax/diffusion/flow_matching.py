"""Flow matching / rectified flow (Lipman et al., 2023; Liu et al., 2023). PURE.

Path ``x_t = (1 - t) x_0 + t eps`` (``t = 1`` is noise, as for diffusion here), target
velocity ``u = eps - x_0``. Sampling integrates ``dx/dt = u(x, t)`` from ``t = 1`` to 0 with Euler.

Stochastic variant (``noise_scale = eta > 0``): the reverse SDE with diffusion ``g^2 = eta t``
that has the same marginals, using ``score = -eps_hat / t`` and ``eps_hat = x + (1 - t) u``:
``mean = x - dt u - 0.5 eta dt eps_hat``, ``std = sqrt(eta t dt)`` (the last step is plain Euler,
which lands on ``x0_hat = x - t u``).
"""
import jax
import jax.numpy as jnp
import numpy as np

from dmc_jax.diffusion import chain as chain_lib
from dmc_jax.diffusion.losses import (impose_known, per_sample_mse, sample_cond_mask,
                                      weighted_mse)
from dmc_jax.types import DenoiseFn


def flow_matching_loss(params, key, x_0, cond=None, *, denoise_fn: DenoiseFn, weights=None,
                       mask=None, inpaint_mask=None, cond_drop_prob: float = 0.0,
                       time_sampling: str = "uniform", per_sample: bool = False):
  """Conditional flow-matching loss ``E || u_theta(x_t, t) - (eps - x_0) ||^2``.

  Args:
    params: network parameters.
    key: PRNG key.
    x_0: ``[B, ...]`` data.
    cond: optional condition (pytree), passed to ``denoise_fn``.
    denoise_fn: ``(params, x_t, t [B], cond, cond_mask) -> velocity``.
    weights: optional per-element loss weights, broadcastable to ``x_0``.
    mask: optional bool/float, broadcastable to ``x_0``: entries that count in the loss.
    inpaint_mask: optional bool, broadcastable to ``x_0``: entries imposed from ``x_0`` in
      ``x_t`` (as at sampling time) and left out of the loss.
    cond_drop_prob: probability of dropping the condition (classifier-free guidance).
    time_sampling: "uniform" or "logit_normal" (Esser et al., 2024).
    per_sample: return ``(errors [B], log_snr [B])`` (each sample's masked mean error and
      ``log((1 - t)^2 / t^2)``, the SNR of ``x_t``) instead of ``(loss, metrics)``.

  Returns:
    ``(loss, metrics)``.
  """
  k_t, k_eps, k_drop = jax.random.split(key, 3)
  batch = x_0.shape[0]
  if time_sampling == "uniform":
    t = jax.random.uniform(k_t, (batch,))
  elif time_sampling == "logit_normal":
    t = jax.nn.sigmoid(jax.random.normal(k_t, (batch,)))
  else:
    raise ValueError(f"time_sampling must be 'uniform' or 'logit_normal', got {time_sampling!r}")
  eps = jax.random.normal(k_eps, x_0.shape, x_0.dtype)
  tb = t.reshape((batch,) + (1,) * (x_0.ndim - 1))
  x_t = (1.0 - tb) * x_0 + tb * eps
  x_t, mask = impose_known(x_t, x_0, inpaint_mask, mask)
  cond_mask = sample_cond_mask(k_drop, batch, cond_drop_prob)
  pred = denoise_fn(params, x_t, t, cond, cond_mask)
  if per_sample:
    t_safe = jnp.clip(t, 1e-6, 1.0 - 1e-6)
    return per_sample_mse(pred, eps - x_0, mask, weights), 2.0 * jnp.log((1.0 - t_safe) / t_safe)
  loss = weighted_mse(pred, eps - x_0, weights, mask)
  return loss, {"loss": loss}


def make_flow_sampler(denoise_fn: DenoiseFn, num_steps: int, *, num_grad_steps=None,
                      remat: bool = True, return_chain: bool = False,
                      inpaint_mode: str = "clean"):
  """Euler sampler for a velocity model, ``t: 1 -> 0`` in ``num_steps`` equal steps.

  Returns ``sample(params, key, x_T, cond=None, inpaint=None, noise_scale=0.0)``;
  ``noise_scale > 0`` gives the marginal-preserving stochastic variant (may be traced).
  """
  if num_steps < 1:
    raise ValueError(f"num_steps must be >= 1, got {num_steps}")
  grid = np.linspace(1.0, 0.0, num_steps + 1).astype(np.float32)
  levels = np.stack([1.0 - grid, grid], -1)
  t_now = jnp.asarray(grid[:-1])
  dts = jnp.asarray((grid[:-1] - grid[1:]).astype(np.float32))

  def build(cond, noise_scale=0.0):
    def transition(params, x_t, k):
      t, dt = t_now[k], dts[k]
      u = denoise_fn(params, x_t, chain_lib.batch_time(t, x_t), cond, None)
      eps_hat = x_t + (1.0 - t) * u
      last = k == num_steps - 1
      eta = jnp.where(last, 0.0, noise_scale)
      mean = x_t - dt * u - 0.5 * eta * dt * eps_hat
      return mean, jnp.sqrt(eta * t * dt)
    return transition

  return chain_lib.make_sampler(build, times=grid[:-1], levels=levels,
                                num_grad_steps=num_grad_steps, remat=remat,
                                return_chain=return_chain, inpaint_mode=inpaint_mode)
