"""The task's DP-optimal Q on Nav1D, as a critic with the learned critic's signature (for
``launch.oracle_selection``: IDQL selection with a perfect ranking)."""
import jax
import jax.numpy as jnp

from dmc_jax.envs import nav1d


def oracle_q_fn(config, obs_norm, act_norm):
  """``q_fn(_, obs [B, O], act [B, A]) -> [1, B]`` (one 'head'), in normalised units like
  the critic: the DP-optimal Q of the task."""
  env = nav1d.make_params(config.env.task_seed, config.env.horizon, config.env.step_size)
  values = jax.jit(nav1d.solve_values)(env)
  grid = jnp.linspace(-1.0, 1.0, values.shape[1])
  horizon = config.env.horizon

  def q_fn(_, o, a):
    obs, act = obs_norm.unnormalize(o), act_norm.unnormalize(a)
    t = jnp.clip(jnp.round(obs[:, 1] * horizon).astype(jnp.int32), 0, horizon - 1)
    nxt = nav1d.dynamics(obs[:, 0], act[:, 0], env.step_size)
    v_next = jax.vmap(lambda n, tt: jnp.interp(n, grid, values[tt + 1]))(nxt, t)
    return (nav1d.reward(env, t, nxt) + v_next)[None]
  return q_fn
