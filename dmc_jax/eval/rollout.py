"""Roll-outs of a policy in a pure-JAX environment, entirely inside ``jit``. PURE.

``lax.scan`` over time, ``vmap`` over episodes. The policy acts on the batch of episodes
(so its sampler runs once per step for all of them) and is called every ``execute_steps``
steps (``lax.cond`` on the shared time step); in between, the queued actions are executed.
"""
from typing import Callable, Optional

import jax
import jax.numpy as jnp


def make_rollout(reset_fn: Callable, step_fn: Callable, env_params, *, max_steps: int,
                 act_fn: Callable, history: int = 1, execute_steps: int = 1,
                 shard: Optional[Callable] = None) -> Callable:
  """Builds ``rollout(policy_params, critic_params, key, num_episodes) -> dict``.

  Args:
    reset_fn: ``(key, env_params) -> (state, obs [O])``.
    step_fn: ``(key, state, action [A], env_params) -> (state, obs, reward, done)``.
    act_fn: ``(params, critic_params, key, history [E, K, O]) -> (actions [E, X, A], info)``
      with ``X >= execute_steps``.
    history: ``K``, observations the policy sees (earlier ones repeat the first).
    shard: optional ``tree -> tree`` applied to the reset states and observations (e.g. a
      sharding constraint that splits the episodes over a mesh); the episodes are
      independent, so it changes where they run, not what they compute.

  Returns (``num_episodes`` static): ``returns [E]``, ``obs [E, T, O]``, ``actions [E, T, A]``,
  ``rewards [E, T]``, ``alive [E, T]`` (False after the episode ended), ``t [T]``,
  ``replanned [T]`` and ``info`` (the policy's info at each step ``[T, E, ...]``; stale
  between re-plans).
  """
  def rollout(params, critic_params, key, num_episodes: int):
    k_reset, k_run = jax.random.split(key)
    states, obs = jax.vmap(reset_fn, (0, None))(jax.random.split(k_reset, num_episodes),
                                                env_params)
    if shard is not None:
      states, obs = shard((states, obs))
    hist = jnp.repeat(obs[:, None], history, axis=1)
    shapes = jax.eval_shape(act_fn, params, critic_params, k_run, hist)
    queue0, info0 = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    alive0 = jnp.ones((num_episodes,), bool)

    def body(carry, xs):
      states, hist, queue, info, alive = carry
      t, k_t = xs
      k_act, k_env = jax.random.split(k_t)
      j = t % execute_steps
      queue, info = jax.lax.cond(j == 0, lambda: act_fn(params, critic_params, k_act, hist),
                                 lambda: (queue, info))
      a = queue[:, j]
      obs_t = hist[:, -1]
      states, obs, r, done = jax.vmap(step_fn, (0, 0, 0, None))(
          jax.random.split(k_env, num_episodes), states, a, env_params)
      hist = jnp.concatenate([hist[:, 1:], obs[:, None]], 1)
      rec = {"obs": obs_t, "actions": a, "rewards": r * alive, "alive": alive,
             "replanned": j == 0, "info": info}
      return (states, hist, queue, info, alive & ~done), rec

    steps = jnp.arange(max_steps)
    _, rec = jax.lax.scan(body, (states, hist, queue0, info0, alive0),
                          (steps, jax.random.split(k_run, max_steps)))
    swap = lambda x: jnp.swapaxes(x, 0, 1)
    return {"returns": jnp.sum(rec["rewards"], 0), "obs": swap(rec["obs"]),
            "actions": swap(rec["actions"]), "rewards": swap(rec["rewards"]),
            "alive": swap(rec["alive"]), "t": steps, "replanned": rec["replanned"],
            "info": rec["info"]}

  return rollout
