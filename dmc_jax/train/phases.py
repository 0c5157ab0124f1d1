"""Resumable phases (SHELL helper): run a phase chunk by chunk from its latest checkpoint,
rewind the metrics a resumed phase writes again, and refuse a checkpoint made with another
config. Used by pretraining (critic, DMC) and alignment; imports nothing above it.
"""
import json
import os
import shutil

import jax
import numpy as np
from flax import traverse_util

from dmc_jax import progress as progress_lib
from dmc_jax.train import checkpoint
from dmc_jax.train import hooks as hooks_lib
from dmc_jax.train import logging as logging_lib


class OutputWriteError(OSError):
  """Writing one of the job's files failed; the previous version of it is intact."""


def write_atomic(path, text):
  """``text`` to ``path`` through a temporary file and a rename: a failed or killed write
  leaves the previous file (or none), never a partial one. Only process 0 writes
  (:mod:`dmc_jax.train.distributed`)."""
  if jax.process_index() != 0:
    return
  try:
    with open(path + ".tmp", "w") as f:
      f.write(text)
    os.replace(path + ".tmp", path)
  except OSError as e:
    if os.path.exists(path + ".tmp"):
      try:
        os.remove(path + ".tmp")
      except OSError:
        pass
    raise OutputWriteError(f"writing {path} failed ({e}); the previous {os.path.basename(path)} "
                           "(if any) is intact: fix the cause (disk space, permissions) and "
                           "re-run the same command to resume") from e


def chunked(start, total, chunk):
  done = start
  while done < total:
    n = min(chunk, total - done)
    yield done, n
    done += n


PHASES = ("critic", "dmc", "align", "eval")
_PREFIX_PHASE = {"critic": 0, "train": 1, "curve": 1, "align": 2, "cascade": 2, "eval": 3}
# Keys that may change between a run and its resumption (they do not change what is trained).
RESUMABLE_KEYS = ("train.steps", "critic.steps")
RESUMABLE_GROUPS = ("eval.",)


def row_phase(row) -> int:
  for k in row:
    if "/" in k:
      return _PREFIX_PHASE.get(k.split("/")[0], 3)
  return 3


# The pretraining phases do not depend on the ``align`` group, on how the critic's heads are
# combined (``critic.q_agg``, ``critic.lcb_coef``: selection and alignment rewards only) or on
# how the DMC samples (``diffusion.ddim_eta``, ``sample_steps``, ``clip_x0``: sampling only):
# a pretrained workdir can be evaluated or aligned again with other settings (after removing
# ``checkpoints/align``).
PRETRAIN_IGNORED = ("align.", "critic.q_agg", "critic.lcb_coef", "critic.split_heads",
                    "diffusion.ddim_eta", "diffusion.sample_steps", "diffusion.clip_x0")
# The critic (IQL on transitions) does not see the DMC: not its network, its diffusion or its
# optimiser. ``train.parallel`` stays (a mesh changes the float32 sums).
CRITIC_IGNORED = PRETRAIN_IGNORED + ("model.", "diffusion.", "train.batch_size", "train.lr",
                                     "train.ema_decay", "train.log_every", "train.eval_every",
                                     "train.keep_checkpoints")
# Samplers that train the same network with the same loss (``dmc_jax.models.generator``:
# ``ddpm | ddim | sde | ode`` the denoising loss, ``flow`` the flow-matching one). A phase
# checkpoint made with one sampler of a family is the checkpoint every other one would make.
SAMPLER_FAMILY = {"ddpm": "denoising", "ddim": "denoising", "sde": "denoising",
                  "ode": "denoising", "flow": "flow"}
PHASE_IGNORED = {"critic": CRITIC_IGNORED, "dmc": PRETRAIN_IGNORED}


def _trained_as(flat: dict) -> dict:
  """``flat`` with ``diffusion.sampler`` replaced by its training family."""
  s = flat.get("diffusion.sampler")
  return dict(flat, **{"diffusion.sampler": SAMPLER_FAMILY.get(s, s)}) if s else flat


def check_same_config(saved: dict, config, where: str, ignore: tuple = PRETRAIN_IGNORED,
                      hint: str = "use another --workdir, or the checkpoint's config",
                      same_family: bool = False) -> None:
  """A checkpoint made with another config is an error naming the differing keys.
  ``same_family``: samplers of one :data:`SAMPLER_FAMILY` count as the same (phase
  checkpoints: what they hold was trained the same way)."""
  now = traverse_util.flatten_dict(json.loads(config.to_json()), sep=".")
  old = traverse_util.flatten_dict(saved, sep=".")
  if same_family:
    now, old = _trained_as(now), _trained_as(old)
  skip = RESUMABLE_GROUPS + tuple(ignore)
  diff = [k for k in sorted(set(now) | set(old)) if not k.startswith(skip)
          and k not in RESUMABLE_KEYS and now.get(k) != old.get(k)]
  if diff:
    shown = "; ".join(f"{k}: {old.get(k)!r} (checkpoint) vs {now.get(k)!r} (now)"
                      for k in diff[:6])
    raise checkpoint.CheckpointMismatchError(
        f"{where} holds a checkpoint made with a different config ({shown}); {hint}")


def reuse_pretraining(config, workdir: str, sources) -> dict:
  """Copies into a fresh ``workdir`` (no ``config.json``, no checkpoints) the *finished*
  critic and DMC checkpoints of the first workdir in ``sources`` whose phase was trained with
  the settings ``config`` would train it with (:data:`PHASE_IGNORED`; samplers of one
  :data:`SAMPLER_FAMILY` alike), so that the job there starts after those phases with the
  numbers it would have computed itself. Grids over samplers, selections or alignment
  settings pretrain once per model and dataset, and over models once per critic.

  Returns ``{phase: source step directory}`` of what was copied. Each step is copied under a
  temporary name and renamed, so a kill leaves either the whole step or none of it.
  """
  if (os.path.exists(os.path.join(workdir, "config.json"))
      or os.path.exists(os.path.join(workdir, "checkpoints"))):
    return {}
  copied = {}
  for name in ("critic", "dmc"):
    step_dir = find_pretrained(config, name, sources)
    if step_dir is None:
      continue
    total = os.path.basename(step_dir)
    dst = os.path.join(workdir, "checkpoints", name)
    os.makedirs(dst, exist_ok=True)
    tmp = os.path.join(dst, f".copy-{total}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(step_dir, tmp)
    os.rename(tmp, os.path.join(dst, total))
    copied[name] = step_dir
  return copied


def find_pretrained(config, name: str, sources):
  """The step directory of the first workdir in ``sources`` holding a *finished* ``name``
  (``critic`` | ``dmc``) checkpoint trained with the settings ``config`` would train it
  with (the rule of :func:`reuse_pretraining`), or ``None``."""
  total = {"critic": config.critic.steps, "dmc": config.train.steps}[name]
  for src in sources:
    d = os.path.join(src, "checkpoints", name)
    if not os.path.isdir(os.path.join(d, str(total))):
      continue
    ckpt = checkpoint.Checkpointer(d)
    try:
      saved = ckpt.restore_meta(total).get("config", {})
    except Exception:  # noqa: BLE001 - an unreadable source is not reused
      continue
    finally:
      ckpt.close()
    try:
      check_same_config(saved, config, d, ignore=PHASE_IGNORED[name], same_family=True)
    except checkpoint.CheckpointMismatchError:
      continue
    return os.path.join(d, str(total))
  return None


def summarize(metrics, name, done, step) -> dict:
  """Chunk means over the finite updates; all updates non-finite is an error (the state is
  unchanged, so the last checkpoint stays good)."""
  m = {k: np.asarray(v) for k, v in metrics.items()}
  bad = m.pop("nonfinite") > 0
  if bad.all():
    raise FloatingPointError(
        f"all {len(bad)} {name} updates of steps {done + 1}..{step} were non-finite and "
        f"skipped; the state (and the last checkpoint) is still that of step {done}")
  out = {k: float(v[~bad].mean()) for k, v in m.items()}
  out["nonfinite"] = float(bad.sum())
  return out


def run_phase(name: str, workdir: str, config, state, *, total: int, chunk: int, run_chunk,
              writer, log_fn, after_chunk=None, hooks=hooks_lib.NONE):
  """Runs ``run_chunk(state, start, n) -> (state, metrics)`` from the latest checkpoint of
  ``workdir/checkpoints/<name>`` to ``total`` steps, saving after every chunk.

  Randomness depends only on the step index, so a resumed phase redraws the same keys and ends
  bit-for-bit where an uninterrupted one would (on CPU). ``hooks.at`` is called at the
  phase's start, after each chunk's rows and before and after its checkpoint.
  """
  phase = PHASES.index(name)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints", name),
                                 max_to_keep=config.train.keep_checkpoints)
  try:
    restored = ckpt.restore(state)
    start = 0
    if restored is not None:
      check_same_config(restored.meta.get("config", {}), config, ckpt.directory,
                        ignore=PHASE_IGNORED.get(name, PRETRAIN_IGNORED), same_family=True)
      state, start = restored.tree, restored.step
      print(f"resumed {name} from step {start} ({ckpt.directory})", flush=True)
    if start < total:  # rows this phase (and every later one) will write again
      writer.rewind(lambda r: row_phase(r) < phase or (
          row_phase(r) == phase and r["step"] <= start))
    hooks.at(f"{name}:start")
    meta = {"config": json.loads(config.to_json()), "phase": name}
    progress = progress_lib.Progress(f"train {name}", total)
    for done, n in chunked(start, total, chunk):
      state, m = run_chunk(state, done, n)
      step = done + n
      m = summarize(m, name, done, step)
      log_fn(step, m, progress)
      if after_chunk is not None:
        after_chunk(state, step)
      hooks.at(f"{name}:before_checkpoint")
      ckpt.save(step, state, meta)
      hooks.at(f"{name}:after_checkpoint")
  finally:
    ckpt.close()
  return state
