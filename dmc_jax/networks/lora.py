"""LoRA adapters (Hu et al., 2022) as a separate pytree. PURE.

For a selected kernel ``W`` (any kernel of rank >= 2; a Dense ``[in, out]`` or a Conv
``[k, in, out]``, seen as ``[prod(shape[:-1]), out]``), the adapter is ``a [in', r]``,
``b [r, out]`` and the effective weight is ``W + (alpha / r) * a @ b``. ``b`` starts at 0, so a
fresh adapter leaves the network's output unchanged.

Keeping adapters in their own pytree means: the optimiser only ever sees the adapters
(train them by differentiating with respect to ``lora`` only), the reference model is the
base params as they are (``merge_lora(base, None)``), and export is one ``merge_lora`` call.
"""
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
from flax import traverse_util

from dmc_jax.types import Array, DenoiseFn, Params

FilterFn = Callable[[tuple, Array], bool]


def dense_kernels(path: tuple, leaf: Array) -> bool:
  """Default filter: every 2-D ``kernel`` (all ``nn.Dense`` layers)."""
  return path[-1] == "kernel" and leaf.ndim == 2


def all_kernels(path: tuple, leaf: Array) -> bool:
  """Dense and convolution kernels."""
  return path[-1] == "kernel" and leaf.ndim >= 2


class LoRAParams(NamedTuple):
  """Base weights and adapters; ``lora=None`` means adapters off (the reference model)."""
  base: Params
  lora: Optional[Params]


def init_lora(key, params: Params, rank: int, *, filter_fn: FilterFn = dense_kernels) -> Params:
  """Adapters for every kernel that ``filter_fn(path, leaf)`` selects.

  Returns a nested dict with the selected kernels' paths, each holding ``{"a", "b"}``;
  ``a ~ N(0, 1 / in')``, ``b = 0``.
  """
  if rank < 1:
    raise ValueError(f"LoRA rank must be >= 1, got {rank}")
  flat = traverse_util.flatten_dict(params)
  chosen = sorted(p for p, leaf in flat.items() if filter_fn(p, leaf))
  if not chosen:
    raise ValueError("the LoRA filter selected no kernel in these params")
  keys = jax.random.split(key, len(chosen))
  out = {}
  for k, path in zip(keys, chosen):
    w = flat[path]
    fan_in = int(w.size // w.shape[-1])
    out[path] = {"a": jax.random.normal(k, (fan_in, rank), w.dtype) / jnp.sqrt(fan_in),
                 "b": jnp.zeros((rank, w.shape[-1]), w.dtype)}
  return traverse_util.unflatten_dict(out)


def merge_lora(params: Params, lora: Optional[Params], scale: float = 1.0) -> Params:
  """``W + scale * a @ b`` for every adapted kernel; ``lora=None`` returns ``params``."""
  if lora is None:
    return params
  flat = dict(traverse_util.flatten_dict(params))
  for path, ab in _adapter_items(lora):
    if path not in flat:
      raise ValueError(f"LoRA adapter for {'/'.join(path)} has no matching kernel in params")
    w = flat[path]
    flat[path] = w + (scale * (ab["a"] @ ab["b"])).reshape(w.shape).astype(w.dtype)
  return traverse_util.unflatten_dict(flat)


def _adapter_items(lora):
  flat = traverse_util.flatten_dict(lora)
  paths = sorted({p[:-1] for p in flat})
  return [(p, {"a": flat[p + ("a",)], "b": flat[p + ("b",)]}) for p in paths]


def lora_scale(rank: int, alpha: Optional[float] = None) -> float:
  """``alpha / rank`` (``alpha`` defaults to ``rank``, i.e. scale 1)."""
  return float(rank if alpha is None else alpha) / float(rank)


def make_lora_denoise_fn(denoise_fn: DenoiseFn, scale: float = 1.0) -> DenoiseFn:
  """Wraps ``denoise_fn`` to take :class:`LoRAParams` (merging before each call)."""
  def fn(params: LoRAParams, x_t, t, cond, cond_mask=None):
    return denoise_fn(merge_lora(params.base, params.lora, scale), x_t, t, cond, cond_mask)
  return fn
