"""``train_and_evaluate(config, workdir)``: the main job (SHELL), dispatched on ``config.task``.

``nav1d`` / ``minari``: the offline pipeline (:mod:`dmc_jax.train.offline`); ``mixture2d``:
the diffusion-core demo (:mod:`dmc_jax.train.mixture`).
"""
TASKS = ("nav1d", "minari", "mixture2d")


def train_and_evaluate(config, workdir: str, hooks=None) -> dict:
  """Runs the job of ``config.task`` in ``workdir`` (``hooks``: :class:`dmc_jax.train.hooks.
  Hooks`, for tests; the offline job only)."""
  if config.task == "mixture2d":
    from dmc_jax.train import mixture
    return mixture.train_and_evaluate(config, workdir)
  if config.task in ("nav1d", "minari"):
    from dmc_jax.train import hooks as hooks_lib, offline
    return offline.train_and_evaluate(config, workdir, hooks or hooks_lib.NONE)
  raise ValueError(f"config.task={config.task!r} is invalid: one of {TASKS}")


def validate_config(config) -> None:
  """Validates ``config`` for its task; raises ``ValueError`` naming the key."""
  if config.task == "mixture2d":
    from dmc_jax.train import mixture
    return mixture.validate_config(config)
  if config.task in ("nav1d", "minari"):
    from dmc_jax.train import validation
    return validation.validate_config(config)
  raise ValueError(f"config.task={config.task!r} is invalid: one of {TASKS}")
