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

The harness (run, kill, compare) is :mod:`dmc_jax.train.faults`.
"""
import json
import os
import random
import shutil
import sys
import time

from absl import app, flags

from dmc_jax.train.faults import command, compare, corrupt_checkpoints, run, run_and_kill

WORKDIR = flags.DEFINE_string("workdir", None, "scratch root", required=True)
KILLS = flags.DEFINE_integer("kills", 20, "SIGKILLs to land before letting the job finish")
SEED = flags.DEFINE_integer("seed", 0, "seed of the kill times")
CONFIG = flags.DEFINE_string("config", "configs/default.py:smoke", "config of the job")
OVERRIDES = flags.DEFINE_multi_string("override", [], "extra flags for launch.train")


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
