"""Coherency scores (the seed paper's consistency measures). PURE.

* Planners: the share of planned transitions ``(s_j, a_j, s_{j+1})`` that agree with the true
  dynamics, ``error(s_j, a_j, s_{j+1}) = |T(s_j, a_j) - s_{j+1}| < tol``.
* Policies: the mean density of the executed actions under the dataset's behaviour policy.
"""
from typing import Callable

import jax.numpy as jnp


def plan_coherency(error_fn: Callable, plan_obs, plan_actions, tol: float, weights=None):
  """``(share within tol, mean error)`` over plans ``plan_obs [..., H, O]`` and
  ``plan_actions [..., H - 1, A]``; ``weights [...]`` (e.g. alive & replanned) select plans.

  ``error_fn(obs [..., O], act [..., A], next_obs [..., O]) -> [...]``.
  """
  err = error_fn(plan_obs[..., :-1, :], plan_actions, plan_obs[..., 1:, :])   # [..., H - 1]
  w = jnp.ones(err.shape[:-1]) if weights is None else weights.astype(jnp.float32)
  w = jnp.broadcast_to(w[..., None], err.shape)
  total = jnp.maximum(jnp.sum(w), 1.0)
  return jnp.sum(w * (err < tol)) / total, jnp.sum(w * err) / total


def policy_coherency(density_fn: Callable, t, obs, actions, alive):
  """Mean ``density_fn(t, obs, action)`` over the alive steps (``[E, T, ...]`` inputs;
  ``density_fn`` works on one step, broadcast by the caller with vmap)."""
  dens = density_fn(t, obs, actions)
  w = alive.astype(jnp.float32)
  return jnp.sum(w * dens) / jnp.maximum(jnp.sum(w), 1.0)
