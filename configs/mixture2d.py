"""The diffusion-core demo (``--config=configs/mixture2d.py``).

Trains the MLP denoiser on a 2-D Gaussian mixture, then samples with every sampler and
scores the samples.

Variants through ``--config=configs/mixture2d.py:ARG``: ``smoke`` (seconds; used by tests).
"""
import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0  # every key derives from this with fold_in
  c.task = "mixture2d"  # the job to run; see dmc_jax.train.loop.TASKS

  c.data = ml_collections.ConfigDict()
  c.data.num_modes = 8  # modes on a circle of radius data.radius
  c.data.radius = 2.0  # radius of the circle of modes
  c.data.mode_std = 0.1  # std of each mode

  c.model = ml_collections.ConfigDict()
  c.model.hidden_dim = 128  # residual stream width of the MLP denoiser
  c.model.num_blocks = 3  # residual blocks
  c.model.block_width = 256  # inner width of each block
  c.model.time_dim = 32  # time embedding width

  c.diffusion = ml_collections.ConfigDict()
  c.diffusion.schedule = "cosine"  # linear | cosine | vp
  c.diffusion.num_steps = 50  # training diffusion steps T
  c.diffusion.pred_type = "eps"  # eps | x0 | v
  c.diffusion.sample_steps = 20  # steps for DDIM / SDE / ODE / flow sampling (<= T for DDIM)

  c.train = ml_collections.ConfigDict()
  c.train.steps = 4000  # optimiser steps
  c.train.batch_size = 256  # samples per step
  c.train.lr = 2e-3  # Adam learning rate
  c.train.ema_decay = 0.995  # EMA of weights used for evaluation
  c.train.log_every = 500  # steps per compiled chunk / progress line

  c.eval = ml_collections.ConfigDict()
  c.eval.num_samples = 2000  # samples per sampler
  c.eval.samplers = ("ddpm", "ddim", "sde", "ode", "flow")  # which samplers to evaluate

  if arg == "smoke":
    c.model.hidden_dim, c.model.block_width, c.model.num_blocks = 32, 64, 1
    c.train.steps, c.train.log_every = 60, 30
    c.diffusion.num_steps, c.diffusion.sample_steps = 10, 5
    c.eval.num_samples = 200
  elif arg:
    raise ValueError(f"unknown config variant {arg!r}; known: 'smoke'")
  return c
