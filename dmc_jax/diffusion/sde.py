"""Score-based samplers for the VP process (Song et al., 2021). PURE.

With an eps-model, the score is ``grad log p_t(x) = -eps_hat / sigma_t``. Integrating from
``t`` to ``t - dt``:

* reverse SDE ``dx = [-0.5 beta x - beta score] dt + sqrt(beta) dW`` (Euler–Maruyama):
  ``mean = x + dt (0.5 beta x + beta score)``, ``std = sqrt(beta dt)``;
* probability-flow ODE ``dx = [-0.5 beta x - 0.5 beta score] dt`` (Euler):
  ``mean = x + dt (0.5 beta x + 0.5 beta score)``, ``std = 0``.

Network evaluations happen at ``N`` times ``linspace(1, t_eps, N)``; the last step jumps from
``t_eps`` to the clean sample with Tweedie's estimate ``x0_hat`` (deterministic), as in
Song et al.'s ``denoise=True``. Works for :class:`ContinuousVP` and for a discrete
:class:`Schedule` through its continuous extension (see ``schedules``). A model trained on a
discrete schedule has seen the times ``1/T .. 1`` only, so there ``t_eps`` defaults to
``1/T``: below it the network would be extrapolated (on Nav1D's Diffuser, T = 20, the
default ``1e-3`` of a continuous model left 12-20 % of the planned transitions coherent,
``1/T`` 23-62 %; BUILD_NOTES, "The SDE sampler's last time").
"""
from typing import Optional

import jax.numpy as jnp
import numpy as np

from dmc_jax.diffusion import chain as chain_lib
from dmc_jax.diffusion import parametrization as P
from dmc_jax.diffusion import schedules as S
from dmc_jax.types import DenoiseFn

SDE_KINDS = ("sde", "ode")


def default_t_eps(sched: S.AnySchedule) -> float:
  """The smallest time the network was trained at: ``1/T`` for a discrete schedule (levels
  ``(i + 1) / T``), ``1e-3`` for the continuous VP."""
  return 1.0 / sched.num_steps if isinstance(sched, S.Schedule) else 1e-3


def sde_times(num_steps: int, t_eps: float = 1e-3) -> np.ndarray:
  if num_steps < 1:
    raise ValueError(f"num_steps must be >= 1, got {num_steps}")
  if not 0.0 < t_eps < 1.0:
    raise ValueError(f"t_eps must be in (0, 1), got {t_eps}")
  return np.linspace(1.0, t_eps, num_steps).astype(np.float32)


def make_vp_transition(denoise_fn: DenoiseFn, sched: S.AnySchedule, times: np.ndarray,
                       cond=None, *, kind: str = "sde", pred_type: str = "eps",
                       clip_x0: Optional[float] = None):
  if kind not in SDE_KINDS:
    raise ValueError(f"kind must be one of {SDE_KINDS}, got {kind!r}")
  P.check_pred_type(pred_type)
  n = len(times)
  t_now = jnp.asarray(times)
  dt = jnp.asarray(np.concatenate([times[:-1] - times[1:], [0.0]]).astype(np.float32))
  score_coef = 1.0 if kind == "sde" else 0.5

  def transition(params, x_t, k):
    t = t_now[k]
    alpha, sigma = S.marginal(sched, t)
    pred = denoise_fn(params, x_t, chain_lib.batch_time(t, x_t), cond, None)
    x0, eps = P.to_x0_eps(pred, x_t, alpha, sigma, pred_type)
    if clip_x0 is not None:
      x0 = jnp.clip(x0, -clip_x0, clip_x0)
      eps = (x_t - alpha * x0) / sigma
    b = S.beta(sched, t)
    score = -eps / sigma
    drift_mean = x_t + dt[k] * (0.5 * b * x_t + score_coef * b * score)
    last = k == n - 1
    mean = jnp.where(last, x0, drift_mean)
    std = 0.0 if kind == "ode" else jnp.where(last, 0.0, jnp.sqrt(b * dt[k]))
    return mean, std
  return transition


def make_vp_sampler(denoise_fn: DenoiseFn, sched: S.AnySchedule, num_steps: int, *,
                    kind: str = "sde", t_eps: Optional[float] = None, pred_type: str = "eps",
                    clip_x0: Optional[float] = None, num_grad_steps: Optional[int] = None,
                    remat: bool = True, return_chain: bool = False,
                    inpaint_mode: str = "clean"):
  """Reverse VP-SDE (``kind="sde"``) or probability-flow ODE (``kind="ode"``) sampler.

  Returns ``sample(params, key, x_T, cond=None, inpaint=None) -> SamplerOutput``.
  ``t_eps``: the last network time (default :func:`default_t_eps`).
  """
  times = sde_times(num_steps, default_t_eps(sched) if t_eps is None else t_eps)
  # Row k is the level of the input of step k (= output of step k - 1); the last is clean.
  alpha, sigma = (np.asarray(a) for a in S.marginal(sched, jnp.asarray(times)))
  levels = np.concatenate([np.stack([alpha, sigma], -1), [[1.0, 0.0]]], 0)
  build = lambda cond: make_vp_transition(denoise_fn, sched, times, cond, kind=kind,
                                          pred_type=pred_type, clip_x0=clip_x0)
  return chain_lib.make_sampler(build, times=times, levels=levels,
                                num_grad_steps=num_grad_steps, remat=remat,
                                return_chain=return_chain, inpaint_mode=inpaint_mode)


def make_sde_sampler(denoise_fn, sched, num_steps, **kwargs):
  """Reverse VP-SDE, Euler–Maruyama. See :func:`make_vp_sampler`."""
  return make_vp_sampler(denoise_fn, sched, num_steps, kind="sde", **kwargs)


def make_ode_sampler(denoise_fn, sched, num_steps, **kwargs):
  """Probability-flow ODE, Euler. See :func:`make_vp_sampler`."""
  return make_vp_sampler(denoise_fn, sched, num_steps, kind="ode", **kwargs)
