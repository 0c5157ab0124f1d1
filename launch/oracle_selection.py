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

from absl import app, flags

from dmc_jax.eval.oracle import oracle_q_fn
from dmc_jax.train import compile_cache, export, keys

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A finished Nav1D job (with model/ and model_reference/).")
flags.DEFINE_integer("num_episodes", 64, "Episode seeds (the same for every row).")
flags.DEFINE_string("json", None, "Also write the rows to this JSON file.")
flags.DEFINE_string("compilation_cache", None, "Compilation cache directory, or 'off'.")


def main(argv):
  del argv
  compile_cache.enable(FLAGS.compilation_cache)
  rows = {}
  with tempfile.TemporaryDirectory() as tmp:
    for name in ("model_reference", "model"):
      out = export.export(FLAGS.workdir, os.path.join(tmp, name), bundle_name=name)
      for critic, override in (("learned", None), ("oracle", oracle_q_fn)):
        # the job's before/after episode seeds (keys.EVAL_ALIGN), so the
        # learned-critic rows reproduce results.json.
        m = export.evaluate(out, FLAGS.num_episodes, q_fn_factory=override,
                            key_index=keys.EVAL_ALIGN)
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
