"""Gymnasium face of Nav1D (SHELL): numpy in/out over the pure functions of ``nav1d``.

Registered as ``dmc_jax/Nav1D-v0`` by ``register()`` (or
``dmc_jax.envs.registry.register_all``). The jitted pure ``reset``/``step`` do the work, so a gymnasium roll-out and a ``jit`` roll-out of the same
actions give the same numbers.
"""
import functools

import gymnasium as gym
import jax
import numpy as np

from dmc_jax.envs import nav1d

ENV_ID = "dmc_jax/Nav1D-v0"


@functools.lru_cache(maxsize=None)
def _compiled():
  return jax.jit(nav1d.reset), jax.jit(nav1d.step)


class Nav1DEnv(gym.Env):
  """``gym.make("dmc_jax/Nav1D-v0", task_seed=0, horizon=32, step_size=0.1)``.

  ``reset(seed=s)`` draws the start with ``jax.random.key(s)`` (so seeds match the pure env's
  keys); without a seed, from the env's ``np_random``. Episodes terminate after ``horizon``
  steps (time is part of the observation).
  """
  metadata = {"render_modes": []}

  def __init__(self, task_seed: int = 0, horizon: int = 32, step_size: float = 0.1,
               start_low: float = -1.0, start_high: float = 1.0):
    self.params = nav1d.make_params(task_seed, horizon, step_size, start_low, start_high)
    self.observation_space = gym.spaces.Box(
        low=np.array([-1, 0, -1, -1], np.float32), high=np.ones(4, np.float32),
        dtype=np.float32)
    self.action_space = gym.spaces.Box(-1.0, 1.0, (nav1d.ACT_DIM,), np.float32)
    self._state = None

  def reset(self, *, seed=None, options=None):
    super().reset(seed=seed)
    key_seed = seed if seed is not None else int(self.np_random.integers(2**31 - 1))
    reset_fn, _ = _compiled()
    self._state, obs = reset_fn(jax.random.key(key_seed), self.params)
    return np.asarray(obs), {}

  def step(self, action):
    if self._state is None:
      raise RuntimeError("call reset() before step()")
    _, step_fn = _compiled()
    action = np.asarray(action, np.float32).reshape(nav1d.ACT_DIM)
    self._state, obs, r, done = step_fn(None, self._state, action, self.params)
    return np.asarray(obs), float(r), bool(done), False, {}


def register() -> None:
  if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point="dmc_jax.envs.gymnasium:Nav1DEnv")
