"""Registers the library's gymnasium ids (SHELL): ``dmc_jax/Nav1D-v0`` and
``dmc_jax/MetaWorld-v0``. Idempotent; called by the shells that make or recover envs."""
from dmc_jax.envs import gymnasium as gym_face
from dmc_jax.envs import metaworld as mw_env


def register_all() -> None:
  gym_face.register()
  mw_env.register()
