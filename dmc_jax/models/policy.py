"""From a DMC and a critic to an acting policy: propose ``N`` candidates, select one. PURE."""
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from dmc_jax.critics import selection as sel
from dmc_jax.data.episodes import Normalizer
from dmc_jax.models.dmc import DMC


def make_policy(dmc: DMC, *, obs_norm: Normalizer, act_norm: Normalizer, selection: str,
                num_candidates: int, q_fn: Optional[Callable] = None,
                v_fn: Optional[Callable] = None, temperature: float = 1.0,
                expectile: float = 0.7, q_agg: str = "min",
                lcb_coef: float = 1.0) -> Callable:
  """``act(params, critic_params, key, history [B, K, O]) -> (actions [B, E, A], info)``.

  Observations and actions are in environment units; the DMC and the critic work on
  normalised ones. ``critic_params = (q_params, v_params)`` (unused by ``expectation`` and
  ``first``). ``info`` holds the chosen plan (``plan_obs [B, H, O]``, ``plan_actions
  [B, H - 1, A]``, environment units) for planners, and ``q [B]`` of the chosen candidate.
  The critic's heads are combined with ``q_agg`` (:func:`~dmc_jax.critics.selection.
  aggregate_heads`: ``min`` or the lower confidence bound ``lcb``).
  """
  if selection not in sel.SELECTIONS:
    raise ValueError(f"unknown selection {selection!r}; known: {sel.SELECTIONS}")
  needs_critic = selection not in ("expectation", "first")
  if needs_critic and (q_fn is None or v_fn is None):
    raise ValueError(f"selection {selection!r} needs a critic (q_fn and v_fn)")

  def act(params, critic_params, key, history):
    k_prop, k_sel = jax.random.split(key)
    hist = obs_norm.normalize(history)
    prop = dmc.propose(params, k_prop, hist, num_candidates)
    b = hist.shape[0]
    info = {}
    if needs_critic:
      q_params, v_params = critic_params
      obs0 = jnp.repeat(hist[:, -1], num_candidates, axis=0)
      first = prop.actions[:, :, 0].reshape(b * num_candidates, -1)
      q = sel.aggregate_heads(q_fn(q_params, obs0, first), q_agg, lcb_coef).reshape(
          b, num_candidates)
      idx = sel.select_index(k_sel, q, v_fn(v_params, hist[:, -1]), selection, temperature,
                             expectile)
      chosen = sel.gather(prop, idx)
      info["q"] = jnp.take_along_axis(q, idx[:, None], 1)[:, 0]
    elif selection == "first":
      chosen = sel.gather(prop, jnp.zeros((b,), jnp.int32))
    else:
      chosen = sel.expectation(prop)
    if chosen.plan_obs is not None:
      info["plan_obs"] = obs_norm.unnormalize(chosen.plan_obs)
      info["plan_actions"] = act_norm.unnormalize(chosen.plan_actions)
    return act_norm.unnormalize(chosen.actions), info

  return act
