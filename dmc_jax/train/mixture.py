"""The diffusion-core demo job on a 2-D Gaussian mixture (SHELL).

Unpacks the ConfigDict into explicit arguments for the PURE core; nothing below this file
sees a ConfigDict.
"""
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dmc_jax import networks
from dmc_jax import progress as progress_lib
from dmc_jax.diffusion import (ddim, ddpm, flow_matching, losses, schedules, sde)
from dmc_jax.train import logging as logging_lib
from dmc_jax.train import step as step_lib

SCHEDULES = {"linear": schedules.make_linear_schedule, "cosine": schedules.make_cosine_schedule,
             "vp": schedules.make_vp_schedule}
SAMPLERS = ("ddpm", "ddim", "sde", "ode", "flow")
TASKS = ("mixture2d",)  # tasks this module runs


def validate_config(config) -> None:
  """Raises ValueError naming the key, the value and what is allowed."""
  def bad(key, value, allowed):
    raise ValueError(f"config.{key}={value!r} is invalid: {allowed}")
  if config.task not in TASKS:
    bad("task", config.task, f"one of {TASKS}")
  if config.diffusion.schedule not in SCHEDULES:
    bad("diffusion.schedule", config.diffusion.schedule, f"one of {tuple(SCHEDULES)}")
  if config.diffusion.pred_type not in ("eps", "x0", "v"):
    bad("diffusion.pred_type", config.diffusion.pred_type, "one of ('eps', 'x0', 'v')")
  if config.diffusion.num_steps < 1:
    bad("diffusion.num_steps", config.diffusion.num_steps, "a positive integer")
  unknown = set(config.eval.samplers) - set(SAMPLERS)
  if unknown:
    bad("eval.samplers", tuple(config.eval.samplers), f"each one of {SAMPLERS}")
  if "ddim" in config.eval.samplers and config.diffusion.sample_steps > config.diffusion.num_steps:
    bad("diffusion.sample_steps", config.diffusion.sample_steps,
        f"at most diffusion.num_steps={config.diffusion.num_steps} for DDIM")
  for key in ("train.steps", "train.batch_size", "train.log_every", "eval.num_samples",
              "diffusion.sample_steps"):
    group, name = key.split(".")
    if config[group][name] < 1:
      bad(key, config[group][name], "a positive integer")
  if not config.train.lr > 0:
    bad("train.lr", config.train.lr, "a positive number")
  if not 0 <= config.train.ema_decay < 1:
    bad("train.ema_decay", config.train.ema_decay, "a number in [0, 1)")


def mixture_modes(num_modes: int, radius: float) -> jnp.ndarray:
  ang = 2 * np.pi * np.arange(num_modes) / num_modes
  return jnp.asarray(np.stack([radius * np.cos(ang), radius * np.sin(ang)], -1), jnp.float32)


def sample_mixture(key, modes, std, n):
  k_c, k_n = jax.random.split(key)
  return modes[jax.random.randint(k_c, (n,), 0, modes.shape[0])] + std * jax.random.normal(
      k_n, (n, 2))


def mixture_metrics(x, modes, std):
  """Share of samples within 4 std of a mode, and coverage of modes (each >= 25% of its fair share)."""
  d = jnp.linalg.norm(x[:, None] - modes[None], axis=-1)
  near = jnp.min(d, 1) < 4 * std
  counts = jnp.bincount(jnp.argmin(d, 1), length=modes.shape[0],
                        weights=near.astype(jnp.float32))
  fair = x.shape[0] / modes.shape[0]
  return {"near_mode_frac": jnp.mean(near), "mode_coverage": jnp.mean(counts >= 0.25 * fair)}


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains a diffusion model (eps/x0/v) and a flow model, then evaluates every sampler."""
  validate_config(config)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json(indent=1))
  writer = logging_lib.MetricWriter(workdir)
  key = jax.random.key(config.seed)
  k_init, k_train, k_eval = jax.random.split(key, 3)
  modes = mixture_modes(config.data.num_modes, config.data.radius)
  std = config.data.mode_std
  net = networks.MLPDenoiser(hidden_dim=config.model.hidden_dim,
                             num_blocks=config.model.num_blocks,
                             block_width=config.model.block_width, time_dim=config.model.time_dim)
  fn = networks.make_denoise_fn(net)
  sched = SCHEDULES[config.diffusion.schedule](config.diffusion.num_steps)
  diff_loss = functools.partial(losses.diffusion_loss, denoise_fn=fn, sched=sched,
                                pred_type=config.diffusion.pred_type)
  flow_loss = functools.partial(flow_matching.flow_matching_loss, denoise_fn=fn)
  models = {}
  need_flow = "flow" in config.eval.samplers
  need_diff = any(s != "flow" for s in config.eval.samplers)
  for name, loss_fn, needed in (("diffusion", diff_loss, need_diff), ("flow", flow_loss, need_flow)):
    if needed:
      models[name] = _train(name, loss_fn, net, config, modes, std,
                            jax.random.fold_in(k_init, len(models)),
                            jax.random.fold_in(k_train, len(models)), writer)
  results = {}
  x_T = jax.random.normal(jax.random.fold_in(k_eval, 0), (config.eval.num_samples, 2))
  kw = dict(pred_type=config.diffusion.pred_type)
  n = config.diffusion.sample_steps
  builders = {
      "ddpm": lambda: ddpm.make_ddpm_sampler(fn, sched, **kw),
      "ddim": lambda: ddim.make_ddim_sampler(fn, sched, n, **kw),
      "sde": lambda: sde.make_sde_sampler(fn, sched, max(n, 2), **kw),
      "ode": lambda: sde.make_ode_sampler(fn, sched, n, **kw),
      "flow": lambda: flow_matching.make_flow_sampler(fn, n),
  }
  for name in config.eval.samplers:
    params = models["flow" if name == "flow" else "diffusion"].ema_params
    out = jax.jit(builders[name]())(params, jax.random.fold_in(k_eval, 1), x_T)
    metrics = {k: float(v) for k, v in mixture_metrics(out.x_0, modes, std).items()}
    results[name] = metrics
    writer.write_scalars(config.train.steps, {f"eval/{name}/{k}": v for k, v in metrics.items()})
    print(f"eval {name:5s}: near_mode_frac={metrics['near_mode_frac']:.3f} "
          f"mode_coverage={metrics['mode_coverage']:.2f}", flush=True)
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=1)
  _write_table(workdir, results)
  return results


def _train(name, loss_fn, net, config, modes, std, k_init, k_train, writer):
  params = net.init(k_init, jnp.zeros((1, 2)), jnp.zeros((1,)))["params"]
  state = step_lib.create_train_state(params, optax.adam(config.train.lr))
  step_fn = step_lib.make_train_step(loss_fn, config.train.ema_decay)
  batch, chunk = config.train.batch_size, config.train.log_every

  @functools.partial(jax.jit, donate_argnums=0)
  def run_chunk(state, start):
    def body(s, i):
      k_data, k_loss = jax.random.split(jax.random.fold_in(k_train, i))
      return step_fn(s, k_loss, sample_mixture(k_data, modes, std, batch))
    return jax.lax.scan(body, state, start + jnp.arange(chunk))

  progress = progress_lib.Progress(f"train {name}", config.train.steps)
  done = 0
  while done < config.train.steps:
    state, metrics = run_chunk(state, done)
    done += chunk
    loss = float(metrics["loss"].mean())
    if not np.isfinite(loss):
      raise FloatingPointError(f"non-finite {name} loss at step {done}")
    writer.write_scalars(done, {f"train/{name}/loss": loss})
    progress.update(min(done, config.train.steps), f"loss {loss:.4f}")
  return state


def _write_table(workdir, results):
  lines = ["| sampler | near-mode fraction | mode coverage |", "|---|---|---|"]
  lines += [f"| {k} | {v['near_mode_frac']:.3f} | {v['mode_coverage']:.2f} |"
            for k, v in results.items()]
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
