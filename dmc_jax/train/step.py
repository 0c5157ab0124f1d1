"""A generic compiled-ready train step with EMA weights. PURE.

``make_train_step(loss_fn, ema_decay)`` returns ``step(state, key, batch) -> (state, metrics)``
where ``loss_fn(params, key, batch) -> (loss, metrics)``. Jit it at the call site (with
``donate_argnums=0`` to update in place).
"""
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from dmc_jax.finite import all_finite, update_if_finite


class TrainState(train_state.TrainState):
  """Flax TrainState plus an EMA copy of the params (used for evaluation)."""
  ema_params: Any = None


def create_train_state(params, tx: optax.GradientTransformation) -> TrainState:
  state = TrainState.create(apply_fn=None, params=params, tx=tx,
                            ema_params=jax.tree.map(jnp.copy, params))
  return state.replace(step=jnp.zeros((), jnp.int32))  # an array, so checkpoints keep its dtype


def make_train_step(loss_fn: Callable, ema_decay: float = 0.995) -> Callable:
  """One optimiser step on ``loss_fn`` and an EMA update ``ema <- d ema + (1 - d) params``.

  A step whose loss or gradients are not finite is skipped inside the compiled function:
  the state comes back unchanged and ``metrics["nonfinite"]`` is 1. The check is made
  before the update, and the update runs inside the ``cond`` (``update_if_finite``), so a
  donated state is updated in place. Finite gradients give finite parameters under Adam,
  the optimiser pretraining builds (each step is bounded by about the learning rate); a
  non-finite state is still refused by the checkpointer.
  """
  def step(state: TrainState, key, batch):
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, key, batch)
    ok = jnp.isfinite(loss) & all_finite(grads)

    def update(s):
      new = s.apply_gradients(grads=grads)
      return new.replace(
          ema_params=optax.incremental_update(new.params, s.ema_params, 1.0 - ema_decay))

    metrics = dict(metrics, grad_norm=optax.tree.norm(grads),
                   nonfinite=1.0 - ok.astype(jnp.float32))
    return update_if_finite(ok, update, state), metrics
  return step
