"""The flags and the entry point shared by the job launchers (``launch.train``,
``launch.align``): ``--config``, ``--workdir`` and ``--compilation_cache``."""
import os

from absl import app, flags
from ml_collections import config_flags

from dmc_jax.train import compile_cache, faults, loop

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "configs", "default.py")


def define_job_flags() -> None:
  config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "Experiment config file.",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "Where metrics, config and results are written.")
  flags.mark_flags_as_required(["workdir"])
  flags.DEFINE_string("compilation_cache", None,
                      f"JAX persistent compilation cache directory ('off' disables); default "
                      f"${compile_cache.ENV} or {compile_cache.DEFAULT}.")


def run_job(argv) -> dict:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  compile_cache.enable(flags.FLAGS.compilation_cache)
  return loop.train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir,
                                 faults.hooks_from_env())
