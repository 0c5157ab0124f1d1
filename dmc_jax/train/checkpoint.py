"""Checkpoints through ``orbax.checkpoint.CheckpointManager`` (SHELL).

The offline job saves its trained model bundle — EMA DMC parameters, critic parameters and the
observation/action normalisers — so that evaluation needs nothing else. (Resume, fault
injection and export build on this in issue #5.)
"""
import os

import jax
import orbax.checkpoint as ocp


def _manager(directory: str, max_to_keep: int = 3) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(os.path.abspath(directory),
                               options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep))


def save(directory: str, step: int, tree) -> None:
  """Atomically saves ``tree`` (a pytree of arrays) as ``step`` (orbax: temp dir + rename)."""
  with _manager(directory) as mngr:
    mngr.save(step, args=ocp.args.StandardSave(tree))
    mngr.wait_until_finished()


def restore(directory: str, target, step: int | None = None):
  """Restores into the structure, shapes and dtypes of ``target`` (a shape/dtype mismatch is an
  error). ``step=None``: the latest."""
  with _manager(directory) as mngr:
    step = mngr.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint under {directory}")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    return mngr.restore(step, args=ocp.args.StandardRestore(abstract))
