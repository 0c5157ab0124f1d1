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


def on_first_device(tree):
  """``tree`` committed to the first local device."""
  return jax.device_put(tree, jax.local_devices()[0])


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


def replicate(tree, mesh: Optional[Mesh]):
  """``tree`` replicated over the mesh (one placement, so the chunk compiles once; a state
  restored from a checkpoint comes back uncommitted). Identity without a mesh."""
  if mesh is None:
    return tree
  return jax.device_put(tree, NamedSharding(mesh, P()))
