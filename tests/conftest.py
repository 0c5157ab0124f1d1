"""Test-wide set-up: 4 simulated CPU devices, the persistent compilation cache (in-process and
for the jobs tests start as subprocesses), and a temporary ``MINARI_DATASETS_PATH``.

Both must be configured before JAX initialises its backends, which is why they live here.
"""
import os
import tempfile

import jax

# Tests write their own Minari datasets; never touch the user's (or the network).
os.environ["MINARI_DATASETS_PATH"] = tempfile.mkdtemp(prefix="dmc_jax_minari_")

jax.config.update("jax_num_cpu_devices", 4)
_CACHE = os.environ.get("DMC_JAX_TEST_CACHE",
                        os.path.join(os.path.dirname(os.path.dirname(__file__)), ".jax_cache"))
jax.config.update("jax_compilation_cache_dir", _CACHE)
# The jobs tests start as subprocesses (launch.train, the benchmark's end-to-end cases) share
# the same cache, so a config compiled by one test is loaded, not compiled, by the next.
os.environ.setdefault("DMC_JAX_COMPILATION_CACHE", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
