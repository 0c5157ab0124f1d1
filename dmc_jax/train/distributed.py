"""Several processes (hosts) running one job together (SHELL): ``jax.distributed``.

Every process runs the same program on the same config (SPMD): the job mesh
(:func:`dmc_jax.placement.job_mesh`) spans every process's devices, so critic and DMC
pretraining split each batch over all of them and the Nav1D evaluator splits the episodes
(gathered back, every process holds every return). Alignment runs on each process's local
devices with the same keys, so every process holds the same aligned parameters.

Files: only process 0 (the *primary*) writes the job's files (``config.json``,
``metrics.jsonl``, ``results.*``, figures) and holds the workdir lock; checkpoints and model
bundles go through orbax's multi-process support (every process calls save, process 0
writes, every process restores). The workdir must therefore be one shared directory (NFS,
GCS FUSE, or the same disk for processes on one machine); a dataset that has to be generated
is made by process 0 first while the others wait.
"""
import os
from typing import Optional

import jax

ENV = {"coordinator_address": "JAX_COORDINATOR_ADDRESS", "num_processes": "JAX_NUM_PROCESSES",
       "process_id": "JAX_PROCESS_ID"}


def settings_from_env(coordinator_address: Optional[str] = None,
                      num_processes: Optional[int] = None,
                      process_id: Optional[int] = None) -> dict:
  """The three ``jax.distributed.initialize`` settings: the given value, else the
  environment variable of :data:`ENV`, else ``None``. A count or id that is not an integer
  is a ``ValueError`` naming the variable."""
  given = {"coordinator_address": coordinator_address, "num_processes": num_processes,
           "process_id": process_id}
  out = {}
  for name, value in given.items():
    if value is None and os.environ.get(ENV[name]):
      value = os.environ[ENV[name]]
      if name != "coordinator_address":
        try:
          value = int(value)
        except ValueError:
          raise ValueError(f"{ENV[name]}={value!r} is not an integer") from None
    out[name] = value
  return out


def check_settings(s: dict) -> None:
  """All three settings or none (``auto`` detection is separate); ids in range."""
  given = [k for k, v in s.items() if v is not None]
  if given and len(given) != 3:
    missing = sorted(set(s) - set(given))
    raise ValueError(
        f"multi-process settings {given} were given without {missing}: set all of "
        "--coordinator_address, --num_processes and --process_id (or "
        f"{', '.join(ENV.values())}), or use --distributed=auto on a cluster JAX detects "
        "(Cloud TPU, SLURM, Open MPI)")
  if given:
    if s["num_processes"] < 1:
      raise ValueError(f"num_processes must be >= 1, got {s['num_processes']}")
    if not 0 <= s["process_id"] < s["num_processes"]:
      raise ValueError(f"process_id must be in [0, {s['num_processes']}), got "
                       f"{s['process_id']}")
    if ":" not in s["coordinator_address"]:
      raise ValueError(f"coordinator_address must be HOST:PORT, got "
                       f"{s['coordinator_address']!r}")


def initialize(mode: str = "off", coordinator_address: Optional[str] = None,
               num_processes: Optional[int] = None, process_id: Optional[int] = None) -> bool:
  """Joins the job's processes before any JAX computation. ``mode``: ``off`` (one process
  unless the three settings are given, by flag or :data:`ENV`), ``auto`` (JAX detects the
  cluster: Cloud TPU pod slices, SLURM, Open MPI). Returns whether it joined several
  processes. On CPU the collectives run over gloo."""
  if mode not in ("off", "auto"):
    raise ValueError(f"distributed must be 'off' or 'auto', got {mode!r}")
  s = settings_from_env(coordinator_address, num_processes, process_id)
  check_settings(s)
  if mode == "off" and s["coordinator_address"] is None:
    return False
  if mode == "off" and s["num_processes"] == 1:
    return False
  if jax.config.jax_platforms in ("cpu",) or os.environ.get("JAX_PLATFORMS") == "cpu":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if mode == "auto" and s["coordinator_address"] is None:
    jax.distributed.initialize()
  else:
    jax.distributed.initialize(**s)
  return jax.process_count() > 1


def is_primary() -> bool:
  """Process 0: the one that writes the job's files."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Every process waits here until all have arrived (a no-op for one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)
