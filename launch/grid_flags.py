"""The flags and the entry point shared by the grid launchers (``launch.grid``,
``launch.align_table``): ``--workdir``, ``--seed``, ``--align_seed``, ``--override``, ``--share_pretraining``,
``--pretrained_from``, ``--dry_run``, ``--compilation_cache``. Each launcher adds its own
flags and passes :func:`main` a function that builds its cells from them."""
from absl import app, flags

from dmc_jax.train import compile_cache
from launch import common, gridlib

WORKDIR = flags.DEFINE_string("workdir", None, "root of the per-cell workdirs", required=True)
SEED = flags.DEFINE_list("seed", ["0"], "training seeds (config.seed; each one is its own "
                         "cell; the report adds mean ± std across seeds)")
ALIGN_SEED = flags.DEFINE_list("align_seed", ["0"], "alignment seeds (config.align.seed; each "
                               "one is its own cell, re-aligning the same pretrained model; "
                               "the report adds mean ± std across them)")
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


def main(make_cells) -> None:
  """``make_cells() -> (cells, title)``; prints the plan (``--dry_run``) or runs the cells and
  prints the report. A grid that cannot be built is a usage error."""
  common.quiet_logs()
  try:
    cells, title = make_cells()
    if DRY_RUN.value:
      print(gridlib.plan_text(cells, gridlib.cell_dirs(PRETRAINED_FROM.value)))
      return
    compile_cache.enable(CACHE.value)
    print(gridlib.run(cells, WORKDIR.value, title, share=SHARE.value,
                      pretrained_from=PRETRAINED_FROM.value))
  except gridlib.GridError as e:
    raise app.UsageError(str(e)) from e
