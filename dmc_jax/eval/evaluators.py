"""Evaluators (SHELL helpers next to the roll-outs): a DMC's policy scored in its environment.

``make_evaluator(config, dmc, ...)`` returns ``evaluate(params, critic_params, key, n) ->
(metrics, per_episode)``: on Nav1D one compiled program (:func:`~dmc_jax.eval.rollout.
make_rollout`, the env in JAX) with the behaviour-density, plan-coherency and critic-gap
diagnostics; on a gymnasium env the jitted policy stepped by :func:`~dmc_jax.eval.
gym_rollout.rollout_gym`.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from dmc_jax.critics import selection as sel
from dmc_jax.envs import nav1d
from dmc_jax.envs import registry
from dmc_jax.eval import coherency, gym_rollout
from dmc_jax.eval import rollout as rollout_lib
from dmc_jax.models import policy as policy_lib
from dmc_jax import placement


def config_heads(config, q_fn, use: str):
  """``q_fn`` restricted to the heads ``use`` (``"reward"``: alignment rewards; ``"select"``:
  the deployed selection) combines under ``config.critic`` (``split_heads``: the first half
  and the second; see :func:`~dmc_jax.critics.selection.head_q_fn`)."""
  return sel.head_q_fn(q_fn, config.critic.num_q, config.critic.get("split_heads", False), use)


def make_act(config, dmc, obs_norm, act_norm, q_fn, v_fn, num_candidates=None,
             selection=None):
  """The deployed policy of ``config.eval`` (``selection``, default ``eval.selection``, over
  ``num_candidates``, default ``eval.num_candidates``; one for ``first``), heads combined as
  ``config.critic`` says: the ``act`` the evaluators and online fine-tuning roll out."""
  e = config.eval
  selection = selection or e.selection
  q_fn = config_heads(config, q_fn, "select")
  if num_candidates is None:
    num_candidates = 1 if selection == "first" else e.num_candidates
  return policy_lib.make_policy(dmc, obs_norm=obs_norm, act_norm=act_norm,
                                selection=selection, num_candidates=num_candidates,
                                q_fn=q_fn, v_fn=v_fn, temperature=e.temperature,
                                expectile=config.critic.expectile,
                                q_agg=config.critic.q_agg, lcb_coef=config.critic.lcb_coef)


def make_evaluator(config, dmc, obs_norm, act_norm, q_fn, v_fn, env_info):
  """``evaluate(params, critic_params, key, num_episodes) -> (metrics, per_episode)``: a dict
  of floats, and per-episode arrays (``return``; ``success`` where the env reports it), in the
  order of the episode seeds drawn from ``key`` (jit inside). ``first`` (the sampler alone)
  draws one candidate: the first of ``eval.num_candidates`` has the same distribution."""
  act = make_act(config, dmc, obs_norm, act_norm, q_fn, v_fn)
  if config.task != "nav1d":
    return _gym_evaluator(config, dmc, act, env_info)
  env_params = nav1d.make_params(config.env.task_seed, config.env.horizon, config.env.step_size)
  values = jax.jit(nav1d.solve_values)(env_params)
  # The job mesh (train.parallel) splits the episodes over the devices when they divide the
  # episode count; parameters are replicated.
  mesh = placement.job_mesh(config.train.get("parallel", "mesh"))
  run = rollout_lib.make_rollout(
      nav1d.reset, nav1d.step, env_params, max_steps=config.env.horizon, act_fn=act,
      history=dmc.history, execute_steps=dmc.execute_steps,
      shard=None if mesh is None else
      functools.partial(placement.shard_batch, mesh=mesh, if_divisible=True))
  kind = config.data.dataset
  density = jax.vmap(jax.vmap(
      lambda t, o, a: nav1d.behaviour_density(kind, env_params, values, t, o[0], a[0]),
      (None, 0, 0)), (0, 1, 1), 1)
  err_fn = functools.partial(nav1d.plan_dynamics_error, env_params)

  disc = jnp.asarray(config.critic.discount ** np.arange(config.env.horizon), jnp.float32)
  q_select = config_heads(config, q_fn, "select")

  def critic_gap(critic_params, out):
    """The critic's over-estimation at the start: its value of the first executed action
    (heads combined as in selection) minus the discounted return that followed (in the
    critic's reward units)."""
    q0 = sel.aggregate_heads(q_select(critic_params[0], obs_norm.normalize(out["obs"][:, 0]),
                                      act_norm.normalize(out["actions"][:, 0])),
                             config.critic.q_agg, config.critic.lcb_coef)
    ret = jnp.sum(out["rewards"] * disc[None], 1) * config.data.reward_scale
    return jnp.mean(q0 - ret)

  @functools.partial(jax.jit, static_argnums=3)
  def evaluate(params, critic_params, key, num_episodes):
    out = run(params, critic_params, key, num_episodes)
    # The DP-optimal return from each episode's own start, and the policy's return as a
    # percentage of it (100 = optimal): Nav1D's normalised score, on the same starts.
    optimal = nav1d.optimal_return(values, out["obs"][:, 0, 0])
    metrics = {"return_mean": jnp.mean(out["returns"]), "return_std": jnp.std(out["returns"]),
               "optimal_return": jnp.mean(optimal),
               "normalized_score": 100.0 * jnp.mean(out["returns"]) / jnp.mean(optimal),
               "behaviour_density": coherency.policy_coherency(
                   density, out["t"], out["obs"], out["actions"], out["alive"]),
               "critic_gap": critic_gap(critic_params, out)}
    if "plan_obs" in out["info"]:
      w = out["replanned"][:, None] & jnp.swapaxes(out["alive"], 0, 1)
      share, err = coherency.plan_coherency(err_fn, out["info"]["plan_obs"],
                                            out["info"]["plan_actions"],
                                            config.eval.coherency_tol, w)
      metrics.update(plan_coherency=share, plan_dynamics_error=err)
    # Gathered: every device (every process) holds every episode's return.
    return placement.gather((metrics, out["returns"]), mesh)

  def wrapped(params, critic_params, key, num_episodes):
    # One placement for every call (the aligned params come back replicated over the
    # alignment's mesh, the reference's uncommitted): otherwise each compiles again.
    args = (params, critic_params, key)
    params, critic_params, key = (placement.on_first_device(args) if mesh is None
                                  else placement.replicate(args, mesh))
    metrics, returns = evaluate(params, critic_params, key, num_episodes)
    return {k: float(v) for k, v in metrics.items()}, {"return": np.asarray(returns)}
  return wrapped


def _gym_evaluator(config, dmc, act, env_info):
  import gymnasium as gym
  registry.register_all()
  spec = env_info["env_spec"]
  act_jit = jax.jit(act)

  def evaluate(params, critic_params, key, num_episodes):
    params, critic_params = placement.on_first_device((params, critic_params))
    fn = lambda k, hist: act_jit(params, critic_params, k, jnp.asarray(hist))[0]
    out = gym_rollout.rollout_gym(lambda: gym.make(spec), fn, key, num_episodes=num_episodes,
                                  max_steps=config.env.max_steps, history=dmc.history,
                                  execute_steps=dmc.execute_steps)
    r = out["returns"]
    m = {"return_mean": float(np.mean(r)), "return_std": float(np.std(r))}
    per_episode = {"return": np.asarray(r)}
    if "success" in out:
      m["success_rate"] = float(np.mean(out["success"]))
      per_episode["success"] = np.asarray(out["success"])
    if env_info.get("ref_scores"):
      m["normalized_score"] = normalized_score(np.mean(r), env_info["ref_scores"])
    return m, per_episode
  return evaluate


def normalized_score(ret, ref_scores) -> float:
  """D4RL's normalised score ``100 * (R - R_random) / (R_expert - R_random)`` (the formula of
  :func:`minari.get_normalized_score`, from the dataset's ``ref_min_score`` / ``ref_max_score``)."""
  lo, hi = ref_scores
  return float(100.0 * (ret - lo) / (hi - lo))


def random_policy_returns(config, key, num_episodes):
  """Returns of the uniform random policy (the baseline every table reports)."""
  if config.task != "nav1d":
    return None
  env_params = nav1d.make_params(config.env.task_seed, config.env.horizon, config.env.step_size)
  act = lambda p, c, k, h: (jax.random.uniform(k, (h.shape[0], 1, 1), minval=-1, maxval=1), {})
  run = rollout_lib.make_rollout(nav1d.reset, nav1d.step, env_params,
                                 max_steps=config.env.horizon, act_fn=act)
  return np.asarray(jax.jit(run, static_argnums=3)(None, None, key, num_episodes)["returns"])
