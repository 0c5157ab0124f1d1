"""The paper's alignment tables with one command: every model × sampler of Table 2 (planners)
and Table 3 (Diffusion Policy) on the Nav1D datasets, each cell evaluated before and after
alignment with ``first`` (the sampler alone), ``expectation`` and ``argmax`` (IDQL) on the
same 64 episode seeds, and the report in the paper's layout.

  python -m launch.align_table --workdir=/tmp/tables                 # Tables 2 and 3
  python -m launch.align_table --table=3 --workdir=/tmp/t3           # DP only (~6 cells)
  python -m launch.align_table --table=2 --datasets=partial --seed=0,1,2 --workdir=/tmp/t2
  python -m launch.align_table --workdir=/tmp/tables --dry_run       # the plan, no training
  python -m launch.align_table --workdir=/tmp/online \\
      --override=align.online.enabled=True                           # with online fine-tuning

Table 2 (``launch.gridlib.TABLES["2"]``): Diffuser × {DDPM, DDIM, SDE (score matching), flow
matching} and Decision Diffuser × {DDPM, DDIM}; Table 3: Diffusion Policy × {DDIM, flow}. Each cell is
``launch.train`` on ``configs/nav1d.py:MODEL,DATASET`` with the sampler set, in its own
workdir under ``--workdir`` (``MODEL_DATASET_SAMPLER[_seedN]``, the names ``launch.grid``
gives). Cells share pretraining: one critic per dataset, one DMC per model, dataset and
training family (DDPM, DDIM and SDE train the same network with the same loss; flow has its
own), so Table 2 trains 3 critics and 9 DMCs for its 18 cells (``--dry_run`` prints the
plan). Finished cells are reused, so the command can be re-run after an interruption. Writes
``WORKDIR/report.md`` (before -> after, mean ± std, 95 % CI, plan coherency, normalised
score, reverted stages, per selection; across training seeds when there are several),
``table.md``, ``summary.json`` and ``align_curves.png``.

Wall-clock on the 2-core CPU of BUILD_NOTES (alone): a DP cell 4–10 min, a planner cell
10–30 min once its pretraining is shared (alignment only); Table 3 ≈ 40 min, Table 2
several hours.
"""
from absl import app, flags

from dmc_jax.train import compile_cache
from launch import common, gridlib

WORKDIR = flags.DEFINE_string("workdir", None, "root of the per-cell workdirs", required=True)
TABLE = flags.DEFINE_list("table", list(gridlib.TABLES), "which of the paper's tables: 2, 3")
DATASETS = flags.DEFINE_list("datasets", ["partial", "full", "expert"], "Nav1D datasets")
SEED = flags.DEFINE_list("seed", ["0"], "training seeds (each one is its own cell; the report "
                         "adds mean ± std across seeds)")
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


def main(argv):
  del argv
  common.quiet_logs()
  try:
    cells, title = gridlib.table_cells(WORKDIR.value, TABLE.value, DATASETS.value,
                                       SEED.value, OVERRIDES.value)
    if DRY_RUN.value:
      print(gridlib.plan_text(cells))
      return
    compile_cache.enable(CACHE.value)
    print(gridlib.run(cells, WORKDIR.value, title, share=SHARE.value,
                      pretrained_from=PRETRAINED_FROM.value))
  except gridlib.GridError as e:
    raise app.UsageError(str(e)) from e


if __name__ == "__main__":
  app.run(main)
