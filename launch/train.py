r"""The main job.

  python -m launch.train --workdir=/tmp/dmc_jax_run [--config=configs/default.py[:smoke]] \
      [--config.train.steps=1000 ...]
"""
import os

from absl import app, flags
from ml_collections import config_flags

from dmc_jax.train import compile_cache, loop

_DEFAULT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                        "default.py")
config_flags.DEFINE_config_file("config", _DEFAULT, "Experiment config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Where metrics, config and results are written.")
flags.mark_flags_as_required(["workdir"])
flags.DEFINE_string("compilation_cache", None,
                    f"JAX persistent compilation cache directory ('off' disables); default "
                    f"${compile_cache.ENV} or {compile_cache.DEFAULT}.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  compile_cache.enable(flags.FLAGS.compilation_cache)
  loop.train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
