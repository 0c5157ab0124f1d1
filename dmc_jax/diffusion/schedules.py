"""Noise schedules. PURE.

Two kinds, one interface:

* :class:`Schedule`: a discrete schedule of ``T`` steps (linear, cosine, or a discretised
  VP), with every derived quantity precomputed in one immutable pytree.
* :class:`ContinuousVP`: the variance-preserving SDE of Song et al. (2021),
  ``beta(t) = beta_min + t (beta_max - beta_min)`` for ``t`` in ``[0, 1]``.

Both are seen by the continuous-time samplers (VP-SDE, probability-flow ODE) through
:func:`log_alpha_bar`, :func:`marginal` and :func:`beta`; a discrete schedule is extended to
continuous time by linear interpolation of ``log alpha_bar`` on the grid ``t_i = (i + 1) / T``.

Time convention used throughout the library: the network receives ``t`` in ``[0, 1]``
(``t = 1`` is pure noise). Discrete step ``i`` in ``{0, ..., T-1}`` is fed as ``(i + 1) / T``.
"""
from typing import NamedTuple, Union

import jax.numpy as jnp
import numpy as np

from dmc_jax.types import Array


class Schedule(NamedTuple):
  """A discrete diffusion schedule; every field is a float32 array of shape ``[T]``.

  Index ``i`` is the noise level of ``x_i`` with ``q(x_i | x_0) = N(sqrt(ab_i) x_0, (1 - ab_i) I)``,
  where ``ab_i = prod_{j <= i} (1 - beta_j)``.
  """
  betas: np.ndarray
  alphas: np.ndarray                     # 1 - beta_i
  alphas_cumprod: np.ndarray             # ab_i
  alphas_cumprod_prev: np.ndarray        # ab_{i-1}, with ab_{-1} = 1
  sqrt_alphas_cumprod: np.ndarray
  sqrt_one_minus_alphas_cumprod: np.ndarray
  log_snr: np.ndarray                    # lambda_i = log(ab_i / (1 - ab_i))
  posterior_variance: np.ndarray         # var of q(x_{i-1} | x_i, x_0); 0 at i = 0
  posterior_log_variance_clipped: np.ndarray
  posterior_mean_coef1: np.ndarray       # multiplies x_0
  posterior_mean_coef2: np.ndarray       # multiplies x_i

  @property
  def num_steps(self) -> int:
    return int(self.betas.shape[0])


class ContinuousVP(NamedTuple):
  """Continuous VP-SDE: ``dx = -0.5 beta(t) x dt + sqrt(beta(t)) dW``, ``t`` in ``[0, 1]``."""
  beta_min: float = 0.1
  beta_max: float = 20.0


AnySchedule = Union[Schedule, ContinuousVP]


def schedule_from_betas(betas) -> Schedule:
  """Builds a :class:`Schedule` from ``betas [T]`` (computed in float64, stored float32)."""
  betas = np.asarray(betas, dtype=np.float64)
  if betas.ndim != 1 or betas.shape[0] < 1:
    raise ValueError(f"betas must be a non-empty 1-D array, got shape {betas.shape}")
  if np.any(betas <= 0) or np.any(betas >= 1):
    raise ValueError("every beta must lie in (0, 1)")
  alphas = 1.0 - betas
  ac = np.cumprod(alphas)
  ac_prev = np.concatenate([[1.0], ac[:-1]])
  post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
  # Clipped as in Ho et al.: post_var[0] = 0, so reuse post_var[1] for its log.
  post_logvar = np.log(np.concatenate([post_var[1:2], post_var[1:]])) if len(betas) > 1 \
      else np.log(betas)
  f32 = lambda a: np.asarray(a, dtype=np.float32)
  return Schedule(
      betas=f32(betas),
      alphas=f32(alphas),
      alphas_cumprod=f32(ac),
      alphas_cumprod_prev=f32(ac_prev),
      sqrt_alphas_cumprod=f32(np.sqrt(ac)),
      sqrt_one_minus_alphas_cumprod=f32(np.sqrt(1.0 - ac)),
      log_snr=f32(np.log(ac) - np.log1p(-ac)),
      posterior_variance=f32(post_var),
      posterior_log_variance_clipped=f32(post_logvar),
      posterior_mean_coef1=f32(betas * np.sqrt(ac_prev) / (1.0 - ac)),
      posterior_mean_coef2=f32((1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac)),
  )


def make_linear_schedule(num_steps: int, beta_start: float = 1e-4,
                         beta_end: float = 2e-2) -> Schedule:
  """Ho et al. (2020): ``beta_i`` linear from ``beta_start`` to ``beta_end``.

  The defaults are for ``T = 1000``; for short chains prefer the cosine schedule or scale
  both ends by ``1000 / T``.
  """
  _check_steps(num_steps)
  return schedule_from_betas(np.linspace(beta_start, beta_end, num_steps))


def make_cosine_schedule(num_steps: int, s: float = 0.008, max_beta: float = 0.999) -> Schedule:
  """Nichol & Dhariwal (2021): ``ab(u) = f(u) / f(0)``, ``f(u) = cos^2((u + s) / (1 + s) * pi / 2)``.

  ``beta_i = 1 - ab((i+1)/T) / ab(i/T)``, clipped to ``max_beta``. This is Diffuser's schedule.
  """
  _check_steps(num_steps)
  u = np.linspace(0.0, 1.0, num_steps + 1)
  f = np.cos((u + s) / (1.0 + s) * np.pi / 2.0) ** 2
  ab = f / f[0]
  return schedule_from_betas(np.clip(1.0 - ab[1:] / ab[:-1], 1e-8, max_beta))


def make_vp_schedule(num_steps: int, beta_min: float = 0.1, beta_max: float = 20.0) -> Schedule:
  """The continuous VP-SDE discretised at ``t_i = (i + 1) / T``: ``ab_i = ab_VP(t_i)``."""
  _check_steps(num_steps)
  t = np.arange(0, num_steps + 1) / num_steps
  log_ab = -(beta_min * t + 0.5 * (beta_max - beta_min) * t ** 2)
  return schedule_from_betas(-np.expm1(log_ab[1:] - log_ab[:-1]))


def _check_steps(num_steps):
  if int(num_steps) != num_steps or num_steps < 1:
    raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")


def network_time(sched: Schedule, i) -> Array:
  """Network time of discrete step ``i``: ``(i + 1) / T``."""
  return (jnp.asarray(i, jnp.float32) + 1.0) / sched.num_steps


def log_alpha_bar(sched: AnySchedule, t: Array) -> Array:
  """``log ab(t)`` for continuous ``t`` in ``[0, 1]`` (``ab(0) = 1``)."""
  t = jnp.asarray(t, jnp.float32)
  if isinstance(sched, ContinuousVP):
    return -(sched.beta_min * t + 0.5 * (sched.beta_max - sched.beta_min) * t ** 2)
  grid = np.arange(0, sched.num_steps + 1, dtype=np.float32) / sched.num_steps
  values = np.concatenate([[0.0], np.log(sched.alphas_cumprod.astype(np.float64))])
  return jnp.interp(t, grid, values.astype(np.float32))


def marginal(sched: AnySchedule, t: Array):
  """``(alpha_t, sigma_t)`` with ``x_t = alpha_t x_0 + sigma_t eps``, for continuous ``t``."""
  lab = log_alpha_bar(sched, t)
  return jnp.exp(0.5 * lab), jnp.sqrt(-jnp.expm1(lab))


def beta(sched: AnySchedule, t: Array) -> Array:
  """Instantaneous rate ``beta(t) = -d log ab / dt``.

  For a discrete schedule (``log ab`` piecewise linear) this is piecewise constant:
  ``T * (log ab_{i-1} - log ab_i)`` on ``(i/T, (i+1)/T]``.
  """
  t = jnp.asarray(t, jnp.float32)
  if isinstance(sched, ContinuousVP):
    return sched.beta_min + t * (sched.beta_max - sched.beta_min)
  T = sched.num_steps
  lab = np.log(sched.alphas_cumprod.astype(np.float64))
  rates = (T * (np.concatenate([[0.0], lab[:-1]]) - lab)).astype(np.float32)
  idx = jnp.clip(jnp.ceil(t * T).astype(jnp.int32) - 1, 0, T - 1)
  return jnp.asarray(rates)[idx]


def log_snr(sched: AnySchedule, t: Array) -> Array:
  """``lambda(t) = log(alpha_t^2 / sigma_t^2)`` for continuous ``t``."""
  lab = log_alpha_bar(sched, t)
  return lab - jnp.log(-jnp.expm1(lab))
