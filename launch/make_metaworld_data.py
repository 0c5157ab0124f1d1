"""Writes MetaWorld Minari datasets with MetaWorld's scripted policies.

  python -m launch.make_metaworld_data [--tasks=button-press,drawer-open,sweep-into,plate-slide]
      [--qualities=expert,medium,random] [--num_episodes=200] [--overwrite]

Ids: ``dmc_jax/metaworld/TASK/QUALITY-v0`` under ``MINARI_DATASETS_PATH``. Prints each
dataset's size, mean return and behaviour success rate. Needs ``pip install -e .[metaworld]``.
"""
import time

from absl import app, flags

from configs import metaworld
from dmc_jax.data import gym_data, minari_io
from dmc_jax.envs import metaworld as mw_env

TASKS = flags.DEFINE_list("tasks", list(mw_env.TASKS), "MetaWorld v3 tasks")
QUALITIES = flags.DEFINE_list("qualities", list(gym_data.METAWORLD_QUALITIES), "qualities")
EPISODES = flags.DEFINE_integer("num_episodes", metaworld.NUM_EPISODES,
                                "episodes per dataset (the size configs/metaworld.py expects)")
STEPS = flags.DEFINE_integer("max_episode_steps", 150, "episode length (at most 500)")
SEED = flags.DEFINE_integer("seed", 0, "collection seed (episode i resets with seed*100003+i)")
OVERWRITE = flags.DEFINE_bool("overwrite", False, "replace existing datasets")


def main(argv):
  del argv
  for task in TASKS.value:
    for quality in QUALITIES.value:
      t0 = time.time()
      ds, success = gym_data.make_metaworld_dataset(
          task, quality, num_episodes=EPISODES.value, seed=SEED.value,
          max_episode_steps=STEPS.value, overwrite=OVERWRITE.value)
      returns = [float(e.rewards.sum()) for e in ds.iterate_episodes()]
      print(f"{gym_data.metaworld_id(task, quality)}: {ds.total_episodes} episodes, "
            f"{ds.total_steps} steps, return {sum(returns) / len(returns):.1f}, success "
            f"{success.mean():.2f} ({time.time() - t0:.0f} s; under "
            f"{minari_io.datasets_root()})", flush=True)


if __name__ == "__main__":
  app.run(main)
