"""Environments: Nav1D in pure JAX (``nav1d``) and its gymnasium face (``dmc_jax/Nav1D-v0``);
MetaWorld v3 tasks with seeded variations (``dmc_jax/MetaWorld-v0``, needs the ``metaworld``
extra only when made)."""
from dmc_jax.envs import gymnasium as _gym_face
from dmc_jax.envs import metaworld as _metaworld

_gym_face.register()
_metaworld.register()
