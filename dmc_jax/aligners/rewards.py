"""Alignment rewards from a critic: first action, plan-level, pessimistic. PURE.

``make_reward(...) -> reward(params, critic_params, x_0 [B, ...], hist [B, K, O]) -> [B]``,
``critic_params = (q_params, v_params)``. The seed paper's reward is "the return of the
state-action trajectory or the Q-value of each state-action pair"; here, for a sample decoded
into a :class:`~dmc_jax.models.dmc.Proposal`:

* ``first``: ``Q(s, a_0)``, the executed first action at the current observation;
* ``plan_q`` (planners): the discounted mean ``sum_t g^t Q(s_t, a_t) / sum_t g^t`` over the
  planned pairs (Diffuser: the plan's own actions; Decision Diffuser: its inverse-dynamics
  actions). Its scale is that of ``first``; a plan whose later pairs the critic dislikes (an
  incoherent jump that only the first action profits from) scores lower;
* ``plan_return_v`` (planners): the planned return plus ``V`` of the last planned state,
  ``sum_{t < H-1} g^t r_t + g^(H-1) V(s_{H-1})``, with the critic's implied rewards
  ``r_t = Q(s_t, a_t) - g V(s_{t+1})`` (IQL's Bellman identity; no separate reward model).
  It telescopes to ``Q(s_0, a_0) + sum_{t=1}^{H-2} g^t A(s_t, a_t)``: the first pair's value
  plus the discounted advantages of the later planned pairs.

A Diffusion Policy has no planned states: with one executed action (``execute_steps = 1``)
every kind is ``first``; the shell refuses plan rewards for a chunked policy.

Heads: ``q_fn`` returns ``[N, B]``; they are combined by ``q_agg`` (``min``, or ``lcb``:
``mean - lcb_coef * std`` over the heads, a pessimistic lower confidence bound).

``dynamics_coef > 0`` (planners, with a known or learned dynamics model
``dynamics_error(obs, act, next_obs) -> [...]`` in environment units: Nav1D's
``plan_dynamics_error`` or :func:`dmc_jax.models.dynamics.make_error_fn`) subtracts ``dynamics_coef`` times the mean
dynamics error of the planned transitions, so that alignment cannot buy reward with plans
that break the dynamics (the coherency score).
"""
from typing import Callable, Optional

import jax.numpy as jnp

from dmc_jax.critics import selection as sel

KINDS = ("first", "plan_q", "plan_return_v")


def discount_weights(n: int, discount: float):
  return discount ** jnp.arange(n, dtype=jnp.float32)


def plan_q(qs_plan, discount: float):
  """``qs_plan [B, T]`` (aggregated Q of the planned pairs) -> ``[B]`` discounted mean."""
  w = discount_weights(qs_plan.shape[1], discount)
  return jnp.sum(qs_plan * w, 1) / jnp.sum(w)


def plan_return_v(q_plan, v_next, v_last, discount: float):
  """``q_plan [B, T]`` Q of the ``T = H - 1`` planned pairs, ``v_next [B, T]`` V of the
  states after each pair, ``v_last [B]`` V of the last planned state -> ``[B]``."""
  t = q_plan.shape[1]
  w = discount_weights(t, discount)
  rewards = q_plan - discount * v_next
  return jnp.sum(w * rewards, 1) + discount ** t * v_last


def make_reward(sampling, q_fn: Callable, v_fn: Optional[Callable] = None, *,
                kind: str = "first", q_agg: str = "min", lcb_coef: float = 1.0,
                discount: float = 0.99, dynamics_error: Optional[Callable] = None,
                dynamics_coef: float = 0.0, obs_norm=None, act_norm=None) -> Callable:
  """The alignment reward (see the module doc). ``obs_norm`` / ``act_norm`` turn the
  normalised plan into environment units for ``dynamics_error``."""
  if kind not in KINDS:
    raise ValueError(f"unknown alignment reward {kind!r}; known: {KINDS}")
  if q_agg not in sel.Q_AGGS:
    raise ValueError(f"unknown Q aggregation {q_agg!r}; known: {sel.Q_AGGS}")
  if kind == "plan_return_v" and v_fn is None:
    raise ValueError("reward 'plan_return_v' needs the critic's V (v_fn)")
  if dynamics_coef and (dynamics_error is None or obs_norm is None or act_norm is None):
    raise ValueError("dynamics_coef > 0 needs a dynamics model (dynamics_error) and the "
                     "normalisers")
  agg = lambda qs: sel.aggregate_heads(qs, q_agg, lcb_coef)

  def q_of(q_params, obs, act):
    lead = obs.shape[:-1]
    q = agg(q_fn(q_params, obs.reshape(-1, obs.shape[-1]), act.reshape(-1, act.shape[-1])))
    return q.reshape(lead)

  def reward(params, critic_params, x_0, hist):
    q_params, v_params = critic_params
    prop = sampling.decode(params, x_0)
    obs0 = hist[:, -1]
    planned = prop.plan_obs is not None
    if kind == "first" or not planned:
      r = q_of(q_params, obs0, prop.actions[:, 0])
    else:
      s, a = prop.plan_obs[:, :-1], prop.plan_actions                  # [B, T, O], [B, T, A]
      # The first planned state is in-painted; use the observation itself.
      s = s.at[:, 0].set(obs0)
      q = q_of(q_params, s, a)                                          # [B, T]
      if kind == "plan_q":
        r = plan_q(q, discount)
      else:
        nxt = prop.plan_obs[:, 1:]
        v = v_fn(v_params, nxt.reshape(-1, nxt.shape[-1])).reshape(nxt.shape[:2])
        r = plan_return_v(q, v, v[:, -1], discount)
    if dynamics_coef and planned:
      obs = obs_norm.unnormalize(prop.plan_obs)
      err = dynamics_error(obs[:, :-1], act_norm.unnormalize(prop.plan_actions), obs[:, 1:])
      r = r - dynamics_coef * jnp.mean(err, 1)
    return r

  return reward
