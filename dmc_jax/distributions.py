"""Thin wrapper over distrax, so that the rest of the library never imports it directly.

distrax 0.1.9 rides on a dated ``tfp-nightly`` (stable TFP 0.25 does not import on jax 0.10).
If a future jax breaks it, only this file changes: every function here has a closed form.
PURE.
"""
import distrax
import jax.numpy as jnp

from dmc_jax.types import Array


def normal_log_prob(x: Array, mean: Array, std: Array) -> Array:
  """Element-wise log N(x; mean, std^2); shapes broadcast."""
  return distrax.Normal(loc=mean, scale=std).log_prob(x)


def normal_entropy(std: Array) -> Array:
  """Element-wise entropy of N(., std^2): 0.5 * log(2 pi e std^2)."""
  return distrax.Normal(loc=jnp.zeros_like(std), scale=std).entropy()


def categorical_sample(key, logits: Array) -> Array:
  """Samples indices from Categorical(logits) over the last axis."""
  return distrax.Categorical(logits=logits).sample(seed=key)
