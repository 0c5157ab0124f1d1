"""Collects small gymnasium MuJoCo datasets and writes them with Minari.

  python -m launch.make_mujoco_data [--envs=hopper,walker2d,halfcheetah]
      [--qualities=random,ars] [--num_episodes=200] [--ars_iterations=40] [--overwrite]

Ids: ``dmc_jax/ENV/QUALITY-v0``. ``random`` takes uniform random actions; ``ars`` trains a
linear controller with Augmented Random Search for ``--ars_iterations`` and adds
N(0, ``--noise``^2) action noise. Both carry D4RL's reference returns, so runs on them report
D4RL normalised scores. The published ``mujoco/*/medium-v0`` datasets need no script: copy them
into ``MINARI_DATASETS_PATH`` and pass ``configs/mujoco.py:MODEL,ENV,medium``.
"""
import time

import minari
import numpy as np
from absl import app, flags

from configs import mujoco
from dmc_jax.data import gym_data, minari_io

ENVS = flags.DEFINE_list("envs", list(gym_data.MUJOCO_ENVS), "environments")
QUALITIES = flags.DEFINE_list("qualities", list(gym_data.MUJOCO_QUALITIES), "qualities")
EPISODES = flags.DEFINE_integer("num_episodes", mujoco.NUM_EPISODES,
                                "episodes per dataset (the size configs/mujoco.py expects)")
STEPS = flags.DEFINE_integer("max_episode_steps", 1000, "episode cap")
ITERS = flags.DEFINE_integer("ars_iterations", 40, "ARS iterations of the `ars` controller")
NOISE = flags.DEFINE_float("noise", 0.1, "action noise std of the `ars` datasets")
SEED = flags.DEFINE_integer("seed", 0, "collection seed")
OVERWRITE = flags.DEFINE_bool("overwrite", False, "replace existing datasets")


def main(argv):
  del argv
  for env in ENVS.value:
    for quality in QUALITIES.value:
      t0 = time.time()
      ds = gym_data.make_mujoco_dataset(
          env, quality, num_episodes=EPISODES.value, seed=SEED.value,
          max_episode_steps=STEPS.value, ars_iterations=ITERS.value, noise=NOISE.value,
          overwrite=OVERWRITE.value)
      returns = np.array([float(e.rewards.sum()) for e in ds.iterate_episodes()])
      score = 100 * minari.get_normalized_score(ds, returns).mean()
      print(f"{gym_data.mujoco_id(env, quality)}: {ds.total_episodes} episodes, "
            f"{ds.total_steps} steps, return {returns.mean():.1f} (D4RL score {score:.1f}; "
            f"{time.time() - t0:.0f} s; under {minari_io.datasets_root()})", flush=True)


if __name__ == "__main__":
  app.run(main)
