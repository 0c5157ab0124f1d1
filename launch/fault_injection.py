"""Kills the Nav1D pipeline with SIGKILL at random moments, resumes it, and checks the result.

  python -m launch.fault_injection --workdir=/tmp/faults [--kills=20] [--seed=0] \\
      [--config=configs/default.py:smoke] [--override=--config.train.log_every=25 ...]

The job is the README's full default job unless ``--config`` says otherwise (the smoke
config is the quick option).

1. runs the job once uninterrupted (reference, in WORKDIR/reference);
2. runs it in WORKDIR/killed, sending SIGKILL after a random time in ``[0, T_ref]`` and
   re-running the same command. When a run gets to the end before its kill, that finished
   (killed-and-resumed) run is compared with the reference and a fresh one starts. This goes
   on until ``--kills`` kills have landed; the last run is then let finish and compared too;
3. a comparison checks the final parameters (every checkpoint leaf, bit for bit), the
   metrics (every row, without wall-clock time), results.json and every other output file
   (tables, decisions, config, plots); unreadable checkpoints are counted after every kill
   (must be 0), and each kill is attributed to the phase the job was in.

``--mode=boundaries`` instead kills the job at **every write boundary** in turn: a listing
run (``DMC_JAX_TEST_BOUNDARY=list``) names the boundaries the uninterrupted job passes (phase
starts, before and after every checkpoint, after the reference and curve evaluations, the
final evaluation, each results file and model bundle); then for each N the job SIGKILLs itself
at its N-th boundary (``DMC_JAX_TEST_BOUNDARY=N``), is re-run to the end, and every output
file is compared with the reference (``--every=K`` tries every K-th boundary).

The harness (run, kill, compare) is :mod:`dmc_jax.train.faults`.
"""
import json
import os
import random
import shutil
import sys
import time

from absl import app, flags

from dmc_jax.train import faults
from dmc_jax.train.faults import (command, compare, compare_files, corrupt_checkpoints, run,
                                  run_and_kill)

WORKDIR = flags.DEFINE_string("workdir", None, "scratch root", required=True)
KILLS = flags.DEFINE_integer("kills", 20, "SIGKILLs to land before letting the job finish")
SEED = flags.DEFINE_integer("seed", 0, "seed of the kill times")
CONFIG = flags.DEFINE_string("config", "configs/default.py", "config of the job (the full "
                             "default job; configs/default.py:smoke for a quick check)")
OVERRIDES = flags.DEFINE_multi_string("override", [], "extra flags for launch.train")
MODE = flags.DEFINE_enum("mode", "random", ["random", "boundaries"], "random kill times, or a "
                         "kill at every write boundary")
EVERY = flags.DEFINE_integer("every", 1, "boundaries mode: try every K-th boundary")
FIRST = flags.DEFINE_integer("first", 1, "boundaries mode: the first boundary to try")


def boundaries_main():
  ref, killed = os.path.join(WORKDIR.value, "reference"), os.path.join(WORKDIR.value, "killed")
  shutil.rmtree(ref, ignore_errors=True)
  env = dict(os.environ, **{faults.BOUNDARY_ENV: "list"})
  t0 = time.time()
  out = run(command(CONFIG.value, ref, OVERRIDES.value), env=env)
  names = [line.split(": ", 1)[1] for line in out.stdout.splitlines()
           if line.startswith(faults.BOUNDARY_PREFIX)]
  print(f"reference run: {time.time() - t0:.1f} s, {len(names)} write boundaries", flush=True)
  plain = {k: v for k, v in os.environ.items() if k != faults.BOUNDARY_ENV}
  per_kind, failed = {}, []
  for n in range(FIRST.value, len(names) + 1, EVERY.value):
    shutil.rmtree(killed, ignore_errors=True)
    cmd = command(CONFIG.value, killed, OVERRIDES.value)
    landed = run_and_kill(cmd, after_s=None, env=dict(plain, **{faults.BOUNDARY_ENV: str(n)}),
                          wait=True)
    bad = corrupt_checkpoints(killed)
    run(cmd, env=plain)
    res = dict(compare(ref, killed), files=compare_files(ref, killed), landed=landed,
               unreadable=bad)
    ok = (landed and bad == 0 and res["params_equal"] and res["metrics_equal"] and
          res["results_equal"] and all(res["files"].values()))
    kind = names[n - 1]
    per_kind.setdefault(kind, [0, 0])
    per_kind[kind][0] += 1
    per_kind[kind][1] += int(ok)
    if not ok:
      failed.append((n, kind, res))
    print(f"boundary {n} ({kind}): {'equal' if ok else 'DIFFERENT ' + json.dumps(res)}",
          flush=True)
  print(json.dumps({"boundaries": len(names), "tried": sum(v[0] for v in per_kind.values()),
                    "equal": sum(v[1] for v in per_kind.values()),
                    "per_kind": {k: f"{v[1]}/{v[0]}" for k, v in per_kind.items()}}, indent=1))
  print("PASS" if not failed else "FAIL")
  if failed:
    sys.exit(1)


def main(argv):
  del argv
  if MODE.value == "boundaries":
    return boundaries_main()
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
    res = dict(compare(ref, killed), files=compare_files(ref, killed), kills=in_run)
    finished.append(res)
    print(f"finished run {len(finished)} after {in_run} kills: {json.dumps(res)}", flush=True)
    shutil.rmtree(killed, ignore_errors=True)

  per_phase = {}
  while kills < KILLS.value:
    after = rng.uniform(0.0, t_ref)
    lines = []
    if run_and_kill(cmd, after_s=after, lines=lines):
      kills += 1
      in_run += 1
      bad = corrupt_checkpoints(killed)
      corrupt += bad
      phase = faults.phase_of(lines)
      per_phase[phase] = per_phase.get(phase, 0) + 1
      print(f"kill {kills}: after {after:.1f} s, in phase {phase}; unreadable checkpoints: "
            f"{bad}", flush=True)
    else:
      finish()
      in_run = 0
  run(cmd)
  finish()
  same = all(r["params_equal"] and r["metrics_equal"] and r["results_equal"] and
             all(r["files"].values()) for r in finished)
  result = {"kills": kills, "finished_runs": len(finished),
            "kills_per_finished_run": [r["kills"] for r in finished],
            "kills_per_phase": per_phase,
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
