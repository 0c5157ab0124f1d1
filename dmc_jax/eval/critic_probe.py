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
from dmc_jax.eval import rollout as rollout_lib


def greedy_returns(key, q_fn: Callable, env: nav1d.Nav1DParams, *, obs_norm, act_norm,
                   num_candidates: int, num_episodes: int, combine: Callable = None):
  """Returns ``[num_episodes]`` of the controller ``a = argmax_i q(s, a_i)``, ``a_i ~ U[-1, 1]``,
  rolled out with :func:`dmc_jax.eval.rollout.make_rollout` (the evaluators' roll-out).

  ``q_fn(obs_n [M, O], act_n [M, A]) -> [heads, M]`` in normalised units; ``combine(q
  [heads, M]) -> [M]`` merges the heads as the deployed selection does (default: their
  minimum; :func:`dmc_jax.critics.selection.aggregate_heads`). The candidates depend only on
  ``key`` and the step, so two critics are compared on the same candidates.
  """
  combine = combine or (lambda q: jnp.min(q, 0))
  n, a_dim = num_candidates, nav1d.ACT_DIM

  def act(_, __, k, hist):
    obs = hist[:, -1]  # [E, O]
    e = obs.shape[0]
    cand = jax.random.uniform(k, (e, n, a_dim), minval=-1.0, maxval=1.0)
    o = jnp.repeat(obs_norm.normalize(obs), n, axis=0)  # [E N, O]
    q = combine(q_fn(o, act_norm.normalize(cand.reshape(e * n, a_dim)))).reshape(e, n)
    best = jnp.take_along_axis(cand, jnp.argmax(q, -1)[:, None, None], axis=1)  # [E, 1, A]
    return best, {}

  rollout = rollout_lib.make_rollout(nav1d.reset, nav1d.step, env, max_steps=env.horizon,
                                     act_fn=act)
  return rollout(None, None, key, num_episodes)["returns"]
