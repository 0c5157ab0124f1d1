"""JAX's persistent compilation cache for the launch scripts (SHELL).

A re-run or a resumed job loads its compiled executables from disk instead of compiling them
again (a planner's U-Net train step, every aligner update and every evaluator compile once
per shape). The directory is ``$DMC_JAX_COMPILATION_CACHE`` or ``--compilation_cache``
(default ``~/.cache/dmc_jax/jax``); ``off`` (or an empty value) disables it. Library code
never turns it on by itself: only the launch scripts call :func:`enable`.
"""
import os
from typing import Optional

import jax

ENV = "DMC_JAX_COMPILATION_CACHE"
DEFAULT = os.path.join("~", ".cache", "dmc_jax", "jax")
OFF = ("", "0", "off", "none", "false")


def resolve(flag_value: Optional[str] = None) -> Optional[str]:
  """The cache directory the flag / environment ask for, or ``None`` (disabled). The flag
  wins over the environment variable, which wins over the default."""
  value = flag_value if flag_value is not None else os.environ.get(ENV, DEFAULT)
  if value.strip().lower() in OFF:
    return None
  return os.path.abspath(os.path.expanduser(value))


def enable(flag_value: Optional[str] = None) -> Optional[str]:
  """Points JAX's persistent cache at :func:`resolve`'s directory; returns it (or ``None``).
  Every executable is stored, the small ones too: a job compiles ~250 kernels under 0.5 s
  (initialisers, metrics, host-side helpers) whose compile time adds up (BUILD_NOTES #15)."""
  path = resolve(flag_value)
  if path is None:
    return None
  os.makedirs(path, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return path
