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
import ast
import importlib
import json
import os
import time

from absl import app, flags

from dmc_jax.eval import report
from dmc_jax.train import compile_cache, loop, phases
from launch import common

SUITES = {"nav1d": ["partial", "full"],
          "metaworld": [f"{t}:medium" for t in ("button-press", "drawer-open", "sweep-into",
                                                "plate-slide")],
          "mujoco": ["hopper:ars"]}

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
CACHE = flags.DEFINE_string("compilation_cache", None, "JAX persistent compilation cache "
                            "directory ('off' disables; see dmc_jax.train.compile_cache)")


def _set(config, item: str) -> None:
  key, _, text = item.partition("=")
  try:
    value = ast.literal_eval(text) if text else ()
  except (ValueError, SyntaxError):
    value = text
  *groups, name = key.split(".")
  node = config
  for g in groups:
    node = node[g]
  if name not in node:
    raise app.UsageError(f"--override={item}: config has no key {key!r}")
  node[name] = value


def cells():
  """``(workdir, config)`` of every cell of the flags' grid."""
  module = importlib.import_module(f"configs.{SUITE.value}")
  seeds = [int(s) for s in SEED.value]
  for dataset in DATASETS.value or SUITES[SUITE.value]:
    for model in MODELS.value:
      for sampler in SAMPLER.value:
        for selection in SELECTIONS.value or [None]:
          for seed in seeds:
            c = module.get_config(f"{model},{dataset.replace(':', ',')}")
            c.diffusion.sampler, c.seed = sampler, seed
            name = f"{model}_{dataset.replace(':', '_')}_{sampler}"
            if selection is not None:
              c.eval.selection = selection
              name += f"_{selection}"
            if seeds != [0]:  # seed 0 alone keeps the old names (finished cells are reused)
              name += f"_seed{seed}"
            for item in OVERRIDES.value:
              _set(c, item)
            yield os.path.join(WORKDIR.value, name), c


def _cell_dirs(roots):
  """Each root that is a cell workdir itself, or else the workdirs inside it."""
  out = []
  for root in roots:
    if os.path.isdir(os.path.join(root, "checkpoints")):
      out.append(root)
    elif os.path.isdir(root):
      out += sorted(os.path.join(root, d) for d in os.listdir(root)
                    if os.path.isdir(os.path.join(root, d, "checkpoints")))
    else:
      raise app.UsageError(f"--pretrained_from={root}: no such directory")
  return out


def main(argv):
  del argv
  common.quiet_logs()
  compile_cache.enable(CACHE.value)
  done = []
  grid = list(cells())
  sources = [wd for wd, _ in grid] + _cell_dirs(PRETRAINED_FROM.value)
  for wd, config in grid:
    if not os.path.exists(os.path.join(wd, "results.json")):
      t0 = time.time()
      if SHARE.value:
        copied = phases.reuse_pretraining(config, wd, sources)
        if copied:
          phases.write_atomic(os.path.join(wd, "pretraining_reused.json"),
                              json.dumps(copied, indent=1))
          print(f"{os.path.basename(wd)}: reusing " + ", ".join(
              f"{k} {v}" for k, v in copied.items()), flush=True)
      loop.train_and_evaluate(config, wd)
      print(f"{os.path.basename(wd)}: {time.time() - t0:.0f} s", flush=True)
    done.append(wd)
  results = []
  for wd in done:
    with open(os.path.join(wd, "results.json")) as f:
      results.append(json.load(f))
  os.makedirs(WORKDIR.value, exist_ok=True)
  table = report.results_table(results)
  with open(os.path.join(WORKDIR.value, "table.md"), "w") as f:
    f.write(table)
  print(table)
  aligned = [report.as_run(r, wd) for r, wd in zip(results, done) if "align" in r]
  if aligned:
    print(report.write_report(aligned, WORKDIR.value, f"{SUITE.value} alignment results"))


if __name__ == "__main__":
  app.run(main)
