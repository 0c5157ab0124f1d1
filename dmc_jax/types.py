"""Shared type aliases. PURE."""
from typing import Any, Callable

import jax

Array = jax.Array
PRNGKey = jax.Array
Params = Any  # a pytree of arrays
PyTree = Any

# denoise_fn(params, x_t [B, ...], t [B] in [0, 1], cond (pytree or None), cond_mask [B] or None)
#   -> model output with the shape of x_t (eps, x0, v or velocity, by the model's pred_type).
DenoiseFn = Callable[..., Array]
