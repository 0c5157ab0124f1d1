"""MetaWorld (v3) tasks as seeded gymnasium envs (SHELL): ``dmc_jax/MetaWorld-v0``.

``gym.make("dmc_jax/MetaWorld-v0", task="button-press", max_episode_steps=150)`` is the
goal-observable v3 env of ``task`` (39-d observations, 4-d actions in [-1, 1]) where
``reset(seed=s)`` draws the object and goal positions from ``s`` alone, so an episode seed
names one task variation (MetaWorld's own ``reset`` ignores its seed argument). ``info``
carries MetaWorld's ``success`` flag at every step. Episodes are truncated after
``max_episode_steps`` (at most MetaWorld's limit of 500).

MetaWorld and MuJoCo are optional (``pip install -e .[metaworld]``): the id is registered
when ``dmc_jax.envs`` is imported, but ``metaworld`` is only imported when the env is made.
"""
import gymnasium as gym
import numpy as np

ENV_ID = "dmc_jax/MetaWorld-v0"
TASKS = ("button-press", "drawer-open", "sweep-into", "plate-slide")
MAX_PATH_LENGTH = 500  # MetaWorld raises past this many steps


def _import_metaworld():
  try:
    import metaworld  # noqa: F401  (registers its classes)
    from metaworld import env_dict, policies
  except ImportError as e:
    raise ImportError(
        f"MetaWorld is not installed ({e}); install the extra with "
        "`pip install -e .[metaworld]` (metaworld 3.1.1, mujoco 3.3)") from None
  return env_dict, policies


def check_task(task: str) -> str:
  """The v3 env name of ``task`` (``button-press`` or ``button-press-v3``), or a clear error."""
  env_dict, _ = _import_metaworld()
  name = task if task.endswith("-v3") else f"{task}-v3"
  if f"{name}-goal-observable" not in env_dict.ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE:
    known = sorted(k[:-len("-v3")] for k in env_dict.ALL_V3_ENVIRONMENTS)
    raise ValueError(f"unknown MetaWorld task {task!r}; known v3 tasks: {known}")
  return name


def scripted_policy(task: str):
  """MetaWorld's scripted expert for ``task``: ``policy(obs [39]) -> action [4]``."""
  _, policies = _import_metaworld()
  return policies.ENV_POLICY_MAP[check_task(task)]().get_action


class MetaWorldEnv(gym.Env):
  """One MetaWorld v3 task with seeded task variations (see the module docstring)."""
  metadata = {"render_modes": []}

  def __init__(self, task: str = "button-press", max_episode_steps: int = 150):
    env_dict, _ = _import_metaworld()
    if not 1 <= max_episode_steps <= MAX_PATH_LENGTH:
      raise ValueError(f"max_episode_steps={max_episode_steps} must be in [1, "
                       f"{MAX_PATH_LENGTH}] (MetaWorld's episode limit)")
    self.task = check_task(task)
    self.max_episode_steps = int(max_episode_steps)
    self._env = env_dict.ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE[f"{self.task}-goal-observable"]()
    self._env.seeded_rand_vec = True  # task variations drawn from the env's np_random
    self.observation_space = gym.spaces.Box(-np.inf, np.inf, self._env.observation_space.shape,
                                            np.float32)
    self.action_space = gym.spaces.Box(-1.0, 1.0, self._env.action_space.shape, np.float32)
    self._t = None

  def reset(self, *, seed=None, options=None):
    super().reset(seed=seed)
    s = seed if seed is not None else int(self.np_random.integers(2**31 - 1))
    self._env._freeze_rand_vec = False
    self._env.seed(int(s))
    obs, info = self._env.reset()
    self._t = 0
    return obs.astype(np.float32), {"success": 0.0, **{k: v for k, v in info.items()
                                                        if np.isscalar(v)}}

  def step(self, action):
    if self._t is None:
      raise RuntimeError("call reset() before step()")
    action = np.clip(np.asarray(action, np.float32).reshape(self.action_space.shape), -1, 1)
    obs, r, _, _, info = self._env.step(action)
    self._t += 1
    truncated = self._t >= self.max_episode_steps
    info = {k: float(v) for k, v in info.items() if np.isscalar(v)}
    return obs.astype(np.float32), float(r), False, truncated, info

  def close(self):
    self._env.close()


def register() -> None:
  if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point="dmc_jax.envs.metaworld:MetaWorldEnv")
