"""Pretrains, aligns and evaluates every model on Nav1D; writes the before -> after table.

  python -m launch.align_table --workdir=/tmp/align_table [--models=dp] [--datasets=full]

Each cell is one main job (``launch.train``: pretrain -> align -> evaluate) in its own
workdir under ``--workdir``; finished cells are reused (re-run after an interruption). Writes
``WORKDIR/align_table.md`` (before -> after per model, sampler, dataset and selection, like the
seed paper's Tables 2-3, with the average change of the mean and of the spread) and
``WORKDIR/align_curves.png`` (every cell's alignment curve, mean ± 1 std).
"""
import json
import os
import time

import numpy as np
from absl import app, flags

from configs import nav1d as nav1d_config
from dmc_jax.train import loop

WORKDIR = flags.DEFINE_string("workdir", None, "root of the per-cell workdirs", required=True)
MODELS = flags.DEFINE_list("models", ["diffuser", "dd", "dp"], "models to run")
DATASETS = flags.DEFINE_list("datasets", ["partial", "full"], "Nav1D datasets")
SAMPLER = flags.DEFINE_string("sampler", "ddim", "diffusion sampler of every cell")
SEED = flags.DEFINE_integer("seed", 0, "seed of every cell")


def table(rows) -> str:
  lines = ["| dataset | model | sampler | selection | before (mean ± std) | after (mean ± std) "
           "| after 95% CI | change | std before -> after | plan coherency before -> after "
           "| time (s) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
  changes, spreads = [], []
  for r in rows:
    for sel, row in r["align"].items():
      b, a = row["before"], row["after"]
      coh = "-"
      if "plan_coherency" in b:
        coh = f"{b['plan_coherency']:.2f} -> {a['plan_coherency']:.2f}"
      changes.append(a["return_mean"] - b["return_mean"])
      spreads.append(a["return_std"] - b["return_std"])
      lines.append(
          f"| {r['dataset'].split('/')[-1]} | {r['model']} | {r['sampler']} | {sel} | "
          f"{b['return_mean']:.2f} ± {b['return_std']:.2f} | "
          f"**{a['return_mean']:.2f}** ± {a['return_std']:.2f} | ± {a['return_ci95']:.2f} | "
          f"{a['return_mean'] - b['return_mean']:+.2f} | {b['return_std']:.2f} -> "
          f"{a['return_std']:.2f} | {coh} | {r['wall_clock_s']:.0f} |")
  lines.append("")
  lines.append(f"Average change of the mean return over {len(changes)} rows: "
               f"{np.mean(changes):+.2f}; of the spread (std): {np.mean(spreads):+.2f}.")
  return "\n".join(lines) + "\n"


def plot(rows, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(rows), figsize=(3.2 * len(rows), 3), squeeze=False)
  for ax, r in zip(axes[0], rows):
    c = r["align_curve"]
    x = np.array([p[0] for p in c], float)
    m = np.array([p[1] for p in c], float)
    s = np.array([p[2] for p in c], float)
    ax.plot(x, m, marker="o")
    ax.fill_between(x, m - s, m + s, alpha=0.25)
    ax.set_title(f"{r['model']} / {r['dataset'].split('/')[-1]}", fontsize=8)
    ax.set_xlabel("alignment update", fontsize=8)
  axes[0][0].set_ylabel("return (mean ± 1 std)", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def main(argv):
  del argv
  rows = []
  for dataset in DATASETS.value:
    for model in MODELS.value:
      wd = os.path.join(WORKDIR.value, f"{model}_{dataset}_{SAMPLER.value}")
      path = os.path.join(wd, "results.json")
      if not os.path.exists(path):
        c = nav1d_config.get_config(f"{model},{dataset}")
        c.diffusion.sampler, c.seed = SAMPLER.value, SEED.value
        t0 = time.time()
        loop.train_and_evaluate(c, wd)
        print(f"{model} {dataset}: {time.time() - t0:.0f} s", flush=True)
      rows.append(json.load(open(path)))
  os.makedirs(WORKDIR.value, exist_ok=True)
  text = table(rows)
  with open(os.path.join(WORKDIR.value, "align_table.md"), "w") as f:
    f.write(text)
  plot(rows, os.path.join(WORKDIR.value, "align_curves.png"))
  print(text)


if __name__ == "__main__":
  app.run(main)
