"""Offline datasets collected in gymnasium environments and written with Minari (SHELL).

Two families, both generated on the machine because nothing can be downloaded at run time:

* **MetaWorld** (``dmc_jax/metaworld/<task>/<quality>-v0``): MetaWorld's scripted expert in
  the seeded env ``dmc_jax/MetaWorld-v0``, at three qualities (:data:`METAWORLD_QUALITIES`).
* **gymnasium MuJoCo** (``dmc_jax/<env>/<quality>-v0`` for ``hopper``, ``walker2d``,
  ``halfcheetah``): uniform random actions (``random``) or a linear controller trained briefly
  with Augmented Random Search plus Gaussian action noise (``ars``). The datasets carry
  D4RL's reference returns, so :func:`minari.get_normalized_score` gives D4RL-style scores.

The published Minari datasets (``mujoco/hopper/medium-v0``, ...) load through the same
``task=minari`` path when they are local; these generators only exist so that the whole path
is exercised and tested without them.
"""
import dataclasses

import gymnasium as gym
import numpy as np

from dmc_jax import progress as progress_lib
from dmc_jax.data import dataset_ids, minari_io
from dmc_jax.envs import metaworld as mw_env


@dataclasses.dataclass(frozen=True)
class Quality:
  """A behaviour policy: the expert action plus ``N(0, noise^2)``, replaced by a uniform random
  action with probability ``random_frac``; clipped to the action box. With ``per_episode``,
  each episode scales both by its own ``u ~ U[0, 1]`` (a spread of skill in one dataset)."""
  noise: float
  random_frac: float
  description: str
  per_episode: bool = False


METAWORLD_QUALITIES = {
    "expert": Quality(0.1, 0.0, "scripted expert + N(0, 0.1^2) action noise"),
    "medium": Quality(1.0, 0.8, "scripted expert + N(0, (u * 1.0)^2) action noise and a "
                                "uniform random action with probability u * 0.8, u ~ U[0, 1] "
                                "drawn per episode", per_episode=True),
    "random": Quality(0.0, 1.0, "uniform random actions"),
}
MUJOCO_ENVS = {"hopper": "Hopper-v5", "walker2d": "Walker2d-v5", "halfcheetah": "HalfCheetah-v5"}
# D4RL's reference returns (random policy, expert SAC) of the v2 envs; the normalised score is
# 100 * (R - min) / (max - min), as in D4RL and minari.get_normalized_score.
D4RL_REF_SCORES = {"hopper": (-20.272305, 3234.3), "walker2d": (1.629008, 4592.3),
                   "halfcheetah": (-280.178953, 12135.0)}
MUJOCO_QUALITIES = dataset_ids.MUJOCO_QUALITIES
metaworld_id, mujoco_id = dataset_ids.metaworld_id, dataset_ids.mujoco_id


# ---------------------------------------------------------------------------- collection
def collect(env: gym.Env, policy, num_episodes: int, *, seed: int, quality: Quality,
            name: str = "collect"):
  """Rolls out ``policy(obs) -> action`` (numpy) with ``quality``'s perturbation; episode
  ``i`` resets with seed ``seed * 100003 + i``. Returns the per-episode dicts of
  :data:`~dmc_jax.data.episodes.FIELDS` and each episode's ``success`` (any step with
  ``info["success"]``; 0 where the env has no such flag). A progress line (``name``) every
  5 s once it has run that long."""
  progress = progress_lib.Progress(name, num_episodes, compiled_first=False, quiet_for=5.0)
  rng = np.random.default_rng(seed)
  low, high = env.action_space.low, env.action_space.high
  episodes, success = [], []
  for i in range(num_episodes):
    obs, _ = env.reset(seed=seed * 100003 + i)
    ep = {"observations": [obs], "actions": [], "rewards": [], "terminations": [],
          "truncations": []}
    solved = False
    u = rng.uniform() if quality.per_episode else 1.0
    while True:
      if quality.random_frac > 0 and rng.random() < u * quality.random_frac:
        a = rng.uniform(low, high)
      else:
        a = np.asarray(policy(obs), np.float64) + u * quality.noise * rng.normal(
            size=low.shape)
      a = np.clip(a, low, high).astype(np.float32)
      obs, r, term, trunc, info = env.step(a)
      solved |= bool(info.get("success", 0.0))
      for k, v in (("observations", obs), ("actions", a), ("rewards", r),
                   ("terminations", term), ("truncations", trunc)):
        ep[k].append(v)
      if term or trunc:
        break
    episodes.append({k: np.asarray(v) for k, v in ep.items()})
    success.append(float(solved))
    progress.update(i + 1, "episodes")
  return episodes, np.asarray(success)


def make_metaworld_dataset(task: str, quality: str, *, num_episodes: int = 200, seed: int = 0,
                           max_episode_steps: int = 150, overwrite: bool = False,
                           name: str | None = None):
  """Collects ``quality`` episodes of ``task`` and writes them as a Minari dataset."""
  if quality not in METAWORLD_QUALITIES:
    raise ValueError(f"unknown MetaWorld dataset quality {quality!r}; known: "
                     f"{tuple(METAWORLD_QUALITIES)}")
  q = METAWORLD_QUALITIES[quality]
  mw_env.register()
  env = gym.make(mw_env.ENV_ID, task=task, max_episode_steps=max_episode_steps)
  did = name or metaworld_id(task, quality)
  eps, success = collect(env, mw_env.scripted_policy(task), num_episodes, seed=seed, quality=q,
                         name=f"collect {did}")
  ds = minari_io.write_dataset(
      did, eps, env, algorithm_name=f"metaworld-scripted-{quality}",
      description=f"MetaWorld {env.unwrapped.task} ({max_episode_steps}-step episodes): "
                  f"{q.description} (collection seed {seed}); behaviour success rate "
                  f"{success.mean():.2f}", overwrite=overwrite)
  return ds, success


# ---------------------------------------------------------------------------------- ARS
def _linear_act(m, mean, std, obs, low, high):
  return np.clip(m @ ((obs - mean) / std), low, high)


def _episode_return(env, m, mean, std, *, seed, max_steps, stats=None):
  obs, _ = env.reset(seed=seed)
  total = 0.0
  low, high = env.action_space.low, env.action_space.high
  for _ in range(max_steps):
    if stats is not None:
      stats.append(obs)
    obs, r, term, trunc, _ = env.step(_linear_act(m, mean, std, obs, low, high))
    total += r
    if term or trunc:
      break
  return total


def train_ars(env: gym.Env, *, iterations: int = 40, directions: int = 8, top: int = 4,
              step_size: float = 0.02, explore: float = 0.03, max_steps: int = 1000,
              seed: int = 0):
  """Augmented Random Search (Mania et al. 2018, V2-t): a linear policy on whitened
  observations. Returns ``(policy(obs) -> action, [mean return per iteration])``."""
  rng = np.random.default_rng(seed)
  o_dim, a_dim = env.observation_space.shape[0], env.action_space.shape[0]
  m = np.zeros((a_dim, o_dim))
  mean, std = np.zeros(o_dim), np.ones(o_dim)
  seen, history = [], []
  progress = progress_lib.Progress("ARS", iterations, compiled_first=False, quiet_for=5.0)
  for it in range(iterations):
    deltas = rng.normal(size=(directions, a_dim, o_dim))
    ep_seed = seed * 7919 + it
    r = np.array([[_episode_return(env, m + sign * explore * d, mean, std, seed=ep_seed,
                                   max_steps=max_steps, stats=seen) for sign in (1, -1)]
                  for d in deltas])
    order = np.argsort(-r.max(1))[:top]
    sigma = r[order].std() + 1e-8
    m = m + step_size / (top * sigma) * np.einsum("k,kij->ij", r[order, 0] - r[order, 1],
                                                  deltas[order])
    states = np.asarray(seen)
    mean, std = states.mean(0), np.maximum(states.std(0), 1e-2)
    history.append(float(r.mean()))
    progress.update(it + 1, f"return {history[-1]:.1f}")
  frozen = (m.copy(), mean.copy(), std.copy())
  low, high = env.action_space.low, env.action_space.high
  return (lambda obs: _linear_act(*frozen, obs, low, high)), history


def make_mujoco_dataset(env_name: str, quality: str, *, num_episodes: int = 20, seed: int = 0,
                        max_episode_steps: int = 1000, ars_iterations: int = 40,
                        noise: float = 0.1, overwrite: bool = False, name: str | None = None):
  """Collects ``random`` or ``ars`` episodes of a gymnasium MuJoCo env and writes them with
  D4RL's reference returns."""
  if env_name not in MUJOCO_ENVS:
    raise ValueError(f"unknown MuJoCo env {env_name!r}; known: {tuple(MUJOCO_ENVS)}")
  if quality not in MUJOCO_QUALITIES:
    raise ValueError(f"unknown MuJoCo dataset quality {quality!r}; known: {MUJOCO_QUALITIES}")
  env = gym.make(MUJOCO_ENVS[env_name], max_episode_steps=max_episode_steps)
  if quality == "random":
    policy, q, info = (lambda obs: np.zeros(env.action_space.shape)), Quality(
        0.0, 1.0, "uniform random actions"), ""
  else:
    policy, hist = train_ars(env, iterations=ars_iterations, max_steps=max_episode_steps,
                             seed=seed)
    q = Quality(noise, 0.0, f"linear ARS controller ({ars_iterations} iterations) + "
                            f"N(0, {noise}^2) action noise")
    info = f"; ARS return {hist[0]:.1f} -> {hist[-1]:.1f}"
  did = name or mujoco_id(env_name, quality)
  eps, _ = collect(env, policy, num_episodes, seed=seed, quality=q, name=f"collect {did}")
  lo, hi = D4RL_REF_SCORES[env_name]
  return minari_io.write_dataset(
      did, eps, env,
      algorithm_name=f"{env_name}-{quality}",
      description=f"{MUJOCO_ENVS[env_name]}: {q.description} (collection seed {seed}{info}); "
                  "reference returns are D4RL's", overwrite=overwrite,
      ref_min_score=lo, ref_max_score=hi)


# ------------------------------------------------------------------------------ on demand
def generator_for(dataset_id: str):
  """``(make(num_episodes, seed), command)`` for an id this module can generate, else None."""
  g = dataset_ids.parse(dataset_id)
  if g is None or g.family == "nav1d":
    return None
  command = dataset_ids.make_command(dataset_id)
  if g.family == "metaworld":
    return (lambda n, s: make_metaworld_dataset(g.name, g.quality, num_episodes=n, seed=s,
                                                name=dataset_id), command)
  return (lambda n, s: make_mujoco_dataset(g.name, g.quality, num_episodes=n, seed=s,
                                           name=dataset_id), command)


def check_dataset_id(dataset_id: str) -> None:
  """For an id of this module's form: the task / env and quality are known (else an error
  naming them, raised before any work)."""
  g = dataset_ids.parse(dataset_id)
  if g is not None and g.family == "metaworld":
    mw_env.check_task(g.name)
    if g.quality not in METAWORLD_QUALITIES:
      raise ValueError(f"dataset {dataset_id!r}: unknown MetaWorld quality {g.quality!r}; "
                       f"known: {tuple(METAWORLD_QUALITIES)}")
  if g is not None and g.family == "mujoco" and g.quality not in MUJOCO_QUALITIES:
    raise ValueError(f"dataset {dataset_id!r}: unknown generated MuJoCo quality "
                     f"{g.quality!r}; known: {MUJOCO_QUALITIES} (published datasets are "
                     f"mujoco/{g.name}/<quality>-v0)")


def ensure_dataset(dataset_id: str, *, num_episodes: int, seed: int) -> str:
  """Generates a missing dataset this module knows how to make; other ids are left to
  :func:`~dmc_jax.data.minari_io.open_dataset` (which says how to get them). A local one of
  another size is an error (:func:`~dmc_jax.data.minari_io.check_episode_count`)."""
  gen = generator_for(dataset_id)
  if gen is None:
    return dataset_id
  if not minari_io.exists(dataset_id):
    print(f"generating {dataset_id} ({num_episodes} episodes, seed {seed}); the same as "
          f"`{gen[1]}`", flush=True)
    gen[0](num_episodes, seed)
  else:
    minari_io.check_episode_count(dataset_id, num_episodes, gen[1])
  return dataset_id
