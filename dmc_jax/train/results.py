"""The job's outputs (SHELL): model bundles, ``results.json`` and the files made from it.

Every file is written atomically (a temporary file, then a rename), in a fixed order, so a
run killed while writing leaves the previous complete file or none, and a resumed run
writes the same bytes.
"""
import json
import os

import jax
import numpy as np

from dmc_jax.eval import report
from dmc_jax.train import checkpoint
from dmc_jax.train import hooks as hooks_lib
from dmc_jax.train.phases import write_atomic


def model_bundle(dmc_params, critic_params, obs_norm, act_norm) -> dict:
  """What evaluation needs: EMA DMC params, critic (Q, V) params and the normalisers."""
  return {"dmc": dmc_params, "critic": {"q": critic_params[0], "v": critic_params[1]},
          "obs_norm": obs_norm._asdict(), "act_norm": act_norm._asdict()}


def save_models(workdir, step, *, base_params, critic_params, obs_norm, act_norm,
                aligned=None, hooks=hooks_lib.NONE) -> None:
  """``model/`` (the deployed model: the aligned one when there is one) and, after an
  alignment, ``model_reference/`` (the pretrained one)."""
  if aligned is not None:
    hooks.at("results:model_reference")
    checkpoint.save(os.path.join(workdir, "model_reference"), step,
                    model_bundle(base_params, critic_params, obs_norm, act_norm))
    base_params, critic_params = aligned["params"], aligned["critic_params"]
  hooks.at("results:model")
  checkpoint.save(os.path.join(workdir, "model"), step,
                  model_bundle(base_params, critic_params, obs_norm, act_norm))


def stats(returns) -> dict:
  """``mean``, ``std`` and the 95 % CI half-width of the mean of per-episode values."""
  r = np.asarray(returns, np.float64)
  n = len(r)
  return {"mean": float(r.mean()), "std": float(r.std()),
          "ci95": float(1.96 * r.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0}


def write_outputs(workdir, results, hooks=hooks_lib.NONE) -> None:
  """``results.json``, ``results.md``, ``learning_curve.png`` and, for an aligned run,
  ``align_results.md`` and ``align_curve.png``."""
  hooks.at("results:json")
  write_atomic(os.path.join(workdir, "results.json"), json.dumps(results, indent=1))
  hooks.at("results:table")
  write_atomic(os.path.join(workdir, "results.md"), report.results_table([results]))
  hooks.at("results:learning_curve")
  save_figure(report.curve_figure([report.learning_panel(results)], ncol=1,
                                  panel_size=(5, 3.5), fontsize=8),
              os.path.join(workdir, "learning_curve.png"), dpi=100)
  if "align" in results:  # this run's rows and curve of the report (dmc_jax.eval.report)
    run = report.as_run(results, workdir)
    hooks.at("results:align_table")
    write_atomic(os.path.join(workdir, "align_results.md"),
                 report.detail_table(report.rows_of([run])))
    hooks.at("results:align_curve")
    save_figure(report.plot_curves([run]), os.path.join(workdir, "align_curve.png"), dpi=90)
  hooks.at("results:done")


def save_figure(fig, path, dpi) -> None:
  """``fig`` to ``path`` atomically (process 0 only)."""
  if jax.process_index() != 0:
    return
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=dpi)
  os.replace(tmp, path)
