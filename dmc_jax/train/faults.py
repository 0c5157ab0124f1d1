"""Fault injection (SHELL, for tests and ``launch.fault_injection``): run the job in a
subprocess, SIGKILL it at a moment or a printed line, and compare a resumed workdir with an
uninterrupted one (every checkpoint leaf, metric row and ``results.json``, bit for bit).
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np

from dmc_jax.train import checkpoint
from dmc_jax.train import hooks as hooks_lib
from dmc_jax.train import logging as logging_lib

# Test-only: ``DMC_JAX_TEST_BOUNDARY=N`` makes a job started by ``launch.train`` SIGKILL itself
# at its N-th write boundary (1-based); ``=list`` prints every boundary it passes.
BOUNDARY_ENV = "DMC_JAX_TEST_BOUNDARY"
BOUNDARY_PREFIX = "write boundary "


def hooks_from_env(environ=None):
  """The hooks a launcher passes to the job: none unless :data:`BOUNDARY_ENV` is set."""
  value = (os.environ if environ is None else environ).get(BOUNDARY_ENV)
  if not value:
    return hooks_lib.NONE
  kill_at = None if value == "list" else int(value)
  count = [0]

  def boundary(name):
    count[0] += 1
    print(f"{BOUNDARY_PREFIX}{count[0]}: {name}", flush=True)
    if count[0] == kill_at:
      os.kill(os.getpid(), signal.SIGKILL)
  return hooks_lib.Hooks(boundary=boundary)


# The repository root (the jobs run there, so that ``--config=configs/...`` resolves).
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def command(config: str, workdir: str, overrides=()) -> list:
  return [sys.executable, "-m", "launch.train", f"--config={config}", f"--workdir={workdir}",
          *overrides]


def run(cmd, env=None, timeout=900) -> subprocess.CompletedProcess:
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=timeout)
  if proc.returncode != 0:
    raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
  return proc


def run_and_kill(cmd, *, after_s=None, after_line=None, env=None, timeout=900,
                 wait=False, lines=None) -> bool:
  """Starts ``cmd`` and SIGKILLs it after ``after_s`` seconds or once a stdout line contains
  ``after_line``; with ``wait``, lets it run and reports whether it died of a SIGKILL (one it
  sent itself, see :func:`hooks_from_env`). Returns True if the kill landed (False: the job
  finished first). ``lines``: a list that receives the job's stdout lines up to the kill."""
  lines = [] if lines is None else lines
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True, start_new_session=True)
  t0 = time.time()
  try:
    if wait:
      lines.extend(proc.stdout.read().splitlines())
      return proc.wait(timeout=timeout) == -signal.SIGKILL
    if after_line is not None:
      for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        if after_line in line:
          os.killpg(proc.pid, signal.SIGKILL)
          proc.wait()
          return True
        if time.time() - t0 > timeout:
          break
      proc.wait()
      return False
    # Read stdout while waiting (a full pipe would stall the job), then kill.
    reader = threading.Thread(target=lambda: lines.extend(
        line.rstrip("\n") for line in proc.stdout), daemon=True)
    reader.start()
    try:
      proc.wait(timeout=after_s)
      reader.join()
      return False
    except subprocess.TimeoutExpired:
      os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()
      reader.join(timeout=10)
      return True
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()


def metric_rows(workdir: str) -> list:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [{k: v for k, v in json.loads(line).items() if k != "time"} for line in f]


def _load_latest(directory):
  ckpt = checkpoint.Checkpointer(directory)
  try:
    steps = ckpt.all_steps()
    return (steps[-1], ckpt.restore_untyped(steps[-1])) if steps else (None, None)
  finally:
    ckpt.close()


def compare(ref: str, other: str) -> dict:
  """Bit-for-bit comparison of the final checkpoints, model bundle and metrics."""
  out = {"metrics_equal": metric_rows(ref) == metric_rows(other)}
  max_diff, equal = 0.0, True
  for sub in ("checkpoints/critic", "checkpoints/dmc", "checkpoints/align",
              "checkpoints/cascade", "model", "model_reference"):
    (s_a, a), (s_b, b) = _load_latest(os.path.join(ref, sub)), _load_latest(
        os.path.join(other, sub))
    equal &= s_a == s_b
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      x, y = np.asarray(x), np.asarray(y)
      equal &= x.shape == y.shape and np.array_equal(x, y)
      if x.shape == y.shape and np.issubdtype(x.dtype, np.inexact):
        max_diff = max(max_diff, float(np.max(np.abs(x - y), initial=0.0)))
  out.update(params_equal=bool(equal), max_abs_diff=max_diff)
  with open(os.path.join(ref, "results.json")) as f, open(os.path.join(other,
                                                                       "results.json")) as g:
    ra, rb = json.load(f), json.load(g)
  timed = ("wall_clock_s", "timing_s")  # wall-clock differs between any two runs
  out["results_equal"] = ({k: v for k, v in ra.items() if k not in timed} ==
                          {k: v for k, v in rb.items() if k not in timed})
  return out


_TEXT_FILES = ("config.json", "results.md", "align_results.md", "decisions.jsonl")
_BINARY_FILES = ("learning_curve.png", "align_curve.png")
_EVENT_FILES = (os.path.join(logging_lib.TB_DIR, logging_lib.TB_FILE),)
_TIMED_COLUMNS = ("time (s)",)


def _text(path, name):
  """A file's content without what differs between any two runs (timestamps, wall-clock)."""
  with open(path) as f:
    text = f.read()
  if name.endswith(".jsonl"):
    return [{k: v for k, v in json.loads(line).items() if k != "time"}
            for line in text.splitlines()]
  if name.endswith(".md"):
    rows = [line.split("|") for line in text.splitlines()]
    drop = [i for i, c in enumerate(rows[0]) if c.strip() in _TIMED_COLUMNS] if rows else []
    return ["|".join(c for i, c in enumerate(r) if i not in drop) for r in rows]
  return text


def compare_files(ref: str, other: str) -> dict:
  """Every other output file of the two workdirs: ``{name: equal}`` for the files either
  has (text files without timestamps and wall-clock columns; plots byte for byte; the
  TensorBoard file's steps, tags and values)."""
  out = {}
  for name in _TEXT_FILES + _BINARY_FILES + _EVENT_FILES:
    a, b = os.path.join(ref, name), os.path.join(other, name)
    if not (os.path.exists(a) or os.path.exists(b)):
      continue
    if not (os.path.exists(a) and os.path.exists(b)):
      out[name] = False
    elif name in _BINARY_FILES:
      out[name] = open(a, "rb").read() == open(b, "rb").read()
    elif name in _EVENT_FILES:  # scalars and steps, not wall times
      out[name] = logging_lib.read_events(a) == logging_lib.read_events(b)
    else:
      out[name] = _text(a, name) == _text(b, name)
  return out


def corrupt_checkpoints(workdir: str) -> int:
  bad = 0
  for sub in ("checkpoints/critic", "checkpoints/dmc", "checkpoints/align",
              "checkpoints/cascade", "model", "model_reference"):
    bad += checkpoint.count_unreadable(os.path.join(workdir, sub))[1]
  return bad


def phase_of(lines) -> str:
  """The job's phase at its last printed line: data, critic, dmc, align, eval (the final
  evaluations and the results files)."""
  for line in reversed(lines):
    if line.startswith("train critic"):
      return "critic"
    if line.startswith(("train dmc", "eval @")):
      return "dmc"
    if line.startswith(("align ", "  eval after", "  revert", "cascade", "resumed alignment")):
      return "align"
    if line.startswith(("alignment, selection", "final:")):
      return "eval"
    if line.startswith("data "):
      return "critic"  # the data is loaded; the critic phase starts next
  return "data"
