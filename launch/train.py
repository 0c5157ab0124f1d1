r"""The main job.

  python -m launch.train --workdir=/tmp/dmc_jax_run [--config=configs/default.py[:smoke]] \
      [--config.train.steps=1000 ...]
"""
from absl import app

from launch import common

common.define_job_flags()


def main(argv):
  common.run_job(argv)


if __name__ == "__main__":
  app.run(main)
