"""Kills the Nav1D pipeline with SIGKILL at random moments, resumes it, and checks the result.

  python -m launch.fault_injection --workdir=/tmp/faults [--kills=20] [--seed=0] \\
      [--config=configs/default.py:smoke] [--override=--config.train.log_every=25 ...]

1. runs the job once uninterrupted (reference, in WORKDIR/reference);
2. runs it in WORKDIR/killed, sending SIGKILL after a random time in ``[0, T_ref]`` and
   re-running the same command. When a run gets to the end before its kill, that finished
   (killed-and-resumed) run is compared with the reference and a fresh one starts. This goes
   on until ``--kills`` kills have landed; the last run is then let finish and compared too;
3. a comparison checks the final parameters (every checkpoint leaf, bit for bit), the
   metrics (every row, without wall-clock time) and results.json; unreadable checkpoints are
   counted after every kill (must be 0).
"""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

WORKDIR = flags.DEFINE_string("workdir", None, "scratch root", required=True)
KILLS = flags.DEFINE_integer("kills", 20, "SIGKILLs to land before letting the job finish")
SEED = flags.DEFINE_integer("seed", 0, "seed of the kill times")
CONFIG = flags.DEFINE_string("config", "configs/default.py:smoke", "config of the job")
OVERRIDES = flags.DEFINE_multi_string("override", [], "extra flags for launch.train")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
  from dmc_jax.train import checkpoint
  ckpt = checkpoint.Checkpointer(directory)
  try:
    steps = ckpt.all_steps()
    return (steps[-1], ckpt.restore_untyped(steps[-1])) if steps else (None, None)
  finally:
    ckpt.close()


def compare(ref: str, other: str) -> dict:
  """Bit-for-bit comparison of the final checkpoints, model bundle and metrics."""
  import jax
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
  from dmc_jax.train import checkpoint
  bad = 0
  for sub in ("checkpoints/critic", "checkpoints/dmc", "checkpoints/align",
              "checkpoints/cascade", "model", "model_reference"):
    bad += checkpoint.count_unreadable(os.path.join(workdir, sub))[1]
  return bad


def main(argv):
  del argv
  rng = random.Random(SEED.value)
  ref, killed = os.path.join(WORKDIR.value, "reference"), os.path.join(WORKDIR.value, "killed")
  for d in (ref, killed):
    shutil.rmtree(d, ignore_errors=True)
  t0 = time.time()
  run(command(CONFIG.value, ref, OVERRIDES.value))
  t_ref = time.time() - t0
  print(f"reference run: {t_ref:.1f} s", flush=True)
  cmd = command(CONFIG.value, killed, OVERRIDES.value)
  kills = corrupt = in_run = 0
  finished = []  # one comparison per finished run, with the kills it survived

  def finish():
    res = dict(compare(ref, killed), kills=in_run)
    finished.append(res)
    print(f"finished run {len(finished)} after {in_run} kills: {json.dumps(res)}", flush=True)
    shutil.rmtree(killed, ignore_errors=True)

  while kills < KILLS.value:
    after = rng.uniform(0.0, t_ref)
    if run_and_kill(cmd, after_s=after):
      kills += 1
      in_run += 1
      bad = corrupt_checkpoints(killed)
      corrupt += bad
      print(f"kill {kills}: after {after:.1f} s; unreadable checkpoints: {bad}", flush=True)
    else:
      finish()
      in_run = 0
  run(cmd)
  finish()
  same = all(r["params_equal"] and r["metrics_equal"] and r["results_equal"]
             for r in finished)
  result = {"kills": kills, "finished_runs": len(finished),
            "kills_per_finished_run": [r["kills"] for r in finished],
            "all_bit_for_bit_equal": same,
            "max_abs_diff": max(r["max_abs_diff"] for r in finished),
            "unreadable_checkpoints": corrupt, "reference_s": round(t_ref, 1)}
  print(json.dumps(result, indent=1))
  ok = same and corrupt == 0
  print("PASS" if ok else "FAIL")
  if not ok:
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
