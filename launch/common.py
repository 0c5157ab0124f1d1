"""The flags and the entry point shared by the job launchers (``launch.train``,
``launch.align``): ``--config``, ``--workdir``, ``--compilation_cache`` and the multi-process settings
(``--distributed``, ``--coordinator_address``, ``--num_processes``, ``--process_id``).

``--config`` takes a path from the current directory or, failing that, one of the installed
experiment configs (``configs/nav1d.py:dd,partial`` works from any directory). Library INFO
logs (orbax's checkpoint messages) are off unless ``--verbosity`` is given; warnings stay.
"""
import os
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

import configs
from dmc_jax.train import compile_cache, distributed, faults, loop
from dmc_jax.train.schema import base_config

CONFIGS_DIR = os.path.dirname(os.path.abspath(configs.__file__))
DEFAULT_CONFIG = os.path.join(CONFIGS_DIR, "default.py")


def config_help() -> str:
  """The config groups and where each key is documented (appended to ``--help``)."""
  c = base_config()
  lines = ["", "Flags: --config (default: configs/default.py), --workdir (required), "
           "--compilation_cache; --helpfull lists every flag.",
           "", "Config groups (override any key with --config.GROUP.KEY=VALUE; every key, its",
           "default and its meaning: dmc_jax/train/schema.py, base_config; experiment files:",
           f"{CONFIGS_DIR}/*.py):"]
  for group in c.keys():
    if hasattr(c[group], "keys"):
      keys = [k for k in c[group].keys() if not hasattr(c[group][k], "keys")]
      subs = [k for k in c[group].keys() if hasattr(c[group][k], "keys")]
      text = ", ".join(keys[:8]) + (", ..." if len(keys) > 8 else "")
      if subs:
        text += "; sub-groups " + ", ".join(f"{group}.{s}" for s in subs)
      lines.append(f"  {group:10s} {text}")
    else:
      lines.append(f"  {group:10s} (top-level key, default {c[group]!r})")
  lines += ["", "Configs: " + ", ".join(sorted(n for n in os.listdir(CONFIGS_DIR)
                                              if n.endswith(".py") and n != "__init__.py"))]
  return "\n".join(lines) + "\n"


def define_job_flags() -> None:
  config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "Experiment config file: PATH or "
                                  "PATH:ARG (e.g. configs/nav1d.py:dd,partial).",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "Where metrics, config and results are written.")
  flags.mark_flags_as_required(["workdir"])
  flags.DEFINE_string("compilation_cache", None,
                      f"JAX persistent compilation cache directory ('off' disables); default "
                      f"${compile_cache.ENV} or {compile_cache.DEFAULT}.")
  # Several processes (hosts) on one job: dmc_jax.train.distributed.
  flags.DEFINE_enum("distributed", "off", ["off", "auto"],
                    "'auto': jax.distributed detects the cluster (Cloud TPU pod slice, SLURM, "
                    "Open MPI); 'off': one process unless the three settings below are given.")
  flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0 (default "
                      f"${distributed.ENV['coordinator_address']}).")
  flags.DEFINE_integer("num_processes", None, "How many processes run the job (default "
                       f"${distributed.ENV['num_processes']}).")
  flags.DEFINE_integer("process_id", None, "This process's index, 0 .. num_processes-1 "
                       f"(default ${distributed.ENV['process_id']}); process 0 writes the "
                       "files.")
  main = sys.modules.get("__main__")
  if main is not None and main.__doc__ and "Config groups" not in main.__doc__:
    main.__doc__ += config_help()


def resolve_config_arg(arg: str) -> str:
  """``--config=PATH[:ARG]`` with PATH taken from the installed configs when it is not a file
  from the current directory."""
  prefix = "--config="
  if not arg.startswith(prefix):
    return arg
  path, sep, rest = arg[len(prefix):].partition(":")
  if os.path.exists(path):
    return arg
  rel = path.split("configs" + os.sep, 1)[-1] if "configs" + os.sep in path else path
  candidate = os.path.join(CONFIGS_DIR, rel)
  return prefix + candidate + sep + rest if os.path.exists(candidate) else arg


def parse_flags(argv):
  """absl's flag parser, with :func:`resolve_config_arg` applied first; ``--help`` exits 0."""
  if any(a in ("--help", "-h", "-?") for a in argv[1:]):
    app.usage(shorthelp=True, writeto_stdout=True, exitcode=0)
  return app.parse_flags_with_usage([argv[0]] + [resolve_config_arg(a) for a in argv[1:]])


def run(main) -> None:
  app.run(main, flags_parser=parse_flags)


def quiet_logs() -> None:
  """Library INFO logging off (warnings stay) unless ``--verbosity`` was given."""
  if not flags.FLAGS["verbosity"].present:
    absl_logging.set_verbosity(absl_logging.WARNING)


def run_job(argv) -> dict:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  quiet_logs()
  f = flags.FLAGS
  try:
    distributed.initialize(f.distributed, f.coordinator_address, f.num_processes,
                           f.process_id)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  if not distributed.is_primary():  # progress and results print on process 0 only
    sys.stdout = open(os.devnull, "w")
  compile_cache.enable(f.compilation_cache)
  return loop.train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir,
                                 faults.hooks_from_env())
