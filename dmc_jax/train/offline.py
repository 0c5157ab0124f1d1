"""The offline job (SHELL): data -> IQL critic -> DMC pretraining -> evaluation -> alignment
-> results. A thin sequence of calls down into the phases; nothing imports it but
:mod:`dmc_jax.train.loop`.

Writes into ``workdir``: ``config.json``, ``metrics.jsonl`` (every loss and evaluation),
``checkpoints/{critic,dmc,align,cascade}`` (orbax, after every chunk), ``decisions.jsonl``,
``results.json``, ``results.md``, ``learning_curve.png``, ``model/`` (the bundle evaluation
needs; ``model_reference/`` too after an alignment), ``align_results.md`` and
``align_curve.png``.

Re-running the same command on the same workdir resumes from the latest checkpoints; a run
killed at any moment and resumed ends with the same parameters and metrics (see
``launch/fault_injection.py``).
"""
import json
import os
import time

import jax
import numpy as np

from dmc_jax.data import episodes as ep_lib
from dmc_jax.eval import evaluators
from dmc_jax.train import align as align_lib
from dmc_jax.train import builders
from dmc_jax.train import hooks as hooks_lib
from dmc_jax.train import keys as keys_lib
from dmc_jax.train import logging as logging_lib
from dmc_jax.train import phases, pretrain, validation
from dmc_jax.train import results as results_lib
from dmc_jax.train import workdir_lock


def train_and_evaluate(config, workdir: str, hooks: hooks_lib.Hooks = hooks_lib.NONE) -> dict:
  """The main job; returns the content of ``results.json``. ``hooks``: test hooks only.
  A second job on a workdir that a live job holds stops at once
  (:class:`~dmc_jax.train.workdir_lock.WorkdirBusyError`)."""
  validation.validate_config(config)
  _check_resumable(config, workdir)  # before the lock: a refused config writes nothing
  with workdir_lock.hold(workdir):
    _check_resumable(config, workdir)  # again under the lock (another job may have written)
    return _run(config, workdir, hooks)


def _check_resumable(config, workdir):
  """A workdir made with another config is an error naming the keys, before any work."""
  config_path = os.path.join(workdir, "config.json")
  if os.path.exists(config_path):
    with open(config_path) as f:
      phases.check_same_config(json.load(f), config, workdir)


def _run(config, workdir, hooks):
  config_path = os.path.join(workdir, "config.json")
  hooks.at("job:start")
  t_start = time.time()
  keys = keys_lib.job_keys(config.seed)
  config_json = config.to_json(indent=1)
  # The data is loaded and checked before anything is written: a bad dataset leaves the
  # workdir as it was.
  config, data = pretrain.prepare_data(config)
  phases.write_atomic(config_path, config_json)
  writer = logging_lib.MetricWriter(workdir)
  timing = {"data": time.time() - t_start}
  t0 = time.time()
  critic_fns = builders.make_critic(config)
  critic = pretrain.train_critic(config, critic_fns, data.trans_n, keys.critic, writer, workdir,
                                 hooks)
  timing["critic"] = time.time() - t0
  t0 = time.time()
  critic_params = (critic.q.params, critic.v.params)

  eps = data.episodes
  dmc = builders.make_dmc(config, eps.obs_dim, eps.act_dim)
  seg_data = ep_lib.make_segment_data(eps, dmc.horizon, data.obs_norm, data.act_norm)
  evaluate = evaluators.make_evaluator(config, dmc, data.obs_norm, data.act_norm,
                                       critic_fns.q_fn, critic_fns.v_fn, data.env_info)
  state, curve = pretrain.pretrain_dmc(config, dmc, data, seg_data, critic_params=critic_params,
                                       evaluate=evaluate, keys=keys, writer=writer,
                                       workdir=workdir, hooks=hooks)
  timing["dmc"] = time.time() - t0
  t0 = time.time()
  hooks.at("eval:start")
  final, per_episode = evaluate(state.ema_params, critic_params,
                                keys_lib.eval_key(keys, keys_lib.EVAL_FINAL),
                                config.eval.num_episodes)
  timing["eval"] = time.time() - t0
  t0 = time.time()
  returns = per_episode["return"]
  curve.append((config.train.steps, final["return_mean"], final["return_std"]))
  aligned = None
  if config.align.stages:
    aligned = align_lib.align_and_evaluate(
        config, workdir, dmc=dmc, base_params=state.ema_params, critic=critic,
        critic_fns=critic_fns, seg_data=seg_data, trans_n=data.trans_n,
        obs_norm=data.obs_norm, act_norm=data.act_norm, env_info=data.env_info, writer=writer,
        key=keys.align, k_eval=keys.eval, hooks=hooks)
    timing["align"] = time.time() - t0
  results_lib.save_models(workdir, config.train.steps, base_params=state.ema_params,
                          critic_params=critic_params, obs_norm=data.obs_norm,
                          act_norm=data.act_norm, aligned=aligned, hooks=hooks)
  # Written after the alignment rows, so that a run resumed mid-alignment writes its rows in
  # the same order as an uninterrupted one.
  hooks.at("eval:rows")
  writer.write_scalars(config.train.steps, {f"eval/{k}": v for k, v in final.items()})
  rand = evaluators.random_policy_returns(config, keys_lib.eval_key(keys, keys_lib.EVAL_RANDOM),
                                          config.eval.num_episodes)
  n_ep = len(returns)
  results = {
      "dataset": data.env_info["dataset_id"], "model": dmc.kind,
      "backbone": config.model.backbone, "sampler": config.diffusion.sampler,
      "selection": config.eval.selection, "num_episodes": n_ep, **final,
      "return_ci95": float(1.96 * np.std(returns, ddof=1) / np.sqrt(n_ep)) if n_ep > 1 else 0.0,
      "dataset_return": float(eps.returns().mean()),
      "random_return": None if rand is None else float(rand.mean()),
      "curve": curve, "wall_clock_s": time.time() - t_start,
      "timing_s": timing,  # this process's wall-clock per phase (compilation included)
  }
  if aligned is not None:
    results["align"] = aligned["results"]
    results["align_curve"] = aligned["curve"]
    if config.align.online.enabled:
      results["online_env_steps"] = aligned["online_env_steps"]
  results_lib.write_outputs(workdir, results, hooks)
  print(f"final: return {final['return_mean']:.2f} ± {final['return_std']:.2f} "
        f"(95% CI ± {results['return_ci95']:.2f}, {n_ep} episodes); dataset "
        f"{results['dataset_return']:.2f}; random {results['random_return']}"
        + ("" if aligned is None else " (the pretrained model under diffusion.* with "
           f"selection={config.eval.selection}; the aligned rows are the 'alignment' lines)"),
        flush=True)
  return results
