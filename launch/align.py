r"""The alignment job: pretrain (or resume the pretrained checkpoints) -> align -> evaluate.

  python -m launch.align --workdir=/tmp/aligned [--config=configs/nav1d.py:dd,partial] \
      [--config.align.stages="('rl','dpo','sft')" --config.align.passes=2 \
       --config.align.rl.method=qgrad --config.align.cascade.enabled=True ...]

The same job and flags as ``launch.train`` (whose default config aligns too), with the
requirement that ``config.align.stages`` is not empty. Pointing it at a finished
``launch.train`` workdir reuses its pretrained critic and DMC checkpoints (the ``align`` group
does not affect them).
"""
from absl import app, flags

from launch import common

common.define_job_flags()


def main(argv):
  if not flags.FLAGS.config.align.stages:
    raise app.UsageError("config.align.stages is empty: nothing to align (use launch.train "
                         "for pretraining only)")
  common.run_job(argv)


if __name__ == "__main__":
  common.run(main)
