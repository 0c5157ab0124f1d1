"""Self-contained model artifacts (SHELL): merged parameters + config, no workdir needed.

``export(workdir, out_dir)`` reads a finished job's model bundle and ``config.json``, merges
LoRA adapters into the base weights (``W + scale * a @ b``) when the bundle holds them, and
writes ``out_dir/{artifact.json, config.json, params/}``. ``load(out_dir)`` restores it against
the structure the config implies (a foreign or damaged artifact is a clear error), and
``evaluate(out_dir)`` runs the same evaluation as the training job.
"""
import json
import os
from typing import NamedTuple

import jax
import ml_collections
import optax

from dmc_jax import jsonfile
from dmc_jax.critics import iql
from dmc_jax.data.episodes import Normalizer
from dmc_jax.networks.lora import merge_lora
from dmc_jax.eval import evaluators
from dmc_jax.train import builders, checkpoint
from dmc_jax.train import keys as keys_lib
from dmc_jax.train.results import model_bundle

FORMAT = "dmc_jax.artifact/1"


class Artifact(NamedTuple):
  config: ml_collections.ConfigDict
  dmc_params: dict
  critic_params: tuple  # (q_params, v_params)
  obs_norm: Normalizer
  act_norm: Normalizer


def _bundle_target(config, obs_dim: int, act_dim: int) -> dict:
  dmc = builders.make_dmc(config, obs_dim, act_dim, clip_x0=None)  # shapes only
  critic = builders.make_critic(config)
  st = iql.init_iql(jax.random.key(0), critic.q_module, critic.v_module, obs_dim, act_dim,
                    optax.sgd(0.0), optax.sgd(0.0))
  norm = lambda d: Normalizer(jax.numpy.zeros(d), jax.numpy.ones(d))
  return model_bundle(dmc.init(jax.random.key(0)), (st.q.params, st.v.params), norm(obs_dim),
                      norm(act_dim))


def export(workdir: str, out_dir: str, lora_scale: float = 1.0, bundle_name: str = "model") -> str:
  """Writes the artifact of the finished job in ``workdir``; returns ``out_dir``.
  ``bundle_name="model_reference"`` exports the pretrained (unaligned) model instead."""
  path = os.path.join(workdir, bundle_name)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{workdir} has no model bundle ({bundle_name}/): has the job "
                            "finished?")
  config = ml_collections.ConfigDict(_read_json(os.path.join(workdir, "config.json"),
                                                "the job's config"))
  ckpt = checkpoint.Checkpointer(path)
  try:
    bundle = ckpt.restore_untyped()
  finally:
    ckpt.close()
  dmc = bundle["dmc"]
  if isinstance(dmc, dict) and set(dmc) == {"base", "lora"}:
    dmc = merge_lora(dmc["base"], dmc["lora"], lora_scale)
  bundle = dict(bundle, dmc=dmc)
  obs_dim = len(bundle["obs_norm"]["shift"])
  act_dim = len(bundle["act_norm"]["shift"])
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    f.write(config.to_json(indent=1))
  checkpoint.save(os.path.join(out_dir, "params"), 0, bundle)
  info = {"format": FORMAT, "obs_dim": obs_dim, "act_dim": act_dim,
          "model": config.model.kind, "dataset": config.data.dataset,
          "source_workdir": os.path.abspath(workdir)}
  with open(os.path.join(out_dir, "artifact.json"), "w") as f:
    json.dump(info, f, indent=1)
  return out_dir


def _read_json(path: str, what: str) -> dict:
  return jsonfile.read_object(path, checkpoint.CheckpointReadError, missing=what)


def load(out_dir: str) -> Artifact:
  """Loads an artifact written by :func:`export`. A missing or damaged file is an error
  naming it (nothing is changed)."""
  info = _read_json(os.path.join(out_dir, "artifact.json"),
                    f"{out_dir} is not a dmc_jax artifact")
  if info.get("format") != FORMAT:
    raise ValueError(f"{out_dir}: artifact format {info.get('format')!r}, expected {FORMAT!r}")
  for key in ("obs_dim", "act_dim"):
    if not isinstance(info.get(key), int):
      raise checkpoint.CheckpointReadError(
          f"{os.path.join(out_dir, 'artifact.json')}: {key} is {info.get(key)!r}, expected "
          "an integer")
  config = ml_collections.ConfigDict(_read_json(os.path.join(out_dir, "config.json"),
                                                "the artifact's config"))
  target = _bundle_target(config, info["obs_dim"], info["act_dim"])
  bundle = checkpoint.restore(os.path.join(out_dir, "params"), target)
  return Artifact(config, bundle["dmc"], (bundle["critic"]["q"], bundle["critic"]["v"]),
                  Normalizer(**bundle["obs_norm"]), Normalizer(**bundle["act_norm"]))


def evaluate(out_dir: str, num_episodes: int | None = None, seed: int | None = None,
             q_fn_factory=None, key_index: int = 0) -> dict:
  """The training job's final evaluation, from the artifact alone (same keys for the same
  seed, so it reproduces ``results.json``). ``key_index`` ``keys.EVAL_ALIGN`` draws the
  episode seeds of the job's alignment before/after rows instead; ``q_fn_factory(config, obs_norm, act_norm)``
  replaces the learned critic in selection (one head; e.g. :func:`dmc_jax.eval.oracle.
  oracle_q_fn`)."""
  art = load(out_dir)
  config = art.config
  if config.task != "nav1d":
    raise NotImplementedError("artifact evaluation runs Nav1D; use launch.train for others")
  dmc = builders.make_dmc(config, art.obs_norm.shift.shape[0], art.act_norm.shift.shape[0])
  if config.align.stages:  # an aligned model acts with the sampler it was aligned for
    dmc = builders.deployed_dmc(config, dmc)
  critic = builders.make_critic(config)
  q_fn, v_fn = critic.q_fn, critic.v_fn
  if q_fn_factory is not None:
    q_fn = q_fn_factory(config, art.obs_norm, art.act_norm)
    config = config.copy_and_resolve_references()
    config.critic.q_agg = "min"
    config.critic.split_heads = False  # the replacement is the only head
  evaluate_fn = evaluators.make_evaluator(config, dmc, art.obs_norm, art.act_norm, q_fn, v_fn,
                                       {"dataset_id": config.data.dataset})
  job_keys = keys_lib.job_keys(config.seed if seed is None else seed)
  metrics, _ = evaluate_fn(art.dmc_params, art.critic_params,
                           keys_lib.eval_key(job_keys, key_index),
                           num_episodes or config.eval.num_episodes)
  return metrics
