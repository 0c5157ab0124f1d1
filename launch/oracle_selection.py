r"""Diagnostic (Nav1D): IDQL argmax with the task's *true* Q instead of the learned critic.

Exports the pretrained (``model_reference``) and the aligned (``model``) bundles of a
finished Nav1D job and evaluates both on the same episode seeds, selecting among the same
number of candidates once with the learned critic and once with the DP-optimal
``Q*(s, a) = r_t(s, a) + V*_{t+1}(s')`` (:func:`dmc_jax.envs.nav1d.solve_values`). It separates
the two things that limit the deployed controller: the *candidates* (does alignment put
better actions among them?) and the critic's *ranking* of them.

  python -m launch.oracle_selection --workdir=DIR [--num_episodes=64] [--json=out.json]
"""
import json
import os
import tempfile

import jax
from absl import app, flags

from dmc_jax.eval.oracle import oracle_q_fn
from dmc_jax.train import align, builders, compile_cache, export, offline

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A finished Nav1D job (with model/ and model_reference/).")
flags.DEFINE_integer("num_episodes", 64, "Episode seeds (the same for every row).")
flags.DEFINE_string("json", None, "Also write the rows to this JSON file.")
flags.DEFINE_string("compilation_cache", None, "Compilation cache directory, or 'off'.")


def evaluate(out_dir, q_override=None, num_episodes=64):
  art = export.load(out_dir)
  config = art.config
  dmc = builders.make_dmc(config, art.obs_norm.shift.shape[0], art.act_norm.shift.shape[0])
  if config.align.stages:
    dmc = align.deployed_dmc(config, dmc)
  _, _, q_fn, v_fn, *_ = builders.make_critic(config)
  if q_override is not None:
    q_fn = q_override(config, art.obs_norm, art.act_norm)
    config = config.copy_and_resolve_references()
    config.critic.q_agg = "min"
  ev = offline.make_evaluator(config, dmc, art.obs_norm, art.act_norm, q_fn, v_fn,
                              {"dataset_id": config.data.dataset})
  # The keys of the job's before/after rows (offline._align): the learned-critic
  # rows reproduce results.json.
  k_eval = jax.random.split(jax.random.key(config.seed), 4)[3]
  metrics, _ = ev(art.dmc_params, art.critic_params, jax.random.fold_in(k_eval, 2), num_episodes)
  return metrics


def main(argv):
  del argv
  compile_cache.enable(FLAGS.compilation_cache)
  rows = {}
  with tempfile.TemporaryDirectory() as tmp:
    for name in ("model_reference", "model"):
      out = export.export(FLAGS.workdir, os.path.join(tmp, name), bundle_name=name)
      for critic, override in (("learned", None), ("oracle", oracle_q_fn)):
        m = evaluate(out, override, FLAGS.num_episodes)
        rows[f"{name}/{critic}"] = m
        ci = 1.96 * m["return_std"] / (FLAGS.num_episodes - 1) ** 0.5
        print(f"{name:16s} argmax, {critic:7s} Q: {m['return_mean']:.2f} ± {m['return_std']:.2f}"
              f" (95% CI ± {ci:.2f})", flush=True)
  if FLAGS.json:
    with open(FLAGS.json, "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  flags.mark_flag_as_required("workdir")
  app.run(main)
