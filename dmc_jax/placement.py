"""Where single-device programs put their arguments. PURE (no I/O).

A jitted function compiles again for every new input placement (committed and uncommitted
arrays count as different), and arguments arrive fresh, restored from a checkpoint, or
replicated over an alignment mesh; evaluators, trackers and eager merges put them on one
placement first so that each program compiles once.
"""
import jax


def on_first_device(tree):
  """``tree`` committed to the first local device."""
  return jax.device_put(tree, jax.local_devices()[0])
