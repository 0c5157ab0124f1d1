"""DDPM ancestral sampling (Ho et al., 2020). PURE."""
from typing import Optional

import jax.numpy as jnp
import numpy as np

from dmc_jax.diffusion import chain as chain_lib
from dmc_jax.diffusion import parametrization as P
from dmc_jax.diffusion.schedules import Schedule
from dmc_jax.types import DenoiseFn


def make_ddpm_transition(denoise_fn: DenoiseFn, sched: Schedule, cond=None, *,
                         pred_type: str = "eps", clip_x0: Optional[float] = None):
  """Step ``k`` maps ``x_i -> x_{i-1}`` with ``i = T - 1 - k``, using the true posterior
  ``q(x_{i-1} | x_i, x0_hat) = N(c1_i x0_hat + c2_i x_i, beta~_i)`` (``beta~_0 = 0``)."""
  P.check_pred_type(pred_type)
  T = sched.num_steps
  c1, c2 = jnp.asarray(sched.posterior_mean_coef1), jnp.asarray(sched.posterior_mean_coef2)
  sa, so = jnp.asarray(sched.sqrt_alphas_cumprod), jnp.asarray(sched.sqrt_one_minus_alphas_cumprod)
  post_std = jnp.sqrt(jnp.asarray(sched.posterior_variance))

  def transition(params, x_t, k):
    i = T - 1 - k
    t = chain_lib.batch_time((i + 1.0) / T, x_t)
    pred = denoise_fn(params, x_t, t, cond, None)
    x0, _ = P.to_x0_eps(pred, x_t, sa[i], so[i], pred_type)
    if clip_x0 is not None:
      x0 = jnp.clip(x0, -clip_x0, clip_x0)
    return c1[i] * x0 + c2[i] * x_t, post_std[i]
  return transition


def ddpm_levels(sched: Schedule) -> np.ndarray:
  """``[T + 1, 2]`` (alpha, sigma) of x_{T-1}, x_{T-2}, ..., x_0 and the clean output."""
  a = np.concatenate([sched.sqrt_alphas_cumprod[::-1], [1.0]])
  s = np.concatenate([sched.sqrt_one_minus_alphas_cumprod[::-1], [0.0]])
  return np.stack([a, s], -1)


def make_ddpm_sampler(denoise_fn: DenoiseFn, sched: Schedule, *, pred_type: str = "eps",
                      clip_x0: Optional[float] = None, num_grad_steps: Optional[int] = None,
                      remat: bool = True, return_chain: bool = False,
                      inpaint_mode: str = "clean"):
  """DDPM sampler over all ``T`` steps of ``sched``.

  Returns ``sample(params, key, x_T [B, ...], cond=None, inpaint=None) -> SamplerOutput``.
  See :func:`dmc_jax.diffusion.chain.run_chain` for ``num_grad_steps``, ``remat``,
  ``return_chain`` and ``inpaint_mode``.
  """
  T = sched.num_steps
  times = (np.arange(T, 0, -1) / T).astype(np.float32)
  build = lambda cond: make_ddpm_transition(denoise_fn, sched, cond, pred_type=pred_type,
                                            clip_x0=clip_x0)
  return chain_lib.make_sampler(build, times=times, levels=ddpm_levels(sched),
                                num_grad_steps=num_grad_steps, remat=remat,
                                return_chain=return_chain, inpaint_mode=inpaint_mode)
