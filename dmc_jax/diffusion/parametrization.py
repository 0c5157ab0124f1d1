"""Conversions between the eps-, x0- and v-parametrisations, and classifier-free guidance. PURE.

With ``x_t = alpha x_0 + sigma eps`` and ``alpha^2 + sigma^2 = 1`` (VP):
``v = alpha eps - sigma x_0``, hence ``x_0 = alpha x_t - sigma v`` and ``eps = sigma x_t + alpha v``.
"""
import jax.numpy as jnp

from dmc_jax.types import Array, DenoiseFn

PRED_TYPES = ("eps", "x0", "v")


def check_pred_type(pred_type: str):
  if pred_type not in PRED_TYPES:
    raise ValueError(f"pred_type must be one of {PRED_TYPES}, got {pred_type!r}")


def _bcast(a, x):
  """Broadcasts a per-batch ([B] or scalar) coefficient against x [B, ...]."""
  a = jnp.asarray(a, x.dtype)
  return a.reshape(a.shape + (1,) * (x.ndim - a.ndim))


def q_sample(x_0: Array, noise: Array, alpha: Array, sigma: Array) -> Array:
  """Forward process ``x_t = alpha x_0 + sigma eps``; ``alpha, sigma`` scalar or ``[B]``."""
  return _bcast(alpha, x_0) * x_0 + _bcast(sigma, x_0) * noise


def to_x0_eps(pred: Array, x_t: Array, alpha: Array, sigma: Array, pred_type: str):
  """Returns ``(x0_hat, eps_hat)`` from a model output of type ``pred_type``."""
  a, s = _bcast(alpha, x_t), _bcast(sigma, x_t)
  if pred_type == "eps":
    return (x_t - s * pred) / a, pred
  if pred_type == "x0":
    return pred, (x_t - a * pred) / s
  if pred_type == "v":
    return a * x_t - s * pred, s * x_t + a * pred
  raise ValueError(f"pred_type must be one of {PRED_TYPES}, got {pred_type!r}")


def target(x_0: Array, noise: Array, alpha: Array, sigma: Array, pred_type: str) -> Array:
  """Regression target of ``pred_type`` for ``x_t = alpha x_0 + sigma noise``."""
  if pred_type == "eps":
    return noise
  if pred_type == "x0":
    return x_0
  if pred_type == "v":
    return _bcast(alpha, x_0) * noise - _bcast(sigma, x_0) * x_0
  raise ValueError(f"pred_type must be one of {PRED_TYPES}, got {pred_type!r}")


def make_guided_denoise_fn(denoise_fn: DenoiseFn, guidance_scale: float) -> DenoiseFn:
  """Classifier-free guidance: ``(1 + w) f(x, t, c) - w f(x, t, null)``.

  ``guidance_scale`` (``w``) may be traced. The null condition is asked for with
  ``cond_mask = 0``, which a conditional network of this library maps to its learned
  null embedding. Valid for eps, v and flow-velocity outputs (all linear in the score).
  """
  def guided(params, x_t, t, cond, cond_mask=None):
    batch = x_t.shape[0]
    keep = jnp.ones((batch,), x_t.dtype) if cond_mask is None else cond_mask
    f_c = denoise_fn(params, x_t, t, cond, keep)
    f_u = denoise_fn(params, x_t, t, cond, jnp.zeros((batch,), x_t.dtype))
    return (1.0 + guidance_scale) * f_c - guidance_scale * f_u
  return guided
