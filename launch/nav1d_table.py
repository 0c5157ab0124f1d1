"""Trains and evaluates every model on every Nav1D dataset; writes a Markdown table.

  python -m launch.nav1d_table --workdir=/tmp/nav1d_table [--models=dp,dd] [--datasets=full]

Each cell is one ``launch.train`` job (its own workdir under ``--workdir``); finished cells are
reused, so the command can be re-run after an interruption. The table goes to
``WORKDIR/table.md``.
"""
import json
import os
import time

from absl import app, flags

from configs import nav1d as nav1d_config
from dmc_jax.train import compile_cache, loop

WORKDIR = flags.DEFINE_string("workdir", None, "root of the per-cell workdirs", required=True)
MODELS = flags.DEFINE_list("models", ["diffuser", "dd", "dp"], "models to run")
DATASETS = flags.DEFINE_list("datasets", ["partial", "full", "expert"], "Nav1D datasets")
SELECTIONS = flags.DEFINE_list("selections", ["argmax"], "action selections to evaluate")
SEED = flags.DEFINE_integer("seed", 0, "seed of every cell")


CACHE = flags.DEFINE_string("compilation_cache", None, "JAX persistent compilation cache "
                             "directory ('off' disables; see dmc_jax.train.compile_cache)")


def main(argv):
  del argv
  compile_cache.enable(CACHE.value)
  rows = []
  for dataset in DATASETS.value:
    for model in MODELS.value:
      for selection in SELECTIONS.value:
        wd = os.path.join(WORKDIR.value, f"{model}_{dataset}_{selection}")
        path = os.path.join(wd, "results.json")
        if not os.path.exists(path):
          c = nav1d_config.get_config(f"{model},{dataset}")
          c.eval.selection, c.seed = selection, SEED.value
          t0 = time.time()
          loop.train_and_evaluate(c, wd)
          print(f"{model} {dataset} {selection}: {time.time() - t0:.0f} s", flush=True)
        rows.append(json.load(open(path)))
  lines = ["| dataset | model | sampler | selection | return (mean ± std) | 95% CI | "
           "dataset return | random | plan coherency | behaviour density | time (s) |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    coh = f"{r['plan_coherency']:.3f}" if "plan_coherency" in r else "-"
    lines.append(f"| {r['dataset'].split('/')[-1]} | {r['model']} | {r['sampler']} | "
                 f"{r['selection']} | {r['return_mean']:.2f} ± {r['return_std']:.2f} | "
                 f"± {r['return_ci95']:.2f} | {r['dataset_return']:.2f} | "
                 f"{r['random_return']:.2f} | {coh} | {r['behaviour_density']:.3f} | "
                 f"{r['wall_clock_s']:.0f} |")
  os.makedirs(WORKDIR.value, exist_ok=True)
  with open(os.path.join(WORKDIR.value, "table.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  app.run(main)
