"""The three Nav1D Minari datasets (SHELL): ``dmc_jax/nav1d/{partial,full,expert}-v0``."""
import jax
import numpy as np

from dmc_jax.data import dataset_ids
from dmc_jax.data import episodes as ep_lib
from dmc_jax.data import minari_io
from dmc_jax.envs import gymnasium as gym_face
from dmc_jax.envs import nav1d

DESCRIPTIONS = {
    "partial": "uniform random actions restricted to keep the position in [-1, 0]; starts "
               "~ U[-1, 0]",
    "full": "uniform random actions in [-1, 1]; starts ~ U[-1, 1]",
    "expert": f"greedy on dynamic-programming values plus N(0, {nav1d.EXPERT_NOISE}^2) action "
              "noise, clipped; starts ~ U[-1, 1]",
}


dataset_id = dataset_ids.nav1d_id


def env_kwargs(task_seed: int, horizon: int, step_size: float) -> dict:
  return {"task_seed": int(task_seed), "horizon": int(horizon), "step_size": float(step_size)}


def make_dataset(kind: str, *, num_episodes: int = 1000, seed: int = 0, task_seed: int = 0,
                 horizon: int = 32, step_size: float = 0.1, overwrite: bool = False,
                 name: str | None = None):
  """Rolls out the ``kind`` behaviour policy (in ``jit``) and writes it with Minari under
  ``name`` (default :func:`dataset_id`)."""
  if kind not in nav1d.DATASET_KINDS:
    raise ValueError(f"unknown Nav1D dataset kind {kind!r}; known: {nav1d.DATASET_KINDS}")
  import gymnasium as gym
  gym_face.register()
  env = gym.make(gym_face.ENV_ID, **env_kwargs(task_seed, horizon, step_size))
  params = env.unwrapped.params
  arrays = jax.jit(nav1d.collect_episodes, static_argnums=(2, 3))(
      jax.random.key(seed), params, kind, num_episodes)
  eps = ep_lib.episodes_from_arrays(jax.tree.map(np.asarray, arrays))
  return minari_io.write_dataset(
      name or dataset_id(kind), eps, env, algorithm_name=f"nav1d-{kind}-behaviour",
      description=f"Nav1D {kind}: {DESCRIPTIONS[kind]} (collection seed {seed})",
      overwrite=overwrite)


def ensure_dataset(kind: str, *, task_seed: int, horizon: int, step_size: float,
                   num_episodes: int = 1000, seed: int = 0, name: str | None = None) -> str:
  """Returns the dataset id, generating it if it is not local. An existing dataset made for
  another task (seed, horizon, step size) or of another size is an error, not silently
  reused."""
  did = name or dataset_id(kind)
  if not minari_io.exists(did):
    make_dataset(kind, num_episodes=num_episodes, seed=seed, task_seed=task_seed,
                 horizon=horizon, step_size=step_size, name=did)
  else:
    ds = minari_io.open_dataset(did)
    got = dict(ds.spec.env_spec.kwargs)
    want = env_kwargs(task_seed, horizon, step_size)
    for k, v in want.items():
      if got.get(k, v) != v:
        raise ValueError(
            f"local dataset {did!r} was made for {k}={got.get(k)!r} but the config asks for "
            f"{v!r}; regenerate it with `python -m launch.make_nav1d_data --overwrite` (and "
            f"matching flags) or point MINARI_DATASETS_PATH elsewhere")
    minari_io.check_episode_count(
        did, num_episodes, f"python -m launch.make_nav1d_data --kinds={kind} "
        f"--task_seed={task_seed} --horizon={horizon} --step_size={step_size}")
  return did
