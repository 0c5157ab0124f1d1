"""Implicit Q-learning (Kostrikov et al., 2022) for offline critics. PURE.

``L_V = E[ |tau - 1(u < 0)| u^2 ]`` with ``u = min_i Q'_i(s, a) - V(s)`` (expectile regression
on the clipped double-Q target network ``Q'``), ``L_Q = sum_i E[(Q_i(s, a) - r - gamma (1 - d)
V(s'))^2]``, and ``Q' <- (1 - alpha) Q' + alpha Q`` (EMA target).
"""
from typing import Callable

import flax
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from dmc_jax.finite import all_finite, keep_if_finite


def expectile_loss(diff, expectile: float):
  """``|tau - 1(diff < 0)| * diff^2`` elementwise."""
  weight = jnp.where(diff < 0, 1.0 - expectile, expectile)
  return weight * jnp.square(diff)


@flax.struct.dataclass
class IQLState:
  q: train_state.TrainState
  v: train_state.TrainState
  target_q_params: flax.core.FrozenDict
  step: jax.Array


def init_iql(key, q_module, v_module, obs_dim: int, act_dim: int,
             tx_q: optax.GradientTransformation, tx_v: optax.GradientTransformation) -> IQLState:
  k_q, k_v = jax.random.split(key)
  obs, act = jnp.zeros((1, obs_dim)), jnp.zeros((1, act_dim))
  # Jitted: one compiled initialiser each instead of hundreds of eager ops (BUILD_NOTES #15).
  q_params = jax.jit(q_module.init)(k_q, obs, act)["params"]
  v_params = jax.jit(v_module.init)(k_v, obs)["params"]
  zero = lambda: jnp.zeros((), jnp.int32)  # separate buffers: the state may be donated
  return IQLState(
      q=train_state.TrainState.create(apply_fn=None, params=q_params, tx=tx_q).replace(
          step=zero()),
      v=train_state.TrainState.create(apply_fn=None, params=v_params, tx=tx_v).replace(
          step=zero()),
      target_q_params=jax.tree.map(jnp.copy, q_params), step=jnp.zeros((), jnp.int32))


def make_iql_update(q_fn: Callable, v_fn: Callable, *, discount: float = 0.99,
                    expectile: float = 0.7, target_update_rate: float = 0.005) -> Callable:
  """``update(state, batch) -> (state, metrics)``; ``batch`` has ``obs, actions, rewards,
  next_obs, dones`` (``[B, ...]``). Non-finite updates are skipped (``metrics["nonfinite"]``).
  ``q_fn(params, obs, act) -> [2, B]``,
  ``v_fn(params, obs) -> [B]``."""

  def value_loss(v_params, target_q, obs):
    v = v_fn(v_params, obs)
    loss = jnp.mean(expectile_loss(target_q - v, expectile))
    return loss, {"v_loss": loss, "v_mean": jnp.mean(v)}

  def q_loss(q_params, target, obs, act):
    q = q_fn(q_params, obs, act)
    loss = jnp.mean(jnp.sum(jnp.square(q - target[None]), 0))
    return loss, {"q_loss": loss, "q_mean": jnp.mean(q)}

  def update(state: IQLState, batch):
    target_q = jnp.min(q_fn(state.target_q_params, batch.obs, batch.actions), 0)
    (_, v_metrics), v_grads = jax.value_and_grad(value_loss, has_aux=True)(
        state.v.params, target_q, batch.obs)
    v_state = state.v.apply_gradients(grads=v_grads)
    next_v = v_fn(v_state.params, batch.next_obs)
    target = batch.rewards + discount * (1.0 - batch.dones) * next_v
    (_, q_metrics), q_grads = jax.value_and_grad(q_loss, has_aux=True)(
        state.q.params, jax.lax.stop_gradient(target), batch.obs, batch.actions)
    q_state = state.q.apply_gradients(grads=q_grads)
    target_params = optax.incremental_update(q_state.params, state.target_q_params,
                                             target_update_rate)
    new = state.replace(q=q_state, v=v_state, target_q_params=target_params,
                        step=state.step + 1)
    # A non-finite update is skipped inside the compiled function (state unchanged).
    ok = all_finite(v_grads, q_grads, q_state.params, v_state.params)
    new = keep_if_finite(ok, new, state)
    return new, {**v_metrics, **q_metrics, "nonfinite": 1.0 - ok.astype(jnp.float32)}

  return update
