"""Pretrains, aligns and evaluates a grid of models × datasets; writes the before -> after report.

  python -m launch.align_table --workdir=/tmp/align_table [--models=dp] [--datasets=full]
  python -m launch.align_table --suite=metaworld --workdir=/tmp/mw \\
      [--datasets=button-press:medium,drawer-open:medium,sweep-into:medium,plate-slide:medium]
  python -m launch.align_table --suite=mujoco --workdir=/tmp/mj --datasets=hopper:ars

Each cell is one main job (``launch.train``: pretrain -> align -> evaluate) of
``configs/SUITE.py:MODEL,DATASET`` (a ``:`` in a dataset entry becomes a ``,``) in its own
workdir under ``--workdir``; finished cells are reused (re-run after an interruption). Then
writes the report of :mod:`dmc_jax.eval.report` over the cells: ``WORKDIR/report.md`` (before ->
after per model, sampler, dataset and selection, like the seed paper's Tables 2-3, with the
average change of the mean and of the spread) and ``WORKDIR/align_curves.png``.
"""
import importlib
import os
import time

from absl import app, flags

from dmc_jax.train import compile_cache, loop
from dmc_jax.eval import report

SUITES = {"nav1d": ["partial", "full"],
          "metaworld": [f"{t}:medium" for t in ("button-press", "drawer-open", "sweep-into",
                                                "plate-slide")],
          "mujoco": ["hopper:ars"]}

WORKDIR = flags.DEFINE_string("workdir", None, "root of the per-cell workdirs", required=True)
SUITE = flags.DEFINE_enum("suite", "nav1d", list(SUITES), "config file configs/SUITE.py")
MODELS = flags.DEFINE_list("models", ["diffuser", "dd", "dp"], "models to run")
DATASETS = flags.DEFINE_list("datasets", None, "dataset entries (default: the suite's)")
SAMPLER = flags.DEFINE_string("sampler", "ddim", "diffusion sampler of every cell")
SEED = flags.DEFINE_integer("seed", 0, "seed of every cell")


CACHE = flags.DEFINE_string("compilation_cache", None, "JAX persistent compilation cache "
                             "directory ('off' disables; see dmc_jax.train.compile_cache)")


def main(argv):
  del argv
  compile_cache.enable(CACHE.value)
  module = importlib.import_module(f"configs.{SUITE.value}")
  dirs = []
  for dataset in DATASETS.value or SUITES[SUITE.value]:
    for model in MODELS.value:
      wd = os.path.join(WORKDIR.value, f"{model}_{dataset.replace(':', '_')}_{SAMPLER.value}")
      if not os.path.exists(os.path.join(wd, "results.json")):
        c = module.get_config(f"{model},{dataset.replace(':', ',')}")
        c.diffusion.sampler, c.seed = SAMPLER.value, SEED.value
        t0 = time.time()
        loop.train_and_evaluate(c, wd)
        print(f"{model} {dataset}: {time.time() - t0:.0f} s", flush=True)
      dirs.append(wd)
  print(report.write_report([report.load_run(d) for d in dirs], WORKDIR.value,
                            f"{SUITE.value} alignment results"))


if __name__ == "__main__":
  app.run(main)
