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
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

# Re-exported for the shells: the job mesh of pretraining and evaluation (train.parallel).
from dmc_jax.placement import (DATA, PRETRAIN_PARALLEL, job_mesh, mesh_size,  # noqa: F401
                               on_first_device, replicate, shard_batch)

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


def _placed(fn, placement):
  """``fn`` with its arguments put on ``placement`` (a sharding or device, or a tuple of
  them per argument) before every call. A jitted function compiles again for every new
  input placement (committed and uncommitted count as different), and a state comes back
  from an update, a fresh learning rate, or a restored checkpoint with different ones: this
  gives each program one placement, so it compiles once."""
  def call(*args):
    return fn(*jax.device_put(args, placement))
  return call


def parallelize_chunk(build: Callable, mode: str, batch_fn: Callable, num_updates: int,
                      devices: Optional[Sequence] = None):
  """``num_updates`` updates as one compiled ``lax.scan`` (one dispatch per chunk).

  ``build(axis_name) -> update`` as for :func:`parallelize`; ``batch_fn(u, aux) -> batch``
  makes the *global* batch of update ``u`` inside the compiled program (traceable; ``aux`` is
  passed through, e.g. a NaN-injection factor). Update ``u = u0 + i`` draws its batch from
  ``batch_fn(u, aux)`` and its key from ``fold_in(key, u)``: the same batches and keys as
  calling :func:`parallelize`'s update once per ``u`` from Python, so the numbers are the
  same (tested bit for bit on CPU). Under ``pmap`` / ``shard_map`` every device builds the
  global batch (cheap: a gather from the dataset) and keeps its own slice, so nothing is
  transferred per update.

  Returns ``(chunk, num_devices)``; ``chunk(state, base, critic, key, u0, aux) -> (state,
  metrics)`` with every metric stacked over the chunk (``[num_updates]``). It places its
  arguments on one sharding before each call (see :func:`_placed`; without it every stage
  had compiled its update 2-3 times).
  """
  if mode not in PARALLEL:
    raise ValueError(f"parallel mode must be one of {PARALLEL}, got {mode!r}")
  if num_updates < 1:
    raise ValueError(f"a chunk needs at least one update, got num_updates={num_updates}")
  devices = list(devices if devices is not None else jax.local_devices())
  n = 1 if mode == "none" else len(devices)
  axis = None if mode == "none" else DATA
  update = build(axis) if mode == "none" else _invariant_metrics(build(DATA))

  def local(x):
    if axis is None:
      return x
    b = x.shape[0] // n
    return jax.lax.dynamic_slice_in_dim(x, jax.lax.axis_index(DATA) * b, b)

  def chunk(state, base, critic, key, u0, aux):
    def body(st, i):
      u = u0 + i
      batch = jax.tree.map(local, batch_fn(u, aux))
      return update(st, base, critic, batch, jax.random.fold_in(key, u))
    return jax.lax.scan(body, state, jnp.arange(num_updates, dtype=jnp.int32))

  if mode == "none":
    return _placed(jax.jit(chunk), devices[0]), 1
  if mode == "pmap":
    # pmap needs one mapped argument: the device index (unused; ``axis_index`` slices).
    mapped = jax.pmap(lambda d, *args: chunk(*args), axis_name=DATA,
                      in_axes=(0,) + (None,) * 6, devices=devices)

    def run(*args):
      return jax.tree.map(lambda x: x[0], mapped(np.arange(n), *args))
    return _placed(run, devices[0]), n
  mesh = make_mesh(devices)
  sharded = jax.jit(jax.shard_map(chunk, mesh=mesh, in_specs=(P(),) * 6,
                                  out_specs=(P(), P()), check_vma=False))
  return _placed(sharded, NamedSharding(mesh, P())), n


def check_batch(batch_size: int, num_devices: int, key: str = "align.batch_size") -> None:
  if batch_size % num_devices:
    raise ValueError(f"config.{key}={batch_size} is invalid: a multiple of the "
                     f"{num_devices} devices")

