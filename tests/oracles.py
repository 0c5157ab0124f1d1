"""Exact denoisers for a Gaussian target x_0 ~ N(mu, s^2 I), used as closed-form oracles.

With x_t = alpha x_0 + sigma eps:  E[eps | x_t] = sigma (x_t - alpha mu) / (alpha^2 s^2 + sigma^2).
Flow path x_t = (1 - t) x_0 + t eps: with v_t = (1 - t)^2 s^2 + t^2,
  E[eps | x_t] = t (x_t - (1 - t) mu) / v_t,
  E[x_0 | x_t] = mu + (1 - t) s^2 (x_t - (1 - t) mu) / v_t,  and u = E[eps | x_t] - E[x_0 | x_t].
"""
import jax.numpy as jnp

from dmc_jax.diffusion import parametrization as P
from dmc_jax.diffusion import schedules as S


def _b(a, x):
  return a.reshape(a.shape + (1,) * (x.ndim - a.ndim))


def gaussian_denoise_fn(sched, mu, s, pred_type="eps"):
  def fn(params, x_t, t, cond, cond_mask=None):
    del params, cond, cond_mask
    alpha, sigma = S.marginal(sched, t)
    a, sg = _b(alpha, x_t), _b(sigma, x_t)
    eps = sg * (x_t - a * mu) / (a ** 2 * s ** 2 + sg ** 2)
    x0 = (x_t - sg * eps) / a
    return P.target(x0, eps, alpha, sigma, pred_type)
  return fn


def gaussian_velocity_fn(mu, s):
  def fn(params, x_t, t, cond, cond_mask=None):
    del params, cond, cond_mask
    tb = _b(t, x_t)
    v = (1 - tb) ** 2 * s ** 2 + tb ** 2
    centred = x_t - (1 - tb) * mu
    return tb * centred / v - (mu + (1 - tb) * s ** 2 * centred / v)
  return fn
