r"""The main job.

  python -m launch.train --workdir=/tmp/dmc_jax_run [--config=configs/default.py[:smoke]] \
      [--config.train.steps=1000 ...]
"""
from absl import app  # noqa: F401

from launch import common

common.define_job_flags()


def main(argv):
  common.run_job(argv)


if __name__ == "__main__":
  common.run(main)
