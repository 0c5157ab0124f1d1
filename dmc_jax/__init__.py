"""dmc_jax: diffusion-based control in JAX/Flax.

The numeric core (``dmc_jax.diffusion``, ``dmc_jax.networks``) is made of pure functions
and Flax modules; nothing in it is jitted for you, so it composes with ``jit``, ``vmap``,
``grad`` and ``shard_map`` at the call site.
"""

__version__ = "0.1.0"
