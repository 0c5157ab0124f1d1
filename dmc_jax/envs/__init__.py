"""Environments: Nav1D in pure JAX (``nav1d``) and its gymnasium face (``dmc_jax/Nav1D-v0``)."""
from dmc_jax.envs import gymnasium as _gym_face

_gym_face.register()
