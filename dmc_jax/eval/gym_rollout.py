"""Roll-outs in gymnasium environments through a vector env (SHELL: host loop)."""
from typing import Callable

import gymnasium as gym
import jax
import numpy as np

from dmc_jax import progress as progress_lib


def rollout_gym(make_env: Callable, act_fn: Callable, key, *, num_episodes: int,
                max_steps: int, history: int = 1, execute_steps: int = 1,
                seeds=None, name: str = "gym eval") -> dict:
  """Runs ``num_episodes`` episodes in a ``SyncVectorEnv`` and returns ``returns [E]``,
  ``lengths [E]``, ``obs [E, T, O]``, ``actions [E, T, A]``, ``alive [E, T]``, the
  transitions' ``rewards [E, T]``, ``next_obs [E, T, O]`` (the true next observation, also
  at an episode's end) and ``terminated [E, T]`` (a terminal state, not a time limit), and
  ``success [E]`` (1 where ``info["success"]`` was set at some step) when the env reports it.

  ``act_fn(key, history [E, K, O]) -> actions [E, X, A]`` (jit it); re-plans every
  ``execute_steps`` steps. Episode ``i`` resets with ``seed = seeds[i]`` (default ``i``).
  Finished episodes keep stepping (auto-reset) but are masked out. A roll-out that runs
  longer than 10 s prints a progress line (``name``, env steps) every 10 s.
  """
  progress = progress_lib.Progress(name, max_steps, quiet_for=10.0)
  envs = gym.vector.SyncVectorEnv([make_env for _ in range(num_episodes)],
                                  autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
  seeds = list(range(num_episodes)) if seeds is None else [int(s) for s in seeds]
  obs, _ = envs.reset(seed=seeds)
  space = envs.single_action_space
  bounds = None
  if isinstance(space, gym.spaces.Box) and np.all(np.isfinite(space.low)) and np.all(
      np.isfinite(space.high)):
    bounds = (space.low, space.high)
  hist = np.repeat(np.asarray(obs, np.float32)[:, None], history, axis=1)
  alive = np.ones(num_episodes, bool)
  rets = np.zeros(num_episodes)
  lengths = np.zeros(num_episodes, np.int64)
  success = None
  rec_obs, rec_act, rec_alive, rec_rew, rec_next, rec_term = [], [], [], [], [], []
  queue = None
  for t in range(max_steps):
    j = t % execute_steps
    if j == 0:
      queue = np.asarray(act_fn(jax.random.fold_in(key, t), hist))
    a = queue[:, j]
    if bounds is not None:  # executed actions stay inside the env's action space
      a = np.clip(a, bounds[0], bounds[1])
    rec_obs.append(hist[:, -1])
    rec_act.append(a)
    rec_alive.append(alive.copy())
    obs, r, term, trunc, info = envs.step(a)
    nxt = np.array(obs, np.float32)
    if "final_obs" in info:  # SAME_STEP auto-reset: obs is already the next episode's start
      for i in np.flatnonzero(np.asarray(info.get("_final_obs", []), bool)):
        nxt[i] = np.asarray(info["final_obs"][i], np.float32)
    rec_rew.append(np.asarray(r, np.float64))
    rec_next.append(nxt)
    rec_term.append(np.asarray(term, bool))
    rets += np.where(alive, r, 0.0)
    if "success" in info:
      flag = np.asarray(info["success"], np.float64) > 0
      flag &= np.asarray(info.get("_success", np.ones_like(flag)), bool)
      success = (np.zeros(num_episodes, bool) if success is None else success) | (alive & flag)
    lengths += alive
    done = term | trunc
    # With SAME_STEP auto-reset, obs of a finished env is already the next episode's start.
    hist = np.concatenate([hist[:, 1:], np.asarray(obs, np.float32)[:, None]], 1)
    alive &= ~done
    finished = not alive.any()
    if finished:
      progress.total = t + 1  # every episode ended: the last line says 100 %
    progress.update(t + 1, f"{int(alive.sum())}/{num_episodes} episodes running")
    if finished:
      break
  envs.close()
  out = {"returns": rets, "lengths": lengths, "obs": np.stack(rec_obs, 1),
         "actions": np.stack(rec_act, 1), "alive": np.stack(rec_alive, 1),
         "rewards": np.stack(rec_rew, 1), "next_obs": np.stack(rec_next, 1),
         "terminated": np.stack(rec_term, 1)}
  if success is not None:
    out["success"] = success.astype(np.float64)
  return out
