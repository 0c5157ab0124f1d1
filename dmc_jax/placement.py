"""Where programs put their arguments, and the job's mesh. PURE (no I/O).

A jitted function compiles again for every new input placement (committed and uncommitted
arrays count as different), and arguments arrive fresh, restored from a checkpoint, or
replicated over an alignment mesh; evaluators, trackers and eager merges put them on one
placement first so that each program compiles once.

The job mesh (``train.parallel``): critic and DMC pretraining split each batch over it and
the Nav1D evaluator splits the episodes (GSPMD: ``with_sharding_constraint`` inside the
program, parameters replicated); alignment keeps its per-device update
(:mod:`dmc_jax.train.sharding`).
"""
from typing import Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA = "data"  # the mesh axis every batch is split over


def _local_copy(x):
  """A value replicated over devices of several processes: this process's copy of it."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    if not x.is_fully_replicated:
      raise ValueError(f"an array split over several processes ({x.sharding}) has no local "
                       "copy: gather it first (placement.gather)")
    return x.addressable_data(0)
  return x


def on_first_device(tree):
  """``tree`` committed to the first local device (a value replicated over several
  processes: this process's copy)."""
  return jax.device_put(jax.tree.map(_local_copy, tree), jax.local_devices()[0])


# ------------------------------------------------ pretraining: one mesh, GSPMD data parallel
PRETRAIN_PARALLEL = ("mesh", "none")


def job_mesh(mode: str) -> Optional[Mesh]:
  """The job's mesh for critic and DMC pretraining (``train.parallel``): ``mesh`` = every
  device of every process (``jax.devices()``, global under ``jax.distributed``), ``none`` =
  no mesh (one device). A one-device mesh is ``None`` too: the programs are then exactly
  the single-device ones (same numbers, bit for bit)."""
  if mode not in PRETRAIN_PARALLEL:
    raise ValueError(f"train.parallel must be one of {PRETRAIN_PARALLEL}, got {mode!r}")
  if mode == "none" or jax.device_count() == 1:
    return None
  return Mesh(np.asarray(jax.devices()), (DATA,))


def mesh_size(mesh: Optional[Mesh]) -> int:
  return 1 if mesh is None else mesh.size


def shard_batch(tree, mesh: Optional[Mesh], *, if_divisible: bool = False):
  """Inside ``jit``: every leaf split over ``DATA`` along its first axis. XLA (GSPMD) then
  runs each device's share of the forward and backward passes and all-reduces the
  gradients; parameters and optimiser state stay replicated. Identity without a mesh.
  With ``if_divisible`` a leaf whose first axis the devices do not divide stays as it is
  (the evaluators: any episode count works, a multiple of the devices is split)."""
  if mesh is None:
    return tree
  spec = NamedSharding(mesh, P(DATA))

  def one(x):
    if if_divisible and (x.ndim == 0 or x.shape[0] % mesh.size):
      return x
    return jax.lax.with_sharding_constraint(x, spec)
  return jax.tree.map(one, tree)


def gather(tree, mesh: Optional[Mesh]):
  """Inside ``jit``: every leaf replicated over the mesh (the per-episode results of a split
  evaluation: under several processes each one then holds them all). Identity without a
  mesh."""
  if mesh is None:
    return tree
  spec = NamedSharding(mesh, P())
  return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, spec), tree)


def replicate(tree, mesh: Optional[Mesh]):
  """``tree`` replicated over the mesh (one placement, so the chunk compiles once; a state
  restored from a checkpoint comes back uncommitted). Identity without a mesh.

  A mesh over several processes (``jax.distributed``): every process holds the same value,
  and each builds its devices' copies from its own (no transfer between hosts)."""
  if mesh is None:
    return tree
  spec = NamedSharding(mesh, P())
  if jax.process_count() == 1:
    return jax.device_put(tree, spec)
  return jax.tree.map(lambda x: _global_copy(x, spec), tree)


def _global_copy(x, spec):
  if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(spec, x.ndim):
    return x
  if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    impl = jax.random.key_impl(x)
    return jax.random.wrap_key_data(_global_copy(jax.random.key_data(x), spec), impl=impl)
  host = np.asarray(jax.device_get(_local_copy(x)))
  return jax.make_array_from_callback(host.shape, spec, lambda index: host[index])
