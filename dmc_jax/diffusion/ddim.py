"""DDIM (Song, Meng & Ermon, 2021) with stochasticity ``eta``. PURE."""
from typing import Optional, Sequence

import jax.numpy as jnp
import numpy as np

from dmc_jax.diffusion import chain as chain_lib
from dmc_jax.diffusion import parametrization as P
from dmc_jax.diffusion.schedules import Schedule
from dmc_jax.types import DenoiseFn


def ddim_timesteps(num_train_steps: int, num_steps: int) -> np.ndarray:
  """Evenly spaced, strictly decreasing sub-sequence of ``{0, ..., T-1}`` of length ``num_steps``
  that starts at ``T - 1`` and ends at ``0``."""
  if not 1 <= num_steps <= num_train_steps:
    raise ValueError(
        f"DDIM num_steps={num_steps} must be in [1, {num_train_steps}]: the model was trained "
        f"with {num_train_steps} diffusion steps, and DDIM can only skip steps, not add them")
  if num_steps == 1:
    return np.array([num_train_steps - 1])
  return np.round(np.linspace(num_train_steps - 1, 0, num_steps)).astype(np.int32)


def check_timesteps(timesteps, num_train_steps: int) -> np.ndarray:
  ts = np.asarray(timesteps, np.int64)
  if ts.ndim != 1 or len(ts) < 1:
    raise ValueError(f"timesteps must be a non-empty 1-D sequence, got shape {ts.shape}")
  if len(ts) > num_train_steps:
    raise ValueError(f"{len(ts)} DDIM steps requested but the model was trained with "
                     f"{num_train_steps} diffusion steps")
  if ts.min() < 0 or ts.max() >= num_train_steps or np.any(np.diff(ts) >= 0):
    raise ValueError(f"timesteps must be strictly decreasing integers in [0, {num_train_steps}),"
                     f" got {ts.tolist()}")
  return ts.astype(np.int32)


def make_ddim_transition(denoise_fn: DenoiseFn, sched: Schedule, timesteps: np.ndarray,
                         cond=None, eta=0.0, *, pred_type: str = "eps",
                         clip_x0: Optional[float] = None):
  """Step ``k`` maps ``x_i -> x_j`` (``i = ts[k]``, ``j = ts[k+1]`` or clean):

  ``sigma = eta sqrt((1 - ab_j) / (1 - ab_i)) sqrt(1 - ab_i / ab_j)``,
  ``mean = sqrt(ab_j) x0_hat + sqrt(1 - ab_j - sigma^2) eps_hat``.
  """
  P.check_pred_type(pred_type)
  T = sched.num_steps
  ab = sched.alphas_cumprod.astype(np.float64)
  ab_i = ab[timesteps]
  ab_j = np.concatenate([ab[timesteps[1:]], [1.0]])
  ab_i_, ab_j_ = jnp.asarray(ab_i, jnp.float32), jnp.asarray(ab_j, jnp.float32)
  base_sigma = jnp.asarray(np.sqrt((1 - ab_j) / (1 - ab_i) * (1 - ab_i / ab_j)), jnp.float32)
  ts = jnp.asarray(timesteps)

  def transition(params, x_t, k):
    a_i, a_j = ab_i_[k], ab_j_[k]
    t = chain_lib.batch_time((ts[k] + 1.0) / T, x_t)
    pred = denoise_fn(params, x_t, t, cond, None)
    x0, eps = P.to_x0_eps(pred, x_t, jnp.sqrt(a_i), jnp.sqrt(1.0 - a_i), pred_type)
    if clip_x0 is not None:
      x0 = jnp.clip(x0, -clip_x0, clip_x0)
      eps = (x_t - jnp.sqrt(a_i) * x0) / jnp.sqrt(1.0 - a_i)
    sigma = eta * base_sigma[k]
    mean = jnp.sqrt(a_j) * x0 + jnp.sqrt(jnp.maximum(1.0 - a_j - sigma ** 2, 0.0)) * eps
    return mean, sigma
  return transition


def make_ddim_sampler(denoise_fn: DenoiseFn, sched: Schedule, num_steps: Optional[int] = None,
                      *, timesteps: Optional[Sequence[int]] = None, pred_type: str = "eps",
                      clip_x0: Optional[float] = None, num_grad_steps: Optional[int] = None,
                      remat: bool = True, return_chain: bool = False,
                      inpaint_mode: str = "clean"):
  """DDIM over ``num_steps`` evenly spaced training steps, or over explicit ``timesteps``.

  Returns ``sample(params, key, x_T, cond=None, inpaint=None, eta=0.0) -> SamplerOutput``;
  ``eta`` may be traced (0: deterministic DDIM; 1 with all steps: DDPM).
  """
  T = sched.num_steps
  if timesteps is not None:
    ts = check_timesteps(timesteps, T)
  else:
    ts = ddim_timesteps(T, T if num_steps is None else num_steps)
  ab = sched.alphas_cumprod.astype(np.float64)
  ab_levels = np.concatenate([ab[ts], [1.0]])
  levels = np.stack([np.sqrt(ab_levels), np.sqrt(1 - ab_levels)], -1)
  build = lambda cond, eta=0.0: make_ddim_transition(denoise_fn, sched, ts, cond, eta,
                                                     pred_type=pred_type, clip_x0=clip_x0)
  return chain_lib.make_sampler(build, times=((ts + 1.0) / T).astype(np.float32), levels=levels,
                                num_grad_steps=num_grad_steps, remat=remat,
                                return_chain=return_chain, inpaint_mode=inpaint_mode)
