"""Writes the Nav1D Minari datasets: ``python -m launch.make_nav1d_data [--kinds=expert]``."""
from absl import app, flags

from dmc_jax.data import minari_io, nav1d_data

FLAGS = flags.DEFINE_list("kinds", ["partial", "full", "expert"], "datasets to write")
EPISODES = flags.DEFINE_integer("num_episodes", 1000, "episodes per dataset")
SEED = flags.DEFINE_integer("seed", 0, "collection seed")
TASK_SEED = flags.DEFINE_integer("task_seed", 0, "Nav1D task seed (reward sequence)")
HORIZON = flags.DEFINE_integer("horizon", 32, "episode length")
STEP = flags.DEFINE_float("step_size", 0.1, "step size gamma")
OVERWRITE = flags.DEFINE_bool("overwrite", False, "replace existing datasets")


def main(argv):
  del argv
  for kind in FLAGS.value:
    ds = nav1d_data.make_dataset(kind, num_episodes=EPISODES.value, seed=SEED.value,
                                 task_seed=TASK_SEED.value, horizon=HORIZON.value,
                                 step_size=STEP.value, overwrite=OVERWRITE.value)
    returns = [float(e.rewards.sum()) for e in ds.iterate_episodes()]
    print(f"{nav1d_data.dataset_id(kind)}: {ds.total_episodes} episodes, {ds.total_steps} "
          f"steps, return {sum(returns) / len(returns):.2f} "
          f"(under {minari_io.datasets_root()})")


if __name__ == "__main__":
  app.run(main)
