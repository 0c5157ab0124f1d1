r"""Diagnostic (Nav1D): what the critic's settings do to the deployed controller's ranking.

For each variant (critic overrides on a Nav1D config) it trains the IQL critic alone on the
dataset, then rolls out ``argmax_i Q(s, a_i)`` over ``N`` uniform candidate actions
(:func:`dmc_jax.eval.critic_probe.greedy_returns`) on the same episode seeds and candidates,
once with the learned critic and once with the task's DP-optimal ``Q*``. No diffusion model
is trained, so a variant takes seconds to a minute; the gap to the ``Q*`` row is what the
critic's ranking costs (BUILD_NOTES.md, "The critic's ceiling").

  python -m launch.critic_study --config=configs/nav1d.py:dp,full \
      --variants="tau0.9:expectile=0.9;steps=3000" --variants="tau0.99:expectile=0.99" \
      [--num_candidates=8] [--num_episodes=64] [--json=out.json]
"""
import ast
import json
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from dmc_jax.critics import selection
from dmc_jax.eval import critic_probe, oracle
from dmc_jax.envs import nav1d
from dmc_jax.train import builders, compile_cache, pretrain, validation

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/nav1d.py:dp,full", "A Nav1D config.",
                                lock_config=False)
flags.DEFINE_multi_string("variants", ["default:"],
                          "NAME:KEY=VALUE;... (keys of config.critic, values as Python "
                          "literals; empty = the config's).")
flags.DEFINE_integer("num_candidates", 8, "Uniform candidate actions per decision.")
flags.DEFINE_integer("num_episodes", 64, "Episode seeds (the same for every variant).")
flags.DEFINE_integer("seed", 0, "Critic initialisation / batch seed.")
flags.DEFINE_string("json", None, "Also write the rows to this JSON file.")
flags.DEFINE_string("compilation_cache", None, "Compilation cache directory, or 'off'.")


def parse_variant(text: str):
  """``NAME:k=v;k=v`` -> ``(NAME, {k: v})`` with values parsed as Python literals."""
  name, _, body = text.partition(":")
  out = {}
  for item in filter(None, body.split(";")):
    key, eq, value = item.partition("=")
    if not eq:
      raise app.UsageError(f"--variants {text!r}: {item!r} is not KEY=VALUE")
    try:
      out[key.strip()] = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
      out[key.strip()] = value.strip()
  return name, out


def ci95(x) -> float:
  return float(1.96 * np.std(x, ddof=1) / np.sqrt(len(x)))


def study_variant(config, overrides: dict, *, seed: int, num_candidates: int,
                  num_episodes: int) -> dict:
  config = config.copy_and_resolve_references()
  for key, value in overrides.items():
    if key not in config.critic:
      raise app.UsageError(f"unknown critic key {key!r}; known: {sorted(config.critic.keys())}")
    config.critic[key] = value
  validation.validate_config(config)
  config, data = pretrain.prepare_data(config)
  critic = builders.make_critic(config)
  k_init, k_train = jax.random.split(jax.random.key(seed))
  state = critic.init(k_init, data.trans_n.obs.shape[-1], data.trans_n.actions.shape[-1])
  run = pretrain.make_critic_chunk(critic, k_train, config.critic.batch_size)
  start = time.time()
  state, _ = run(state, 0, int(config.critic.steps), data.trans_n)
  jax.block_until_ready(state)
  seconds = time.time() - start
  env = nav1d.make_params(config.env.task_seed, config.env.horizon, config.env.step_size)
  qstar = oracle.oracle_q_fn(config, data.obs_norm, data.act_norm)
  cc = config.critic
  combine = lambda q: selection.aggregate_heads(q, cc.q_agg, cc.lcb_coef)
  rows = {}
  for name, q_fn in (("learned", lambda o, a: critic.q_fn(state.q.params, o, a)),
                     ("oracle", lambda o, a: qstar(None, o, a))):
    ret = np.asarray(jax.jit(lambda k, q_fn=q_fn: critic_probe.greedy_returns(
        k, q_fn, env, obs_norm=data.obs_norm, act_norm=data.act_norm,
        num_candidates=num_candidates, num_episodes=num_episodes,
        combine=combine))(jax.random.key(10_000)))
    rows[name] = {"mean": float(ret.mean()), "std": float(ret.std(ddof=1)), "ci95": ci95(ret)}
  return {"critic": dict(config.critic), "train_seconds": round(seconds, 1), **rows}


def main(argv):
  del argv
  compile_cache.enable(FLAGS.compilation_cache)
  config = FLAGS.config
  if config.task != "nav1d":
    raise app.UsageError(f"critic_study needs a Nav1D config (task={config.task!r}): the "
                         "oracle Q* exists only there")
  out = {}
  for text in FLAGS.variants:
    name, overrides = parse_variant(text)
    row = study_variant(config, overrides, seed=FLAGS.seed,
                        num_candidates=FLAGS.num_candidates, num_episodes=FLAGS.num_episodes)
    out[name] = row
    le, orc = row["learned"], row["oracle"]
    print(f"{name:20s} learned {le['mean']:.2f} ± {le['std']:.2f} (95% CI ± {le['ci95']:.2f})"
          f"   Q* {orc['mean']:.2f}   ({row['train_seconds']} s critic)", flush=True)
  if FLAGS.json:
    with open(FLAGS.json, "w") as f:
      json.dump(out, f, indent=1, default=str)


if __name__ == "__main__":
  app.run(main)
