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

Each cell (model × dataset × sampler × selection × training seed) is ``launch.train`` on
``configs/SUITE.py:MODEL,DATASET`` (a ``:`` in a dataset entry
becomes a ``,``) in its own workdir under ``--workdir``; finished cells are reused, so the
command can be re-run after an interruption. Then writes, with :mod:`dmc_jax.eval.report`,
``WORKDIR/table.md`` (every cell's pretrained result) and, over the aligned cells,
``WORKDIR/report.md`` (before -> after per model, sampler, dataset and selection, like the
seed paper's Tables 2-3) and ``WORKDIR/align_curves.png``.
"""
from absl import app, flags

from dmc_jax.train import compile_cache
from launch import common, gridlib

SUITES = gridlib.SUITES

WORKDIR = flags.DEFINE_string("workdir", None, "root of the per-cell workdirs", required=True)
SUITE = flags.DEFINE_enum("suite", "nav1d", list(SUITES), "config file configs/SUITE.py")
MODELS = flags.DEFINE_list("models", ["diffuser", "dd", "dp"], "models to run")
DATASETS = flags.DEFINE_list("datasets", None, "dataset entries (default: the suite's)")
SELECTIONS = flags.DEFINE_list("selections", None, "eval.selection of the cells (default: "
                               "the config's; each one is its own cell)")
SAMPLER = flags.DEFINE_list("sampler", ["ddim"], "diffusion samplers (each one is its own "
                            "cell): ddpm, ddim, sde, flow")
SEED = flags.DEFINE_list("seed", ["0"], "training seeds (config.seed; each one is its own "
                         "cell; the report adds mean ± std across seeds)")
OVERRIDES = flags.DEFINE_multi_string("override", [], "KEY=VALUE set in every cell's config "
                                      "(a Python literal; empty: an empty tuple)")
SHARE = flags.DEFINE_bool("share_pretraining", True, "start a cell from an earlier cell's "
                          "finished critic / DMC checkpoints when they were trained the same way")
PRETRAINED_FROM = flags.DEFINE_list("pretrained_from", [], "other grid roots (or cell "
                                    "workdirs) whose finished checkpoints cells may reuse")
DRY_RUN = flags.DEFINE_bool("dry_run", False, "print the cells and which of them train the "
                            "critic and the DMC (the others reuse them), and stop")
CACHE = flags.DEFINE_string("compilation_cache", None, "JAX persistent compilation cache "
                            "directory ('off' disables; see dmc_jax.train.compile_cache)")


def cells():
  """``(workdir, config)`` of every cell of the flags' grid."""
  try:
    return gridlib.make_cells(WORKDIR.value, SUITE.value, DATASETS.value,
                              [(m, SAMPLER.value) for m in MODELS.value], SELECTIONS.value,
                              SEED.value, OVERRIDES.value)
  except gridlib.GridError as e:
    raise app.UsageError(str(e)) from e


def main(argv):
  del argv
  common.quiet_logs()
  grid = cells()
  if DRY_RUN.value:
    print(gridlib.plan_text(grid))
    return
  compile_cache.enable(CACHE.value)
  try:
    print(gridlib.run(grid, WORKDIR.value, f"{SUITE.value} alignment results",
                      share=SHARE.value, pretrained_from=PRETRAINED_FROM.value))
  except gridlib.GridError as e:
    raise app.UsageError(str(e)) from e


if __name__ == "__main__":
  app.run(main)
