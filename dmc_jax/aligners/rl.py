"""Denoising as a multi-step MDP: REINFORCE / PPO-clip losses and credit weights. PURE.

The sampler records the chain with per-step Gaussian log-probs ``log pi(x_{k+1} | x_k, c)``
(``[S, B]``, step 0 the noisiest). With advantages ``A [B]`` and credit weights
``kappa [S, B]`` the REINFORCE loss is ``-mean_b sum_k kappa_k log pi_k A``; PPO replaces
``log pi A`` with ``min(r A, clip(r, 1 - e, 1 + e) A)``, ``r = exp(log pi - log pi_old)``.
"""
import jax
import jax.numpy as jnp

CREDITS = ("uniform", "decreasing", "similarity")


def normalize_advantages(rewards, clip: float = 5.0, eps: float = 1e-6):
  """``(r - mean) / std`` over the batch, clipped to ``[-clip, clip]`` -> ``[B]``."""
  adv = (rewards - jnp.mean(rewards)) / (jnp.std(rewards) + eps)
  return jnp.clip(adv, -clip, clip)


def credit_weights(kind: str, x_t=None, x_tm1=None, num_steps: int | None = None,
                   decay: float = 0.9):
  """Credit ``kappa [S, B]`` over the ``S`` denoising steps, each column summing to ``S``.

  * ``uniform``: 1 per step.
  * ``decreasing``: ``decay^(S - 1 - k)``: full credit for the last (cleanest) step, less for
    steps further from ``z_0``.
  * ``similarity``: ``max(0, cos(z_k - z_{k+1}, z_T - z_0))`` from the sampled chain
    (``x_t, x_tm1 [S, B, ...]``): steps that moved towards the final sample get the credit.
  """
  if kind == "similarity":
    s, b = x_t.shape[:2]
    step = (x_t - x_tm1).reshape(s, b, -1)
    total = (x_t[0] - x_tm1[-1]).reshape(b, -1)
    cos = jnp.sum(step * total[None], -1) / (
        jnp.linalg.norm(step, axis=-1) * jnp.linalg.norm(total, axis=-1)[None] + 1e-8)
    w = jnp.maximum(cos, 0.0)
  else:
    s = num_steps if x_t is None else x_t.shape[0]
    b = 1 if x_t is None else x_t.shape[1]
    if kind == "uniform":
      w = jnp.ones((s, b))
    elif kind == "decreasing":
      w = jnp.broadcast_to((decay ** jnp.arange(s - 1, -1, -1.0))[:, None], (s, b))
    else:
      raise ValueError(f"unknown credit {kind!r}; known: {CREDITS}")
  return w * s / jnp.maximum(jnp.sum(w, 0, keepdims=True), 1e-8)


def reinforce_loss(log_probs, advantages, credit):
  """``-mean_b sum_k kappa_{k,b} log pi_{k,b} A_b`` (``[S, B]``, ``[B]``, ``[S, B]``)."""
  adv = jax.lax.stop_gradient(advantages)
  return -jnp.mean(jnp.sum(jax.lax.stop_gradient(credit) * log_probs, 0) * adv)


def ppo_loss(log_probs, old_log_probs, advantages, credit, clip_eps: float = 0.2):
  """PPO-clip over denoising steps; returns ``(loss, metrics)`` (ratio statistics)."""
  adv = jax.lax.stop_gradient(advantages)[None]
  ratio = jnp.exp(log_probs - jax.lax.stop_gradient(old_log_probs))
  surr = jnp.minimum(ratio * adv, jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * adv)
  loss = -jnp.mean(jnp.sum(jax.lax.stop_gradient(credit) * surr, 0))
  return loss, {"ppo_loss": loss, "ratio_mean": jnp.mean(ratio),
                "clip_frac": jnp.mean(jnp.abs(ratio - 1.0) > clip_eps)}


def gaussian_kl(mean_p, mean_q, std):
  """Per-step ``KL(N(mean_p, std^2 I) || N(mean_q, std^2 I))`` between the aligned and the
  reference transitions (same std): ``mean_* [S, B, ...]``, ``std [S]`` -> ``[S, B]``."""
  s, b = mean_p.shape[:2]
  var = jnp.square(jnp.asarray(std)).reshape(s, 1, 1)
  d = jnp.square(mean_p - mean_q).reshape(s, b, -1) / (2.0 * var)
  return jnp.sum(d, -1)
