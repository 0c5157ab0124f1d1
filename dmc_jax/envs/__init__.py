"""Environments: Nav1D in pure JAX (``nav1d``) and its gymnasium face (``dmc_jax/Nav1D-v0``);
MetaWorld v3 tasks with seeded variations (``dmc_jax/MetaWorld-v0``, needs the ``metaworld``
extra only when made).

Importing this package registers nothing (the pure env needs no gymnasium): the shells that
make gymnasium envs call :func:`dmc_jax.envs.registry.register_all` (or one module's
``register()``) first.
"""
