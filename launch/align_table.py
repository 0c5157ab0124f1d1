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

from launch import grid_flags, gridlib

TABLE = flags.DEFINE_list("table", list(gridlib.TABLES), "which of the paper's tables: 2, 3")
DATASETS = flags.DEFINE_list("datasets", ["partial", "full", "expert"], "Nav1D datasets")


def main(argv):
  del argv
  f = grid_flags
  grid_flags.main(lambda: gridlib.table_cells(f.WORKDIR.value, TABLE.value, DATASETS.value,
                                              f.SEED.value, f.OVERRIDES.value,
                                              f.ALIGN_SEED.value))


if __name__ == "__main__":
  app.run(main)
