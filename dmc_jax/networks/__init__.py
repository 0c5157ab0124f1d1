"""Flax denoisers, and helpers that turn a module into a ``denoise_fn``."""
import jax

from dmc_jax.networks.dit import DiT1D
from dmc_jax.networks.lora import (LoRAParams, init_lora, lora_scale, make_lora_denoise_fn,
                                   merge_lora)
from dmc_jax.networks.mlp import MLPDenoiser
from dmc_jax.networks.temporal_unet import TemporalUnet


def make_denoise_fn(module):
  """``denoise_fn(params, x_t, t, cond=None, cond_mask=None)`` for a denoiser module."""
  def denoise_fn(params, x_t, t, cond=None, cond_mask=None):
    return module.apply({"params": params}, x_t, t, cond, cond_mask)
  return denoise_fn


def param_count(params) -> int:
  return int(sum(x.size for x in jax.tree.leaves(params)))
