"""Data-parallel execution of per-device updates (SHELL): the ``DATA`` axis, ``pmap`` and
``shard_map``.

An aligner's update is written once per device (collectives over ``axis_name``). This module
runs it three ways with the same signature ``update(state, base, critic, batch, key)``, the
state, params and key replicated and every leaf of ``batch`` split along its first axis:

* ``none``: one device, ``axis_name=None``;
* ``pmap``: ``jax.pmap(..., axis_name=DATA)`` with the replicated arguments broadcast
  (``in_axes=None``), the form the library promises;
* ``shard_map``: ``jax.shard_map`` over ``Mesh(devices, (DATA,))`` with ``P()`` for replicated
  and ``P(DATA)`` for the batch, JAX's current recommendation. It runs with
  ``check_vma=False`` (pmap semantics: gradients of replicated inputs come back per device and
  the update averages them explicitly): with ``check_vma=True``, jax 0.10.2 returned wrong
  gradients for the time-embedding weights when a vmapped network call had device-varying
  step indices (PPO's per-sample step shuffles), which the 4-device test caught.
"""
from typing import Callable, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA = "data"
PARALLEL = ("none", "pmap", "shard_map")


def make_mesh(devices: Optional[Sequence] = None) -> Mesh:
  return Mesh(np.asarray(devices if devices is not None else jax.devices()), (DATA,))


def _invariant_metrics(fn):
  """Metrics leave the per-device function averaged over ``DATA`` (the identity for the
  values that are already the same on every device)."""
  def wrapped(*args):
    state, metrics = fn(*args)
    return state, jax.tree.map(lambda m: jax.lax.pmean(m, DATA), metrics)
  return wrapped


def parallelize(build: Callable, mode: str, devices: Optional[Sequence] = None):
  """``build(axis_name) -> update`` (per device) -> a compiled global update.

  Returns ``(update, num_devices)``; ``update(state, base, critic, batch, key) -> (state,
  metrics)`` takes unreplicated arguments and a global batch whose leading axis is a
  multiple of ``num_devices``, and returns an unreplicated state. The state is not donated:
  the scheduler keeps the last good state to roll back to.
  """
  if mode not in PARALLEL:
    raise ValueError(f"parallel mode must be one of {PARALLEL}, got {mode!r}")
  if mode == "none":
    return jax.jit(build(None)), 1
  devices = list(devices if devices is not None else jax.local_devices())
  n = len(devices)
  per_device = _invariant_metrics(build(DATA))
  if mode == "pmap":
    mapped = jax.pmap(per_device, axis_name=DATA, in_axes=(None, None, None, 0, None),
                      devices=devices)

    def update(state, base, critic, batch, key):
      split = jax.tree.map(lambda x: x.reshape((n, x.shape[0] // n) + x.shape[1:]), batch)
      state, metrics = mapped(state, base, critic, split, key)
      return jax.tree.map(lambda x: x[0], (state, metrics))
    return update, n
  mesh = make_mesh(devices)
  sharded = jax.jit(jax.shard_map(per_device, mesh=mesh,
                                  in_specs=(P(), P(), P(), P(DATA), P()),
                                  out_specs=(P(), P()), check_vma=False))
  batch_sharding = NamedSharding(mesh, P(DATA))

  def update(state, base, critic, batch, key):
    return sharded(state, base, critic, jax.device_put(batch, batch_sharding), key)
  return update, n


def check_batch(batch_size: int, num_devices: int, key: str = "align.batch_size") -> None:
  if batch_size % num_devices:
    raise ValueError(f"config.{key}={batch_size} is invalid: a multiple of the "
                     f"{num_devices} devices")

