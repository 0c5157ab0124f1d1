"""Exports a finished job as a self-contained artifact, and evaluates artifacts.

  python -m launch.export --workdir=/tmp/run --out=/tmp/run_artifact
  python -m launch.export --evaluate=/tmp/run_artifact [--num_episodes=64]
"""
import json

from absl import app, flags

from dmc_jax.train import export

WORKDIR = flags.DEFINE_string("workdir", None, "finished job to export")
OUT = flags.DEFINE_string("out", None, "artifact directory to write")
EVALUATE = flags.DEFINE_string("evaluate", None, "artifact directory to evaluate")
EPISODES = flags.DEFINE_integer("num_episodes", None, "episodes (default: the config's)")


def main(argv):
  del argv
  if WORKDIR.value:
    if not OUT.value:
      raise app.UsageError("--workdir needs --out")
    print(f"wrote {export.export(WORKDIR.value, OUT.value)}")
  if EVALUATE.value:
    print(json.dumps(export.evaluate(EVALUATE.value, EPISODES.value), indent=1))
  if not (WORKDIR.value or EVALUATE.value):
    raise app.UsageError("pass --workdir and --out, or --evaluate")


if __name__ == "__main__":
  app.run(main)
