"""Runs a grid of cells (models × datasets [× selections]), each one main job, and writes
the report.

  python -m launch.grid --workdir=/tmp/grid                      # Nav1D: 3 models × 2 datasets
  python -m launch.grid --suite=metaworld --models=dp --workdir=/tmp/mw \\
      [--datasets=button-press:medium,drawer-open:medium,sweep-into:medium,plate-slide:medium]
  python -m launch.grid --suite=mujoco --workdir=/tmp/mj --datasets=hopper:ars
  python -m launch.grid --datasets=partial,full,expert --selections=argmax,first \\
      --workdir=/tmp/nav1d_table --override=align.stages=                # pretraining only
  python -m launch.grid --models=diffuser --sampler=ddpm,ddim,sde,flow \\
      --datasets=partial,full,expert --workdir=/tmp/t2 \\
      --override="align.eval_selections=('first','expectation','argmax')"   # the paper's Table 2
  python -m launch.grid --suite=metaworld --models=dp --seed=0,1,2 --workdir=/tmp/mw3
  python -m launch.grid --models=dd --datasets=full --align_seed=0,1,2 --workdir=/tmp/a3
  python -m launch.grid ... --dry_run          # the cells, and which train or reuse what

(``launch.align_table`` runs the paper's Tables 2 and 3 with one command.)

Cells share pretraining (``--share_pretraining``, default on): a cell whose critic or DMC
would be trained exactly as an earlier cell's was (the same settings but sampling-only and
alignment keys; samplers of one training family, ``ddpm | ddim | sde | ode``, alike; the
critic alike across models) starts from a copy of that cell's finished checkpoint, so the
paper's Table 2 pretrains one Diffuser per dataset for DDPM, DDIM and SDE and one critic for
all of it (``dmc_jax.train.phases.reuse_pretraining``). Its numbers are the ones it would
have computed itself; its learning curve has only the final point, and
``CELL/pretraining_reused.json`` names the source. ``--pretrained_from=ROOT,...`` adds
other grids' cells as sources.

``--align_seed=0,1,2`` runs each cell once per alignment seed (``align.seed``): the cells of
one training seed share one pretraining and differ only in the alignment's own randomness.

Each cell (model × dataset × sampler × selection × training seed × alignment seed) is
``launch.train`` on
``configs/SUITE.py:MODEL,DATASET`` (a ``:`` in a dataset entry
becomes a ``,``) in its own workdir under ``--workdir``; finished cells are reused, so the
command can be re-run after an interruption. Then writes, with :mod:`dmc_jax.eval.report`,
``WORKDIR/table.md`` (every cell's pretrained result) and, over the aligned cells,
``WORKDIR/report.md`` (before -> after per model, sampler, dataset and selection, like the
seed paper's Tables 2-3) and ``WORKDIR/align_curves.png``.
"""
from absl import app, flags

from launch import grid_flags, gridlib

SUITES = gridlib.SUITES

SUITE = flags.DEFINE_enum("suite", "nav1d", list(SUITES), "config file configs/SUITE.py")
MODELS = flags.DEFINE_list("models", ["diffuser", "dd", "dp"], "models to run")
DATASETS = flags.DEFINE_list("datasets", None, "dataset entries (default: the suite's)")
SELECTIONS = flags.DEFINE_list("selections", None, "eval.selection of the cells (default: "
                               "the config's; each one is its own cell)")
SAMPLER = flags.DEFINE_list("sampler", ["ddim"], "diffusion samplers (each one is its own "
                            "cell): ddpm, ddim, sde, flow")


def cells():
  """``(cells, title)`` of the flags' grid: ``[(workdir, config)]`` for every cell."""
  f = grid_flags
  return (gridlib.make_cells(f.WORKDIR.value, SUITE.value, DATASETS.value,
                             [(m, SAMPLER.value) for m in MODELS.value], SELECTIONS.value,
                             f.SEED.value, f.OVERRIDES.value, f.ALIGN_SEED.value),
          f"{SUITE.value} alignment results")


def main(argv):
  del argv
  grid_flags.main(cells)


if __name__ == "__main__":
  app.run(main)
