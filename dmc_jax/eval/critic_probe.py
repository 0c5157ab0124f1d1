"""How well a critic *ranks* actions, without a diffusion model (Nav1D). PURE.

The deployed controller picks, among ``N`` candidate actions, the one the critic values most.
:func:`greedy_returns` rolls out exactly that controller with candidates drawn uniformly from
the action box, so the return measures the critic's ranking alone: with the task's
DP-optimal ``Q*`` (:func:`dmc_jax.eval.oracle.oracle_q_fn`) it is the best any critic can do
with ``N`` uniform candidates, and the gap to it is what the learned critic's ranking costs.
``launch.critic_study`` sweeps critic settings with it (BUILD_NOTES.md, issue #14).
"""
from typing import Callable

import jax
import jax.numpy as jnp

from dmc_jax.envs import nav1d


def greedy_returns(key, q_fn: Callable, env: nav1d.Nav1DParams, *, obs_norm, act_norm,
                   num_candidates: int, num_episodes: int, combine: Callable = None):
  """Returns ``[num_episodes]`` of the controller ``a = argmax_i q(s, a_i)``, ``a_i ~ U[-1, 1]``.

  ``q_fn(obs_n [N, O], act_n [N, A]) -> [heads, N]`` in normalised units; ``combine(q
  [heads, N]) -> [N]`` merges the heads as the deployed selection does (default: their
  minimum; :func:`dmc_jax.critics.selection.aggregate_heads`). The candidates of step ``t`` of episode ``e`` depend only on
  ``(key, e, t)``, so two critics are compared on the same candidates.
  """
  combine = combine or (lambda q: jnp.min(q, 0))

  def act(k, obs):
    a = jax.random.uniform(k, (num_candidates, nav1d.ACT_DIM), minval=-1.0, maxval=1.0)
    o = jnp.broadcast_to(obs_norm.normalize(obs), (num_candidates, obs.shape[-1]))
    q = combine(q_fn(o, act_norm.normalize(a)))
    return a[jnp.argmax(q)]

  def episode(k):
    k_reset, k_steps = jax.random.split(k)
    state, obs = nav1d.reset(k_reset, env)

    def body(carry, k_t):
      state, obs = carry
      state, obs, r, _ = nav1d.step(k_t, state, act(k_t, obs), env)
      return (state, obs), r
    _, rewards = jax.lax.scan(body, (state, obs), jax.random.split(k_steps, env.horizon))
    return jnp.sum(rewards)

  return jax.vmap(episode)(jax.random.split(key, num_episodes))
