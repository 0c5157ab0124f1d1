"""Checkpoints through ``orbax.checkpoint.CheckpointManager`` (SHELL).

* Saves are atomic (orbax writes a temporary directory and renames it) and keep the last
  ``max_to_keep``. A tree with a non-finite value is never saved (``FloatingPointError``).
* Restores are checked against the expected tree *before* reading: a missing or extra leaf, or
  a shape or dtype that differs, is a :class:`CheckpointMismatchError` naming the leaf (orbax
  itself would silently cast dtypes).
* A latest checkpoint that cannot be read (truncated or half-written files) is removed with a
  warning and the previous one is used; it never crashes the resume.
* Several processes (:mod:`dmc_jax.train.distributed`): every process calls ``save`` and
  ``restore`` with the same tree; orbax writes once (process 0 writes the arrays, which are
  brought to the host first, since orbax refuses process-local ``jax.Array`` values) and every
  process reads the whole tree back from the shared directory.
"""
import logging
import os
import shutil
from typing import Any, NamedTuple, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class CheckpointMismatchError(ValueError):
  """The checkpoint was made for another model, config or dataset."""


class CheckpointReadError(ValueError):
  """A checkpoint (or model bundle, or artifact) whose files cannot be read."""


class CheckpointWriteError(OSError):
  """Writing a checkpoint failed (disk full, permission lost); the previous one is intact."""


class Restored(NamedTuple):
  step: int
  tree: Any
  meta: dict


def _key_name(k) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def _leaf_table(tree) -> dict:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  dtype = lambda x: np.dtype(x.dtype if hasattr(x, "dtype") else jax.numpy.asarray(x).dtype)
  return {".".join(_key_name(k) for k in path): (tuple(np.shape(x)), dtype(x))
          for path, x in flat}


def _stored_table(meta_tree) -> dict:
  return {m.name: (tuple(m.shape), np.dtype(m.dtype)) for m in jax.tree.leaves(meta_tree)}


def check_compatible(stored: dict, expected: dict, where: str) -> None:
  """Raises :class:`CheckpointMismatchError` naming the first differing leaves."""
  problems = []
  for name in sorted(set(expected) - set(stored)):
    problems.append(f"{name}: missing from the checkpoint")
  for name in sorted(set(stored) - set(expected)):
    problems.append(f"{name}: in the checkpoint but not expected")
  for name in sorted(set(stored) & set(expected)):
    (s_shape, s_dtype), (e_shape, e_dtype) = stored[name], expected[name]
    if s_shape != e_shape or s_dtype != e_dtype:
      problems.append(f"{name}: checkpoint has {s_dtype}{list(s_shape)}, expected "
                      f"{e_dtype}{list(e_shape)}")
  if problems:
    shown = "; ".join(problems[:5]) + (f"; ... ({len(problems)} in all)"
                                        if len(problems) > 5 else "")
    raise CheckpointMismatchError(f"checkpoint {where} does not match this model/config: "
                                  f"{shown}")


def all_finite(tree) -> bool:
  return all(bool(np.all(np.isfinite(np.asarray(x)))) for x in jax.tree.leaves(tree)
             if np.issubdtype(np.asarray(x).dtype, np.inexact))


class Checkpointer:
  """One ``CheckpointManager`` directory holding ``(state tree, JSON meta)`` per step."""

  def __init__(self, directory: str, max_to_keep: int = 3):
    self.directory = os.path.abspath(directory)
    # Handlers declared up front, so that a fresh process can read a step's metadata before
    # restoring it (otherwise item_metadata is None until the first save/restore).
    self._mngr = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep),
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "meta": ocp.JsonCheckpointHandler()})

  def close(self):
    self._mngr.close()

  def all_steps(self):
    return sorted(self._mngr.all_steps())

  def save(self, step: int, tree, meta: Optional[dict] = None) -> None:
    """Saves and waits for the write to finish (callers may donate the arrays next).

    A step that is already saved is kept as it is (a deterministic re-run rewrites the same
    values)."""
    if step in self._mngr.all_steps():
      return
    if not all_finite(tree):
      raise FloatingPointError(f"refusing to save a non-finite state at step {step} to "
                               f"{self.directory}")
    if jax.process_count() > 1:
      # Replicated values: process 0 writes its host copy (orbax's numpy handler writes on
      # the primary host only); process-local arrays could not be saved at all.
      tree = jax.device_get(tree)
    try:
      self._mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(tree),
                                                    meta=ocp.args.JsonSave(meta or {})))
      self._mngr.wait_until_finished()
    except Exception as e:  # noqa: BLE001 - orbax wraps the OSError in several ways
      previous = [s for s in self._mngr.all_steps() if s != step]
      # Orbax writes into a temporary folder and renames it when complete: a failed write
      # leaves no step folder, only its temporary one, which is removed here.
      for name in os.listdir(self.directory) if os.path.isdir(self.directory) else ():
        if name.startswith(f"{step}.orbax-checkpoint-tmp") or name == str(step):
          shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
      self._mngr.reload()
      raise CheckpointWriteError(
          f"writing checkpoint {self.directory}/{step} failed ({type(e).__name__}: "
          f"{str(e).splitlines()[0][:300] if str(e) else ''}); the previous checkpoint "
          f"({'step ' + str(previous[-1]) if previous else 'none'}) is intact: fix the cause "
          "(disk space, permissions) and re-run the same command to resume") from e

  def restore(self, target, step: Optional[int] = None,
              repair: bool = True) -> Optional[Restored]:
    """Restores the latest readable step (or ``step``) into ``target``'s structure.

    Returns ``None`` when there is no checkpoint. Unreadable steps are removed with a warning
    and older ones tried (``repair=False``: nothing is removed, and an unreadable step is a
    :class:`CheckpointReadError` naming it); a mismatch with ``target`` raises
    :class:`CheckpointMismatchError` at once.
    """
    expected = _leaf_table(target)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    steps = [step] if step is not None else self.all_steps()[::-1]
    for s in steps:
      where = os.path.join(self.directory, str(s))
      try:
        meta_tree = self._mngr.item_metadata(s)["state"]
        if meta_tree is None:
          raise ValueError("no array metadata")
        stored = _stored_table(meta_tree)
      except Exception as e:  # noqa: BLE001 - unreadable metadata means a corrupt step
        if not repair:
          raise _read_error(where, e) from None
        self._drop(s, e)
        continue
      check_compatible(stored, expected, where)
      try:
        out = self._mngr.restore(s, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
      except Exception as e:  # noqa: BLE001 - truncated array files
        if not repair:
          raise _read_error(where, e) from None
        self._drop(s, e)
        continue
      if not all_finite(out.state):
        if not repair:
          raise _read_error(where, FloatingPointError("non-finite values"))
        self._drop(s, FloatingPointError("non-finite values"))
        continue
      return Restored(s, out.state, dict(out.meta or {}))
    return None

  def restore_meta(self, step: Optional[int] = None) -> dict:
    """The metadata saved with a step (the latest by default)."""
    step = self._mngr.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint under {self.directory}")
    return self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

  def restore_untyped(self, step: Optional[int] = None):
    """The saved tree as nested dicts of arrays (no expected structure: for export and
    inspection, not for resuming). Never removes anything; unreadable files are a
    :class:`CheckpointReadError` naming the step."""
    step = self._mngr.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint under {self.directory}")
    try:
      return self._mngr.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore())).state
    except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many kinds
      raise _read_error(os.path.join(self.directory, str(step)), e) from None

  def _drop(self, step, err):
    log.warning("checkpoint %s/%d is unreadable (%s: %s); removing it and falling back to "
                "the previous one", self.directory, step, type(err).__name__,
                str(err).splitlines()[0][:200] if str(err) else "")
    print(f"WARNING: checkpoint {self.directory}/{step} is unreadable "
          f"({type(err).__name__}); falling back to the previous one", flush=True)
    # One process removes it, once every process has found it unreadable.
    _barrier(f"dmc_jax_drop_{self.directory}_{step}")
    if jax.process_index() == 0:
      shutil.rmtree(os.path.join(self.directory, str(step)), ignore_errors=True)
    _barrier(f"dmc_jax_dropped_{self.directory}_{step}")
    self._mngr.reload()


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def _read_error(where, err) -> CheckpointReadError:
  msg = str(err).splitlines()[0][:300] if str(err) else ""
  return CheckpointReadError(f"{where} cannot be read ({type(err).__name__}: {msg}): a "
                             "missing, truncated or garbled file; nothing was changed")


def save(directory: str, step: int, tree, meta: Optional[dict] = None) -> None:
  """One-shot save (see :class:`Checkpointer`)."""
  ckpt = Checkpointer(directory)
  try:
    ckpt.save(step, tree, meta)
  finally:
    ckpt.close()


def restore(directory: str, target, step: Optional[int] = None):
  """One-shot restore of the tree (the latest step), for bundles and artifacts: never removes
  anything; raises if there is none or it cannot be read (:class:`CheckpointReadError`)."""
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"{directory} is missing")
  ckpt = Checkpointer(directory)
  try:
    out = ckpt.restore(target, step, repair=False)
  finally:
    ckpt.close()
  if out is None:
    raise FileNotFoundError(f"no readable checkpoint under {directory}")
  return out.tree


def count_unreadable(directory: str) -> tuple:
  """``(readable, unreadable)`` step counts under ``directory`` (every step is read fully;
  a step with a non-finite value counts as unreadable)."""
  if not os.path.isdir(directory):
    return 0, 0
  ckpt = Checkpointer(directory)
  good = bad = 0
  try:
    for s in ckpt.all_steps():
      try:
        ok = all_finite(ckpt.restore_untyped(s))
      except Exception:  # noqa: BLE001 - any read failure is a corrupt checkpoint
        ok = False
      good, bad = good + ok, bad + (not ok)
  finally:
    ckpt.close()
  return good, bad
