"""Fault injection (SHELL, for tests and ``launch.fault_injection``): run the job in a
subprocess, SIGKILL it at a moment or a printed line, and compare a resumed workdir with an
uninterrupted one (every checkpoint leaf, metric row and ``results.json``, bit for bit).
"""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np

from dmc_jax.train import checkpoint


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


def run_and_kill(cmd, *, after_s=None, after_line=None, env=None, timeout=900) -> bool:
  """Starts ``cmd`` and SIGKILLs it after ``after_s`` seconds or once a stdout line contains
  ``after_line``. Returns True if the kill landed (False: the job finished first)."""
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True, start_new_session=True)
  t0 = time.time()
  try:
    if after_line is not None:
      for line in proc.stdout:
        if after_line in line:
          os.killpg(proc.pid, signal.SIGKILL)
          proc.wait()
          return True
        if time.time() - t0 > timeout:
          break
      proc.wait()
      return False
    try:
      proc.wait(timeout=after_s)
      return False
    except subprocess.TimeoutExpired:
      os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()
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


def corrupt_checkpoints(workdir: str) -> int:
  bad = 0
  for sub in ("checkpoints/critic", "checkpoints/dmc", "checkpoints/align",
              "checkpoints/cascade", "model", "model_reference"):
    bad += checkpoint.count_unreadable(os.path.join(workdir, sub))[1]
  return bad
